"""Value rules of the config: every enum key and every ranged key refuses a bad value at load time
with one line naming the key, the value and what is allowed; rules across keys; the tools."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from fad.config import get_cfg_defaults, load_config
from fad.config.rules import Matches, OneOf, Range, collect_rules
from fad.errors import ConfigError

CONFIGS = Path(REPO) / "configs"
FCOS_TINY = str(CONFIGS / "fcos" / "fcos_tiny_synthetic.yaml")
SEARCH_TINY = str(CONFIGS / "fad" / "search" / "fad-fcos_tiny_synthetic.yaml")
RULES = collect_rules(get_cfg_defaults())

# every key whose value is a name from a fixed set (written out so a lost rule fails here)
ENUM_KEYS = {
    "MODEL.META_ARCHITECTURE", "MODEL.DEVICE", "MODEL.OPS.MSDA_BACKEND",
    "MODEL.OPS.DEPTHWISE_BACKEND", "MODEL.OPS.SPARSE_BACKEND", "MODEL.OPS.GN_RELU_BACKEND",
    "MODEL.OPS.MIX_BACKEND", "MODEL.OPS.CONV_WGRAD_BACKEND",
    "MODEL.BACKBONE.NAME",
    "MODEL.BACKBONE.DEPTH", "MODEL.BACKBONE.NORM", "MODEL.SPARSE.SAMPLING",
    "MODEL.SPARSE.EXECUTION", "MODEL.FAD.COST", "MODEL.FAD.COST_PENALTY", "MODEL.ASAG.NUM_QUERIES",
    "MODEL.ASAG.DECODER", "MODEL.ASAG.USED_HEAD", "MODEL.ASAG.USED_INFERENCE_LEVEL",
    "SOLVER.OPTIMIZER", "SOLVER.AMP_CPU_SCOPE", "SEARCH.DIAGRAM_FORMAT",
}


def _error(opts: list, config_file: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(config_file, [str(x) for x in opts])
    message = str(info.value)
    assert "\n" not in message
    return message


def test_every_enum_key_has_a_rule():
    enums = {k for k, r in RULES.items() if isinstance(r, (OneOf, Matches))}
    assert enums == ENUM_KEYS


@pytest.mark.parametrize("key", sorted(k for k, r in RULES.items() if isinstance(r, OneOf)))
def test_every_enum_key_refuses_a_wrong_value(key):
    choices = RULES[key].choices
    wrong = max(choices) + 1 if isinstance(choices[0], int) else choices[0] + "x"
    message = _error([key, wrong])
    listed = ", ".join(str(c) for c in choices)
    assert message.startswith(f"{key}: {wrong!r} is not one of {listed}"), message
    assert message.endswith("; fix it in the KEY VALUE overrides")
    if isinstance(wrong, str):
        assert f"(did you mean {choices[0]}?)" in message


@pytest.mark.parametrize("key, wrong, allowed", [
    ("MODEL.DEVICE", "gpu:0", "auto, cpu, cuda, cuda:N"),
    ("MODEL.DEVICE", "cuda:x", "auto, cpu, cuda, cuda:N"),
    ("MODEL.ASAG.USED_HEAD", "aux", "main, aux_K"),
])
def test_pattern_keys_refuse_other_forms(key, wrong, allowed):
    assert _error([key, wrong]).startswith(f"{key}: {wrong!r} is not one of {allowed}")


def test_pattern_keys_take_their_forms():
    cfg = load_config(None, ["MODEL.DEVICE", "cuda:1", "MODEL.ASAG.USED_HEAD", "aux_0"])
    assert (cfg.MODEL.DEVICE, cfg.MODEL.ASAG.USED_HEAD) == ("cuda:1", "aux_0")


def _out_of_range(default, rule: Range) -> list:
    """Values just outside each bound of `rule`, of the default's type (each entry of a tuple)."""
    sample = default[0] if isinstance(default, tuple) and default else default
    kind = float if isinstance(sample, float) or isinstance(default, tuple) and not default \
        else int
    bad = []
    if rule.low is not None:
        bad.append(kind(rule.low) if rule.low_open else kind(rule.low) - 1)
    if rule.high is not None:
        bad.append(kind(rule.high) if rule.high_open else kind(rule.high) + 1)
    if isinstance(default, tuple):
        size = len(default) if default else max(rule.lengths)
        return [tuple([x] * size) for x in bad]
    return bad


RANGED = sorted(k for k, r in RULES.items() if isinstance(r, Range))


def test_the_ranged_keys_cover_the_numeric_keys():
    """Every int/float key has a range except the few where any number is meaningful."""
    unbounded = {"SEED", "MODEL.SPARSE.MASK_INIT_BIAS"}
    defaults = get_cfg_defaults()
    numeric = set()
    for key in _leaf_keys(defaults):
        value = _lookup(defaults, key)
        entries = value if isinstance(value, tuple) and value else (value,)
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in entries):
            numeric.add(key)
    assert numeric - set(RANGED) - {k for k in RULES if isinstance(RULES[k], OneOf)} == unbounded
    assert len(RANGED) > 100


@pytest.mark.parametrize("key", RANGED)
def test_every_ranged_key_refuses_a_value_out_of_range(key):
    rule, default = RULES[key], _lookup(get_cfg_defaults(), key)
    values = _out_of_range(default, rule)
    if rule.lengths is not None:
        wrong_size = next(n for n in range(1, 9) if n not in rule.lengths)
        fill = default[0] if default else 1.0
        message = _error([key, tuple([fill] * wrong_size)])
        assert message.startswith(f"{key}: ") and "entr" in message, message
        assert f"must have {' or '.join(str(n) for n in rule.lengths)}" in message
    assert values or rule.lengths is not None, f"{key}: a Range rule that allows everything"
    for value in values:
        message = _error([key, value])
        every = "every entry " if isinstance(value, tuple) else ""
        assert message.startswith(f"{key}: {value} is out of range; {every}must be "
                                  f"{rule.bounds()}"), message


def test_messages_of_the_issues():
    assert _error(["MODEL.BACKBONE.NAME", "resnt"]).startswith(
        "MODEL.BACKBONE.NAME: 'resnt' is not one of resnet, sparse_resnet (did you mean resnet?)")
    assert _error(["MODEL.BACKBONE.NORM", "GN"]).startswith(
        "MODEL.BACKBONE.NORM: 'GN' is not one of FrozenBN, BN;")
    assert _error(["MODEL.SPARSE.EXECUTION", "sparce"]).startswith(
        "MODEL.SPARSE.EXECUTION: 'sparce' is not one of dense_masked, sparse "
        "(did you mean sparse?)")
    assert _error(["SOLVER.BASE_LR", -0.01]).startswith(
        "SOLVER.BASE_LR: -0.01 is out of range; must be > 0;")
    assert _error(["SOLVER.IMS_PER_BATCH", 0]).startswith(
        "SOLVER.IMS_PER_BATCH: 0 is out of range; must be > 0;")
    assert _error(["SEARCH.VAL_FRACTION", 1.5]).startswith(
        "SEARCH.VAL_FRACTION: 1.5 is out of range; must be in (0, 1);")


def test_values_take_the_type_of_their_default(tmp_path):
    cfg = load_config(None, ["SOLVER.BASE_LR", "1", "INPUT.MIN_SIZE_TRAIN", "640",
                             "DATASETS.TRAIN", "voc_2007_train", "OUTPUT_DIR", "2024",
                             "INPUT.PIXEL_MEAN", "(0, 0, 0)", "SOLVER.AMP", "false"])
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640,) and cfg.DATASETS.TRAIN == ("voc_2007_train",)
    assert cfg.OUTPUT_DIR == "2024" and cfg.INPUT.PIXEL_MEAN == (0.0, 0.0, 0.0)
    assert cfg.SOLVER.AMP is False
    (tmp_path / "a.yaml").write_text("SOLVER:\n  BASE_LR: 1\n  STEPS: [10, 20]\n")
    cfg = load_config(str(tmp_path / "a.yaml"))
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.STEPS) == (1.0, (10, 20))


@pytest.mark.parametrize("opts, expected", [
    (["MODEL.BACKBONE.DEPTH", "fifty"], "MODEL.BACKBONE.DEPTH: 'fifty' is not an integer"),
    (["MODEL.SPARSE.MASKED", "1"], "MODEL.SPARSE.MASKED: 1 is not True or False"),
    (["SOLVER.BASE_LR", "fast"], "SOLVER.BASE_LR: 'fast' is not a number"),
    (["INPUT.MIN_SIZE_TRAIN", "(800, 'a')"],
     "INPUT.MIN_SIZE_TRAIN: (800, 'a') is not a tuple of integers"),
    (["MODEL.BACKBONE", "3"], "MODEL.BACKBONE is a group of keys, not a key"),
])
def test_values_of_another_type_name_the_key(opts, expected):
    assert _error(opts) == f"bad override: {expected}; fix that KEY VALUE pair"


def test_a_value_of_another_type_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("MODEL:\n  BACKBONE:\n    DEPTH: fifty\n")
    assert _error([], str(path)) == (f"{path}: MODEL.BACKBONE.DEPTH: 'fifty' is not an integer; "
                                     "fix the value in this file")


def test_the_message_says_where_the_value_was_set(tmp_path):
    (tmp_path / "base.yaml").write_text("MODEL:\n  BACKBONE:\n    NORM: GN\n")
    (tmp_path / "leaf.yaml").write_text("_BASE_: base.yaml\nSOLVER:\n  BASE_LR: 0.1\n")
    leaf, base = str(tmp_path / "leaf.yaml"), str(tmp_path / "base.yaml")
    assert _error([], leaf).endswith(f"; fix it in {base}")
    assert load_config(leaf, ["MODEL.BACKBONE.NORM", "BN"]).MODEL.BACKBONE.NORM == "BN"
    message = _error(["SOLVER.BASE_LR", 0.0, "MODEL.BACKBONE.NORM", "BN"], leaf)
    assert message == ("SOLVER.BASE_LR: 0.0 is out of range; must be > 0; fix it in the KEY VALUE "
                       "overrides")


@pytest.mark.parametrize("opts, expected", [
    (["MODEL.META_ARCHITECTURE", "DeformableDETR", "MODEL.DETR.RHO", 0.3],
     "MODEL.DETR.RHO > 0 (Sparse DETR) needs MODEL.DETR.TWO_STAGE True"),
    (["MODEL.META_ARCHITECTURE", "SparseDETR", "MODEL.DETR.TWO_STAGE", True],
     "MODEL.META_ARCHITECTURE SparseDETR needs MODEL.DETR.RHO > 0"),
    (["MODEL.META_ARCHITECTURE", "DeformableDETR", "MODEL.DETR.NHEADS", 3],
     "MODEL.DETR.D_MODEL=256 must be divisible by MODEL.DETR.NHEADS=3"),
    (["MODEL.META_ARCHITECTURE", "DeformableDETR", "MODEL.DETR.GN_GROUPS", 24],
     "MODEL.DETR.D_MODEL=256 must be divisible by MODEL.DETR.GN_GROUPS=24"),
    (["MODEL.META_ARCHITECTURE", "DeformableDETR", "MODEL.DETR.SET_COST_CLASS", 0.0,
      "MODEL.DETR.SET_COST_BBOX", 0.0, "MODEL.DETR.SET_COST_GIOU", 0.0],
     "MODEL.DETR.SET_COST_CLASS, SET_COST_BBOX and SET_COST_GIOU are all 0"),
    (["MODEL.META_ARCHITECTURE", "ASAG", "MODEL.ASAG.USED_HEAD", "aux_3"],
     "MODEL.ASAG.USED_HEAD 'aux_3' does not fit MODEL.ASAG.NUM_DECODER_HEADS 4; choose one of "
     "main, aux_0, aux_1, aux_2"),
    (["MODEL.META_ARCHITECTURE", "ASAG", "MODEL.ASAG.NHEADS", 3],
     "MODEL.ASAG.HIDDEN_DIM=256 must be divisible by MODEL.ASAG.NHEADS=3"),
    (["MODEL.META_ARCHITECTURE", "ASAG", "MODEL.ASAG.SET_COST_CLASS", 0.0,
      "MODEL.ASAG.SET_COST_BBOX", 0.0, "MODEL.ASAG.SET_COST_GIOU", 0.0],
     "MODEL.ASAG.SET_COST_CLASS, SET_COST_BBOX and SET_COST_GIOU are all 0"),
    (["MODEL.FAD.COST", "flops"], "MODEL.FAD.COST flops needs MODEL.FAD.COST_TARGET > 0"),
    (["MODEL.FAD.COST", "latency", "MODEL.FAD.COST_TARGET", 5.0],
     "MODEL.FAD.COST latency needs MODEL.FAD.COST_LATENCY_TABLE"),
    (["MODEL.BACKBONE.NAME", "sparse_resnet", "MODEL.BACKBONE.GROUPS", 32],
     "MODEL.BACKBONE.NAME sparse_resnet supports plain ResNets only"),
    (["MODEL.BACKBONE.NAME", "sparse_resnet", "MODEL.BACKBONE.DEPTH", 18,
      "MODEL.SPARSE.STAGE_WITH_DCN", (False, True, False, False)],
     "MODEL.SPARSE.STAGE_WITH_DCN needs Bottleneck blocks (MODEL.BACKBONE.DEPTH >= 50)"),
    (["MODEL.SPARSE.INTERP_KERNEL", 6], "MODEL.SPARSE.INTERP_KERNEL: 6 must be odd"),
    (["INPUT.CROP.SIZE", (600, 384)], "INPUT.CROP.SIZE: (600, 384) must be (min, max)"),
    (["INPUT.MIN_SIZE_TRAIN", ()], "INPUT.MIN_SIZE_TRAIN: needs at least one size"),
])
def test_rules_across_keys(opts, expected):
    message = _error(opts)
    assert message.startswith(expected), message
    assert message.endswith("; fix the config file or the KEY VALUE overrides")


def test_rules_of_one_detector_family_do_not_refuse_another():
    cfg = load_config(None, ["MODEL.DETR.RHO", 0.3, "MODEL.ASAG.NHEADS", 3])
    assert cfg.MODEL.META_ARCHITECTURE == "FCOS"


def test_every_shipped_config_passes_validation():
    shipped = [p for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("Base-")]
    assert len(shipped) >= 30
    for path in shipped:
        load_config(str(path))


def test_choices_are_the_names_the_code_knows():
    from fad.modeling.asag.anchor_generator import INFERENCE_LEVELS, QUERY_SETTINGS
    from fad.modeling.asag.heads import DECODERS
    from fad.modeling.backbone import BACKBONES
    from fad.modeling.backbone.resnet import STAGE_BLOCKS
    from fad.modeling.backbone.sparse.masks import SAMPLING_MODES
    from fad.modeling.backbone.sparse_resnet import EXECUTION_MODES
    from fad.modeling.detector import DETECTORS
    from fad.nas.draw import FORMATS
    from fad.search.cost import COSTS, PENALTIES

    def choices(key):
        return set(RULES[key].choices)

    assert choices("MODEL.META_ARCHITECTURE") == set(DETECTORS.names())
    assert choices("MODEL.BACKBONE.NAME") == set(BACKBONES.names())
    assert choices("MODEL.BACKBONE.DEPTH") == set(STAGE_BLOCKS)
    assert choices("MODEL.SPARSE.SAMPLING") == set(SAMPLING_MODES)
    assert choices("MODEL.SPARSE.EXECUTION") == set(EXECUTION_MODES)
    assert choices("MODEL.ASAG.DECODER") == set(DECODERS)
    assert choices("MODEL.ASAG.USED_INFERENCE_LEVEL") == set(INFERENCE_LEVELS)
    assert choices("MODEL.ASAG.NUM_QUERIES") == set(QUERY_SETTINGS)
    assert choices("MODEL.FAD.COST") == set(COSTS)
    assert choices("MODEL.FAD.COST_PENALTY") == set(PENALTIES)
    assert choices("SEARCH.DIAGRAM_FORMAT") == set(FORMATS)


def test_backend_choices_are_the_backends_of_the_ops():
    from fad.ops.backends import BACKENDS

    for op, names in BACKENDS.items():
        assert RULES[f"MODEL.OPS.{op.upper()}_BACKEND"].choices == tuple(names)


def _tool(tool: str, config: str, out: Path, *opts: str) -> tuple[list[str], str]:
    """Run tools/<tool>, which must exit 2; its stderr lines and its stdout."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", tool), "--config-file",
                           config, "OUTPUT_DIR", str(out), *opts],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2, proc.stderr
    return proc.stderr.strip().splitlines(), proc.stdout


@pytest.mark.parametrize("opts, start", [
    (("SOLVER.IMS_PER_BATCH", "0"), "error: SOLVER.IMS_PER_BATCH: 0 is out of range; must be > 0"),
    (("SOLVER.BASE_LR", "-0.01"), "error: SOLVER.BASE_LR: -0.01 is out of range; must be > 0"),
    (("MODEL.BACKBONE.NAME", "resnt"), "error: MODEL.BACKBONE.NAME: 'resnt' is not one of"),
])
def test_train_tool_refuses_bad_values_before_any_work(tmp_path, opts, start):
    lines, stdout = _tool("train_net.py", FCOS_TINY, tmp_path / "out", *opts)
    assert len(lines) == 1 and lines[0].startswith(start), lines
    assert stdout == "" and not (tmp_path / "out").exists()


def test_search_tool_refuses_a_bad_fraction(tmp_path):
    lines, stdout = _tool("search_net.py", SEARCH_TINY, tmp_path / "out",
                          "SEARCH.VAL_FRACTION", "1.5")
    assert len(lines) == 1 and lines[0].startswith(
        "error: SEARCH.VAL_FRACTION: 1.5 is out of range; must be in (0, 1)"), lines
    assert stdout == ""


def test_search_tool_refuses_other_detectors(tmp_path):
    lines, _ = _tool("search_net.py", SEARCH_TINY, tmp_path / "out",
                     "MODEL.META_ARCHITECTURE", "DeformableDETR")
    assert lines == ["error: MODEL.META_ARCHITECTURE DeformableDETR: the search is for FCOS heads; "
                     "set MODEL.META_ARCHITECTURE FCOS (train other detectors with fad-train)"]
    assert not (tmp_path / "out" / "genotype.log").exists()


def _leaf_keys(node, prefix: str = "") -> list[str]:
    keys = []
    for name, value in node.items():
        keys += _leaf_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [
            prefix + name]
    return keys


def _lookup(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_batch_split_over_ranks_names_the_key():
    from fad.data.build import _per_rank

    assert _per_rank(8, "SOLVER.IMS_PER_BATCH", 2) == 4
    with pytest.raises(ConfigError, match=r"^SOLVER.IMS_PER_BATCH: 0 must be positive; set "):
        _per_rank(0, "SOLVER.IMS_PER_BATCH", 1)
    with pytest.raises(ConfigError, match=r"^TEST.IMS_PER_BATCH: 3 images do not split over the 2 "
                                          r"ranks; set TEST.IMS_PER_BATCH to a multiple of 2$"):
        _per_rank(3, "TEST.IMS_PER_BATCH", 2)
