"""Check a loaded config: every key's rule (written beside its default) and the rules across keys.

`load_config` runs `validate_config` after the yaml chain and the overrides; the first problem
is a one-line ConfigError naming the key, the value, what is allowed and where the value was set:
`MODEL.BACKBONE.NAME: 'resnt' is not one of resnet, sparse_resnet (did you mean resnet?); fix
it in the KEY VALUE overrides`. Checks that need the data or the world size stay where those
are known.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from yacs.config import CfgNode

from fad.errors import ConfigError

from .rules import collect_rules

DETR_ARCHS = ("DeformableDETR", "SparseDETR")


def validate_config(cfg: CfgNode, sources: Mapping[str, str] | None = None) -> None:
    """A ConfigError for the first key of `cfg` that breaks its rule or a rule across keys.

    `cfg` is a tree from `get_cfg_defaults` (its nodes carry the rules); `sources` maps a key to
    where it was set ("configs/x.yaml", "the KEY VALUE overrides") for the message's fix.
    """
    sources = sources or {}
    for key, rule in collect_rules(cfg).items():
        problem = rule.problem(_lookup(cfg, key))
        if problem is not None:
            where = sources.get(key)
            fix = f"fix it in {where}" if where else "set it in the config file or as KEY VALUE"
            raise ConfigError(f"{key}: {problem}; {fix}")
    for message in cross_key_problems(cfg):
        raise ConfigError(f"{message}; fix the config file or the KEY VALUE overrides")


def typed_value(default: Any, value: Any) -> tuple[Any, str | None]:
    """`value` (decoded from yaml or a KEY VALUE pair) in the type of the key's `default`, and
    what is wrong with it (None when it fits).

    An integer for a number key becomes a float, a number for a text key its text, "true" for a
    True/False key True, and a single value for a tuple key a 1-tuple; entries of a tuple must
    have the type of the default's.
    """
    if isinstance(default, (tuple, list)):
        value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if default:
            value = tuple(_entry(default[0], x) for x in value)
            if any(not _fits(default[0], x) for x in value):
                return value, f"{value} is not {_kind(default)}"
        return value, None
    value = _entry(default, value)
    return value, None if _fits(default, value) else f"{value!r} is not {_kind(default)}"


def _entry(default: Any, value: Any) -> Any:
    """An int where a float is expected as that float, a number where text is expected as text,
    "true" / "false" (any case) where a bool is expected as that bool."""
    if isinstance(default, bool) and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(default, float) and type(value) is int:
        return float(value)
    if isinstance(default, str) and type(value) in (int, float):
        return str(value)
    return value


def _fits(default: Any, value: Any) -> bool:
    return type(value) is type(default)


_KINDS = {bool: ("True or False", "True/False values"), int: ("an integer", "integers"),
          float: ("a number", "numbers"), str: ("a text", "texts")}


def _kind(default: Any) -> str:
    """What the key takes, in words: "an integer", "a tuple of numbers"."""
    if isinstance(default, (tuple, list)):
        return f"a tuple of {_KINDS[type(default[0])][1]}" if default else "a tuple"
    return _KINDS[type(default)][0]


def cross_key_problems(cfg: CfgNode) -> Iterator[str]:
    """Messages of the rules that tie several keys (or a key's entries) together."""
    yield from _input_problems(cfg)
    yield from _backbone_problems(cfg)
    yield from _fad_problems(cfg)
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch in DETR_ARCHS:
        yield from _detr_problems(cfg)
    if arch == "ASAG":
        yield from _asag_problems(cfg)


def _input_problems(cfg: CfgNode) -> Iterator[str]:
    if not cfg.INPUT.MIN_SIZE_TRAIN:
        yield "INPUT.MIN_SIZE_TRAIN: needs at least one size"
    low, high = cfg.INPUT.CROP.SIZE
    if low > high:
        yield f"INPUT.CROP.SIZE: {(low, high)} must be (min, max) with min <= max"
    if cfg.DATALOADER.SIZE_GROUPING and cfg.INPUT.CROP.ENABLED:
        yield ("DATALOADER.SIZE_GROUPING groups images by their training size, which "
               "INPUT.CROP.ENABLED makes random; turn one of them off")


def _backbone_problems(cfg: CfgNode) -> Iterator[str]:
    bb, sp = cfg.MODEL.BACKBONE, cfg.MODEL.SPARSE
    if sp.INTERP_KERNEL % 2 == 0:
        yield f"MODEL.SPARSE.INTERP_KERNEL: {sp.INTERP_KERNEL} must be odd"
    if bb.NAME != "sparse_resnet":
        return
    if bb.GROUPS != 1 or bb.WIDTH_PER_GROUP != 64:
        yield ("MODEL.BACKBONE.NAME sparse_resnet supports plain ResNets only: set "
               "MODEL.BACKBONE.GROUPS 1 and MODEL.BACKBONE.WIDTH_PER_GROUP 64")
    if any(sp.STAGE_WITH_DCN) and bb.DEPTH < 50:
        yield (f"MODEL.SPARSE.STAGE_WITH_DCN needs Bottleneck blocks (MODEL.BACKBONE.DEPTH >= 50), "
               f"got depth {bb.DEPTH}")


def _fad_problems(cfg: CfgNode) -> Iterator[str]:
    f = cfg.MODEL.FAD
    if f.COST != "none" and f.COST_TARGET <= 0:
        unit = "GFLOPs" if f.COST == "flops" else "ms"
        yield (f"MODEL.FAD.COST {f.COST} needs MODEL.FAD.COST_TARGET > 0 (head {unit} at the "
               f"cost input size), got {f.COST_TARGET}")
    if f.COST == "latency" and not f.COST_LATENCY_TABLE:
        yield ("MODEL.FAD.COST latency needs MODEL.FAD.COST_LATENCY_TABLE (the JSON of "
               "`fad-bench op_latency` on the target device)")


def _detr_problems(cfg: CfgNode) -> Iterator[str]:
    d = cfg.MODEL.DETR
    checks = [
        (d.RHO > 0 and not d.TWO_STAGE,
         "MODEL.DETR.RHO > 0 (Sparse DETR) needs MODEL.DETR.TWO_STAGE True"),
        (cfg.MODEL.META_ARCHITECTURE == "SparseDETR" and d.RHO <= 0,
         "MODEL.META_ARCHITECTURE SparseDETR needs MODEL.DETR.RHO > 0"),
        (d.USE_ENC_AUX_LOSS and d.RHO <= 0, "MODEL.DETR.USE_ENC_AUX_LOSS needs MODEL.DETR.RHO > 0"),
        ((d.EFF_QUERY_INIT or d.EFF_SPECIFIC_HEAD) and not d.TWO_STAGE,
         "MODEL.DETR.EFF_QUERY_INIT / EFF_SPECIFIC_HEAD need MODEL.DETR.TWO_STAGE True"),
        (d.D_MODEL % d.NHEADS != 0,
         f"MODEL.DETR.D_MODEL={d.D_MODEL} must be divisible by MODEL.DETR.NHEADS={d.NHEADS}"),
        (d.D_MODEL % 4 != 0, f"MODEL.DETR.D_MODEL={d.D_MODEL} must be divisible by 4"),
        (d.D_MODEL % d.GN_GROUPS != 0,
         f"MODEL.DETR.D_MODEL={d.D_MODEL} must be divisible by "
         f"MODEL.DETR.GN_GROUPS={d.GN_GROUPS}"),
        (not (d.SET_COST_CLASS or d.SET_COST_BBOX or d.SET_COST_GIOU),
         "MODEL.DETR.SET_COST_CLASS, SET_COST_BBOX and SET_COST_GIOU are all 0; the matcher "
         "needs one > 0"),
    ]
    yield from (message for bad, message in checks if bad)


def _asag_problems(cfg: CfgNode) -> Iterator[str]:
    a = cfg.MODEL.ASAG
    heads = ["main"] + [f"aux_{k}" for k in range(a.NUM_DECODER_HEADS - 1)]
    checks = [
        (a.HIDDEN_DIM % a.NHEADS != 0,
         f"MODEL.ASAG.HIDDEN_DIM={a.HIDDEN_DIM} must be divisible by MODEL.ASAG.NHEADS={a.NHEADS}"),
        (a.HIDDEN_DIM % 8 != 0, f"MODEL.ASAG.HIDDEN_DIM={a.HIDDEN_DIM} must be divisible by 8"),
        (a.DECODER == "adamixer" and a.HIDDEN_DIM % a.GROUPS != 0,
         f"MODEL.ASAG.HIDDEN_DIM={a.HIDDEN_DIM} must be divisible by MODEL.ASAG.GROUPS={a.GROUPS}"),
        (a.USED_HEAD not in heads,
         f"MODEL.ASAG.USED_HEAD {a.USED_HEAD!r} does not fit MODEL.ASAG.NUM_DECODER_HEADS "
         f"{a.NUM_DECODER_HEADS}; choose one of {', '.join(heads)}"),
        (not (a.SET_COST_CLASS or a.SET_COST_BBOX or a.SET_COST_GIOU),
         "MODEL.ASAG.SET_COST_CLASS, SET_COST_BBOX and SET_COST_GIOU are all 0; the matcher "
         "needs one > 0"),
    ]
    yield from (message for bad, message in checks if bad)


def _lookup(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node
