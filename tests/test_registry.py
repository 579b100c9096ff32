"""The name registries (fad.utils.registry): one-line errors naming the known names, lazy imports,
and every registered name of the four registries resolves."""
import json
import subprocess
import sys

import pytest
from conftest import REPO

from fad.cli.bench import BENCHMARKS
from fad.config import get_cfg_defaults
from fad.convert import CONVERTERS, convert_checkpoint
from fad.errors import CheckpointError, ConfigError, FadError
from fad.modeling import build_detector
from fad.modeling.backbone import BACKBONES, build_backbone_body
from fad.modeling.detector import DETECTORS
from fad.utils.registry import Registry


class _Error(FadError):
    pass


def test_get_imports_a_module_or_one_of_its_attributes():
    reg = Registry("THING", _Error, {"join": "os.path:join", "path": "os.path"})
    import os.path

    assert reg.get("join") is os.path.join and reg.get("path") is os.path
    assert reg.names() == ("join", "path")


def test_unknown_name_is_one_line_with_the_known_names_and_the_closest():
    reg = Registry("MODEL.THING", _Error, {"alpha": "os:sep", "beta": "os:sep", "gamma": "os:sep"})
    with pytest.raises(_Error) as info:
        reg.get("betta")
    assert str(info.value) == ("unknown MODEL.THING 'betta' (did you mean 'beta'?); "
                               "choose one of alpha, beta, gamma")
    with pytest.raises(_Error, match=r"^unknown MODEL.THING 'zzz'; choose one of alpha, beta"):
        reg.get("zzz")


def test_names_import_nothing():
    """A registry of modules that do not exist still lists its names; only get() imports."""
    reg = Registry("THING", _Error, {"b": "no_such_module_b:x", "a": "no_such_module_a"})
    assert reg.names() == ("a", "b")
    with pytest.raises(ModuleNotFoundError):
        reg.get("a")


@pytest.mark.parametrize("registry", [DETECTORS, BACKBONES], ids=["detectors", "backbones"])
def test_every_model_builder_resolves(registry):
    assert registry.names() and all(callable(registry.get(name)) for name in registry.names())


def test_every_converter_and_benchmark_resolves():
    assert CONVERTERS.names() == ("asag", "deformable_detr", "sai", "sparse_detr")
    for name in CONVERTERS.names():
        module = CONVERTERS.get(name)
        assert callable(module.convert) and module.STATE_KEY in ("model", "state_dict")
    assert BENCHMARKS.names() == ("asag", "compile", "demo_step", "detr_flops", "export",
                                  "fcos_step", "limits", "msda", "op_latency", "sparse_resnet",
                                  "supernet", "triton_resources")
    for name in BENCHMARKS.names():
        module = BENCHMARKS.get(name)
        assert callable(module.add_arguments) and callable(module.run) and module.__doc__


def test_unknown_names_in_the_config_and_the_converter():
    cfg = get_cfg_defaults()
    cfg.MODEL.META_ARCHITECTURE = "FCSO"
    with pytest.raises(ConfigError, match=r"'FCSO' \(did you mean 'FCOS'\?\); choose one of ASAG"):
        build_detector(cfg, 3)
    cfg = get_cfg_defaults()
    cfg.MODEL.BACKBONE.NAME = "sparse-resnet"
    with pytest.raises(ConfigError, match="did you mean 'sparse_resnet'"):
        build_backbone_body(cfg)
    with pytest.raises(CheckpointError, match="unknown KIND 'detr'; choose one of asag, "):
        convert_checkpoint("detr", get_cfg_defaults(), "missing.pth")


LAZY_CHECK = """
import json, sys
def loaded(prefix, names):
    return sorted(n for n in names if f"{prefix}.{n}" in sys.modules)
out = {}
import fad.modeling, fad.convert
out["detectors"] = loaded("fad.modeling", ["fcos", "faster_rcnn", "detr", "asag"])
out["converters"] = loaded("fad.convert", ["deformable_detr", "sparse_detr", "sai", "asag"])
from fad.cli.bench import BENCHMARKS, main
try:
    main(["fcos_step", "--help"])
except SystemExit:
    pass
out["benchmarks"] = loaded("fad.cli.bench", BENCHMARKS.names())
print(json.dumps(out))
"""


def test_imports_stay_lazy():
    """Importing the model and converter packages imports no detector or converter; running one
    benchmark imports that benchmark's module only (a fresh process)."""
    proc = subprocess.run([sys.executable, "-c", LAZY_CHECK], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"detectors": [], "converters": [], "benchmarks": ["fcos_step"]}
