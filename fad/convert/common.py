"""Shared steps of every checkpoint converter: read, drop aliases, rename, match, check settings.

A converter turns the state dict of an original release into ours in four steps, each of which
either succeeds or raises a one-line `CheckpointError` naming the tensors or config keys:

1. `load_original` reads the file (tensors, containers and argparse namespaces only, unless the
   caller trusts the file) and returns the state dict plus the training arguments stored with it.
2. `drop_aliases` removes names under which the original stores a shared tensor a second time,
   after checking that the values are the same.
3. `rename` maps every remaining name by an ordered list of regular-expression rules; a name that
   no rule matches is a leftover.
4. `match_state` compares the result with the state dict of the model that the config builds:
   leftovers on either side and shape mismatches are refused; BatchNorm's `num_batches_tracked`
   is dropped or filled (zero) where only one side has it.

`check_settings` compares what the checkpoint says about the architecture (inferred from tensor
shapes or stored arguments) with the config, before any tensor is matched, so that a wrong config
is reported as config keys rather than as a list of missing tensors.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn
from yacs.config import CfgNode

from fad.errors import CheckpointError
from fad.modeling import build_detector

# COCO's 80 category ids; class heads trained on category ids (91 logits) keep these rows, in
# this order, which is the contiguous label order of fad.data (category-id order)
COCO_MISSING_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in COCO_MISSING_IDS)
COCO_ID_LOGITS = 91  # max category id + 1
NUM_SHOWN = 4  # tensors named in an error message before "... (N in all)"


@dataclass
class Conversion:
    """Result of a converter.

    Attributes:
        state: our state dict (name -> tensor), complete for the target model.
        num_classes: foreground classes of the target model.
        notes: one line each on what the converter decided or could not map (the tool prints
            them).
    """

    state: dict[str, Tensor]
    num_classes: int
    notes: list[str] = field(default_factory=list)


@dataclass
class Setting:
    """One architectural setting: the checkpoint's value (None: not inferable) and the config's."""

    key: str
    checkpoint: Any
    config: Any


def name_list(names: Iterable[str]) -> str:
    """'a, b, c, d ... (12 in all)' for an error message."""
    names = sorted(names)
    shown = ", ".join(names[:NUM_SHOWN])
    return shown if len(names) <= NUM_SHOWN else f"{shown} ... ({len(names)} in all)"


def load_original(path: str, key: str, trust: bool = False) -> tuple[dict[str, Tensor], dict]:
    """Read an original release: (state dict under `key`, everything else in the file).

    Without `trust` the file is unpickled with torch's weights-only loader, which also accepts
    the argparse namespace that DETR-style checkpoints store as `args`; anything else (e.g.
    numpy objects in an old file) needs `trust=True`, i.e. executing the file's pickle.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist; give the downloaded release file")
    try:
        if trust:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{path}: holds objects beyond tensors ({detail}); pass "
                              "--trust-file if you trust where it comes from") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise CheckpointError(f"{path}: not a readable torch file ({exc}); download it "
                              "again") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(key), dict):
        found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: expected the weights under key {key!r}, found {found}; "
                              "is this a release of the KIND you named?")
    state = {k: v for k, v in obj[key].items()}
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {key!r} holds non-tensors: {name_list(bad)}")
    return state, {k: v for k, v in obj.items() if k != key}


def stored_args(extra: dict) -> dict[str, Any]:
    """The training arguments stored beside the weights (`args` namespace or dict), or {}."""
    args = extra.get("args")
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, dict) else {}


def drop_aliases(state: dict[str, Tensor], canonical: Callable[[str], str | None]
                 ) -> tuple[dict[str, Tensor], int]:
    """Remove every name for which `canonical(name)` gives another name holding the same tensor.

    Returns the reduced state and the number of aliases dropped. An alias whose canonical name
    is absent, or whose values differ from it, is refused: the two names were meant to be one
    shared tensor.
    """
    kept, dropped, absent, differ = {}, 0, [], []
    for name, value in state.items():
        target = canonical(name)
        if target is None:
            kept[name] = value
        elif target not in state:
            absent.append(f"{name} (-> {target})")
        elif state[target].shape != value.shape or not torch.equal(state[target], value):
            differ.append(f"{name} vs {target}")
        else:
            dropped += 1
    if absent:
        raise CheckpointError(f"shared tensors without their owner: {name_list(absent)}; the "
                              "file is incomplete or of another KIND")
    if differ:
        raise CheckpointError(f"tensors that the original shares differ: {name_list(differ)}; "
                              "the file was edited or is of another KIND")
    return kept, dropped


Rule = tuple[str, str]  # (regular expression matched at the start of a name, replacement)


def rename(state: dict[str, Tensor], rules: Sequence[Rule]) -> tuple[dict[str, Tensor],
                                                                      list[str]]:
    """Apply the first matching rule to every name; returns (renamed state, unmatched names).

    Rules are `re.match` patterns with `re.sub`-style replacements (groups allowed). Two names
    mapped onto one is refused.
    """
    compiled = [(re.compile(pattern), repl) for pattern, repl in rules]
    out: dict[str, Tensor] = {}
    unmatched, collisions = [], []
    for name, value in state.items():
        for pattern, repl in compiled:
            match = pattern.match(name)
            if match:
                new = match.expand(repl) + name[match.end():]
                if new in out:
                    collisions.append(f"{name} -> {new}")
                out[new] = value
                break
        else:
            unmatched.append(name)
    if collisions:
        raise CheckpointError(f"several tensors map to one name: {name_list(collisions)}")
    return out, unmatched


def match_state(state: dict[str, Tensor], target: dict[str, Tensor], source: str,
                leftovers: Sequence[str] = ()) -> dict[str, Tensor]:
    """`state` checked against the target model's `target`, in the target's order and dtypes.

    `leftovers` are source names no rule knew. BatchNorm `num_batches_tracked` counters only on
    one side are dropped (frozen BN on ours) or set to zero (trainable BN on ours, frozen BN in
    the source). Anything else missing, left over or of the wrong shape is one CheckpointError.
    """
    state = {k: v for k, v in state.items()
             if k in target or not k.endswith("num_batches_tracked")}
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    extra = list(leftovers) + [k for k in state if k not in target]
    problems = []
    if extra:
        problems.append(f"{len(extra)} tensors of {source} have no place in the model: "
                        f"{name_list(extra)}")
    if missing:
        problems.append(f"{len(missing)} tensors of the model are not in {source}: "
                        f"{name_list(missing)}")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
             if k in state and state[k].shape != v.shape]
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches (checkpoint vs model): {name_list(wrong)}")
    if problems:
        raise CheckpointError("; ".join(problems) + "; check that the config matches the "
                              "checkpoint (depth, widths, levels, classes)")
    return {k: (state[k] if k in state else torch.zeros_like(v)).to(v.dtype)
            for k, v in target.items()}


def check_settings(settings: Sequence[Setting], source: str) -> None:
    """One CheckpointError listing every setting where checkpoint and config disagree."""
    bad = [f"{s.key} is {s.config} but the checkpoint has {s.checkpoint}" for s in settings
           if s.checkpoint is not None and s.checkpoint != s.config]
    if bad:
        raise CheckpointError(f"{source} does not fit the config: {'; '.join(bad)}; set them in "
                              "the config file or as KEY VALUE overrides")


def count_indexed(state: dict[str, Tensor], prefix: str) -> int:
    """Number of consecutive entries `prefix{i}.` (i = 0, 1, ...) among the names of `state`."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for m in map(pattern.match, state) if m}
    count = 0
    while count in found:
        count += 1
    return count


def select_rows(state: dict[str, Tensor], prefix: str, rows: Sequence[int]) -> None:
    """Keep only `rows` (in that order) of the Linear `prefix` (`.weight` [C, D], `.bias` [C])."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    for part in ("weight", "bias"):
        state[f"{prefix}.{part}"] = state[f"{prefix}.{part}"].index_select(0, index)


@dataclass(frozen=True)
class Options:
    """Choices of the user that the checkpoint cannot answer.

    Attributes:
        class_logits: "auto" (91 logits are COCO category ids, anything else is contiguous),
            "coco91" (insist on the category-id layout) or "as_is" (keep every logit).
        backbone_only: keep only the backbone body (SAI), for MODEL.BACKBONE.PRETRAINED.
    """

    class_logits: str = "auto"
    backbone_only: bool = False


def coco_id_layout(num_logits: int, options: Options) -> bool:
    """Whether a class head of `num_logits` outputs is indexed by COCO category id."""
    if options.class_logits == "coco91" and num_logits != COCO_ID_LOGITS:
        raise CheckpointError(f"--class-logits coco91: the class head has {num_logits} logits, "
                              f"not {COCO_ID_LOGITS}; use auto or as_is")
    return options.class_logits == "coco91" or (options.class_logits == "auto"
                                                and num_logits == COCO_ID_LOGITS)


def build_model(cfg: CfgNode, num_classes: int) -> nn.Module:
    """The detector of `cfg` for `num_classes` classes, with no pretrained backbone download
    (the converted weights replace every tensor)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.BACKBONE.PRETRAINED = ""
    cfg.freeze()
    return build_detector(cfg, num_classes)


def backbone_body(model: nn.Module) -> nn.Module:
    """The backbone body (the first submodule named `body`) of a detector."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "body":
            return module
    raise CheckpointError(f"{type(model).__name__} has no backbone body to load into")
