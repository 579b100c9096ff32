"""Why a checkpoint's weights do not fit the model of this run, decisive difference first.

What must match is derived, not listed: the MODEL.* keys (the other sections set the run: data,
solver, output) whose value in the checkpoint's `cfg` dump differs from this run's are each tried
alone on the model builder, on the meta device (no memory, no weights read); a key is an
architecture difference when that changes the names or shapes of the model's parameters and
buffers (or when its value alone does not build). The reasons come in this order: the
meta-architecture and backbone keys, the genotype (saying where this run's came from), the
other architecture keys, the number of classes.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
import yaml
from torch import nn
from yacs.config import CfgNode

from fad.errors import GenotypeError
from fad.nas.genotype import parse_genotype_text

logger = logging.getLogger("fad")

Builder = Callable[[CfgNode], nn.Module]  # the model of a config (the run's own builder)
LEADING = ("MODEL.META_ARCHITECTURE", "MODEL.BACKBONE.")  # reported first among the keys
UNBUILT = ("MODEL.WEIGHT", "MODEL.BACKBONE.PRETRAINED")  # files a probe build must not read
GENOTYPE_SOURCE = "--genotype-file / MODEL.FAD.GENOTYPE"  # where a run's genotype comes from
GENOTYPE_KEY = "MODEL.FAD.GENOTYPE"  # compared as towers by `genotype_difference`, not as text


def mismatch_reasons(state: dict, model: nn.Module, cfg: CfgNode | None = None,
                     classes: Sequence[str] | None = None, genotype: str | None = None,
                     build: Builder | None = None,
                     genotype_source: str = GENOTYPE_SOURCE) -> list[str]:
    """What differs between the run that wrote checkpoint `state` and this one's `model`,
    decisive first.

    Config keys are compared when `cfg` and the checkpoint's `cfg` dump exist, through `build`
    (the builder of `model`; by default the detector of MODEL.META_ARCHITECTURE for
    len(`classes`) classes, used only when it makes `model`); the genotype text when `genotype`
    is given (`genotype_source` says where it came from); the number of classes when `classes`
    is given.
    """
    stored = stored_cfg(state)
    if build is None and classes is not None:
        build = partial(_detector, num_classes=len(classes))
    keys = architecture_keys(stored, cfg, build, model) if (
        stored is not None and cfg is not None and build is not None) else []
    searched = " with searched towers (it stores a genotype)" if stored_genotype(state) else ""
    lines = [(key, f"{key} is {_short(theirs)}{searched if key == LEADING[0] else ''} in the "
                   f"checkpoint, {_short(ours)} here") for key, theirs, ours in keys]
    reasons = [line for key, line in lines if key.startswith(LEADING)]
    if genotype is not None:
        reasons += genotype_difference(stored_genotype(state), genotype, genotype_source)
    reasons += [line for key, line in lines if not key.startswith(LEADING)]
    stored_classes = state.get("classes")
    if classes is not None and stored_classes is not None and (
            len(stored_classes) != len(classes)):
        reasons.append(f"{len(stored_classes)} classes in the checkpoint, {len(classes)} here")
    return reasons


def architecture_keys(stored: CfgNode, cfg: CfgNode, build: Builder, model: nn.Module
                      ) -> list[tuple[str, Any, Any]]:
    """(key, value in `stored`, value in `cfg`) of the keys whose stored value changes the
    parameter names or shapes of the model `build` makes, each tried alone; a value that does
    not build alone counts. [] when `build(cfg)` is not `model` (another builder)."""
    base = _signature(build, cfg)
    if base != {k: tuple(v.shape) for k, v in model.state_dict().items()}:
        return []
    found = []
    for key, theirs, ours in differing_keys(stored, cfg):
        probe = cfg.clone()
        probe.defrost()
        _assign(probe, key, theirs)
        if _signature(build, probe) != base:
            found.append((key, theirs, ours))
    return found


def _detector(cfg: CfgNode, num_classes: int) -> nn.Module:
    """The detector of MODEL.META_ARCHITECTURE (the default builder of a probe)."""
    from fad.modeling import build_detector

    return build_detector(cfg, num_classes)


def differing_keys(stored: CfgNode, cfg: CfgNode) -> list[tuple[str, Any, Any]]:
    """(key, value in `stored`, value in `cfg`) of the MODEL.* keys in both whose values differ
    (lists and tuples compare equal), in `cfg`'s order; the weight files a build reads are left
    out, and the genotype (`genotype_difference` names the towers that differ)."""
    out = []
    for key, ours in _leaves(cfg.MODEL, "MODEL."):
        theirs = lookup(stored, key)
        if key not in (*UNBUILT, GENOTYPE_KEY) and theirs is not None and (
                _plain(theirs) != _plain(ours)):
            out.append((key, theirs, ours))
    return out


def _signature(build: Builder, cfg: CfgNode) -> dict[str, tuple[int, ...]] | None:
    """{name: shape} of the state dict of `build(cfg)` built on the meta device, or None when
    it does not build."""
    probe = cfg.clone()
    probe.defrost()
    for key in UNBUILT:
        if lookup(probe, key) is not None:
            _assign(probe, key, "")
    try:
        with torch.device("meta"):
            model = build(probe)
    except Exception:  # noqa: BLE001 - a value that does not build alone is a difference
        return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def genotype_difference(stored: str, current: str, source: str = GENOTYPE_SOURCE) -> list[str]:
    """Why genotype text `stored` (the checkpoint's) and `current` (from `source`, e.g.
    "--genotype-file g.log") build other towers, or []."""
    origin = f" of {source}" if source else ""
    if not stored.strip() and not current.strip():
        return []
    if not current.strip():
        return ["the checkpoint has searched towers (it stores a genotype), this model plain "
                "ones"]
    if not stored.strip():
        return [f"the checkpoint has plain towers, this model searched ones (the genotype"
                f"{origin})"]
    try:
        pairs = zip(("box", "cls"), parse_genotype_text(stored), parse_genotype_text(current))
        towers = [tower for tower, a, b in pairs if a != b]
    except GenotypeError:
        towers = [] if stored.split() == current.split() else ["box/cls"]
    if not towers:
        return []
    return [f"the {' and '.join(towers)} tower of the genotype{origin} differs from the "
            "checkpoint's"]


def weights_difference(expected: dict, given: dict) -> str:
    """Counts of the weights of `given` that are missing, unexpected or of another shape than
    in `expected` (a model's state dict), each with a first example."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [k for k in expected if k in given
              and getattr(expected[k], "shape", None) != getattr(given[k], "shape", None)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights missing from the checkpoint, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model, e.g. {unexpected[0]}")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} of another shape, e.g. {k} "
                     f"{list(given[k].shape)} in the checkpoint, {list(expected[k].shape)} here")
    return "; ".join(parts) or "the weights do not load"


def mismatch_line(source: str, reasons: list[str]) -> str:
    """The one-line message: the first reason and how many more (all of them go to the log
    file as debug lines)."""
    for reason in reasons:
        logger.debug("%s differs from this run: %s", source, reason)
    more = f"; and {len(reasons) - 1} more, listed in log.txt" if len(reasons) > 1 else ""
    return (f"{source}: the weights do not fit the model of this config ({reasons[0]}{more}); "
            "use the config (and genotype) it was trained with")


def stored_cfg(state: dict) -> CfgNode | None:
    """The config dump a checkpoint of ours stores (`cfg`), or None."""
    text = state.get("cfg")
    if not isinstance(text, str):
        return None
    try:
        return CfgNode.load_cfg(text)
    except (yaml.YAMLError, ValueError, TypeError):
        return None


def stored_genotype(state: dict) -> str:
    """The genotype text checkpoint `state` was trained with: MODEL.FAD.GENOTYPE of its `cfg`
    dump, else (checkpoints written before that key) its top-level `genotype`; "" for none."""
    stored = stored_cfg(state)
    text = lookup(stored, GENOTYPE_KEY) if stored is not None else None
    return str(text or state.get("genotype") or "")


def lookup(cfg: CfgNode, key: str) -> Any:
    """The value of dotted `key` in `cfg`, or None when absent."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _assign(cfg: CfgNode, key: str, value: Any) -> None:
    """Set dotted `key` of (unfrozen) `cfg` to `value`, a tuple where the default is one."""
    *path, last = key.split(".")
    node = cfg
    for part in path:
        node = node[part]
    node[last] = tuple(value) if isinstance(node[last], tuple) and isinstance(value, list) else (
        value)


def _leaves(cfg: CfgNode, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of `cfg`."""
    for name, value in cfg.items():
        if name.startswith("_"):
            continue
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _plain(value: Any) -> Any:
    """Lists and tuples compare equal (a yaml dump turns tuples into lists)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _short(value: Any, limit: int = 40) -> str:
    """`value` as text, cut to `limit` characters."""
    text = str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
