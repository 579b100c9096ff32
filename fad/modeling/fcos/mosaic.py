"""A head's FPN levels packed into one map, run through the towers once (SOLVER.MOSAIC_HEAD_LEVELS).

An FCOS head runs the same towers on P3-P7 one level after the other: on a CPU, P5-P7 (maps of
a few positions) cost per call, not per position, and P3 alone is too small to keep two
intra-op threads busy. Here the levels are laid side by side in one zero map (`plan_mosaic`:
P3 at the left, the smaller levels packed into the column beside it), `gap` zero positions
apart, and the towers run once over it:

    mosaic = plan_mosaic([(H_l, W_l) for each level], gap)    # gap >= every conv's reach
    with mosaic_scope(mosaic):
        maps = towers(pack(features, mosaic))                  # Tensor[N, K, H, W]
    per_level = unpack(maps, mosaic)                           # Tensor[N, K, H_l, W_l] views

That computes what the per-level loop computes (up to the order of float sums) because every
operation of the towers is either per position (1x1 convolutions, sums, ReLU), or a stride-1
convolution whose reach (its zero padding) is at most `gap`, reading zeros beyond its level as
the padding would give, or GroupNorm + ReLU, which inside `mosaic_scope` normalizes each level
on its own (`fad.ops.gn_relu.group_norm_relu_segments`, the runs of `Mosaic.runs`) and writes 0
between levels. A 1x1 convolution's bias and a 3x3 convolution's border outputs do leave values
between the levels, so every convolution of kernel > 1 multiplies its input by the mosaic's
mask first (a forward pre-hook; outside the scope the hook does nothing).
`enable_mosaic_levels` checks that a head has only such layers (else `ConfigError`), sets the
gap and adds the hooks; the heads then take this path in `forward` where `mosaic_applies`.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from fad.errors import ConfigError
from fad.ops.gn_relu import GroupNormReLU, segments_scope

Box = tuple[int, int, int, int]  # (y, x, height, width)
_local = threading.local()


@dataclass(frozen=True)
class Mosaic:
    """Where each level sits in the packed map: `boxes[l]` = (y, x, H_l, W_l); `owner`
    Tensor[height, width] int64, each position's level or -1 between levels; `runs` [R, 3]
    int64, the same row-major as (first position, count, level or -1)."""

    height: int
    width: int
    boxes: tuple[Box, ...]
    owner: Tensor
    runs: Tensor
    _masks: dict = field(default_factory=dict, compare=False, repr=False)

    def mask(self, like: Tensor) -> Tensor:
        """Tensor[1, 1, height, width] of `like`'s dtype and device: 1 on the levels, 0
        between them (made once per dtype and device)."""
        key = (like.dtype, like.device)
        if key not in self._masks:
            self._masks[key] = self.owner.ge(0).to(like.device, like.dtype)[None, None]
        return self._masks[key]


def _pack_offsets(sizes: Sequence[tuple[int, int]], limit: int, gap: int
                  ) -> tuple[list[tuple[int, int]], int, int]:
    """Offsets (y, x) of `sizes` placed from the top left, each level either below the first
    (when all the others fit under it within `limit` rows) or to its right, whichever bounding
    box is smaller; returns (offsets, height, width)."""
    h0, w0 = sizes[0]
    if len(sizes) == 1:
        return [(0, 0)], h0, w0
    options = []
    room = limit - h0 - gap
    if room > 0:
        offsets, h, w = _pack_offsets(sizes[1:], room, gap)
        if h <= room:
            options.append(([(0, 0)] + [(y + h0 + gap, x) for y, x in offsets],
                            h0 + gap + h, max(w0, w)))
    offsets, h, w = _pack_offsets(sizes[1:], max(limit, h0), gap)
    options.append(([(0, 0)] + [(y, x + w0 + gap) for y, x in offsets], max(h0, h),
                    w0 + gap + w))
    return min(options, key=lambda o: o[1] * o[2])


@functools.lru_cache(maxsize=64)
def plan_mosaic(sizes: tuple[tuple[int, int], ...], gap: int) -> Mosaic:
    """The packed layout of levels of sizes ((H_l, W_l), ...) (the first the largest), `gap`
    zero positions between any two levels (made once per sizes and gap)."""
    offsets, height, width = _pack_offsets(sizes, sizes[0][0], gap)
    boxes = tuple((y, x, h, w) for (y, x), (h, w) in zip(offsets, sizes))
    owner = torch.full((height, width), -1, dtype=torch.long)
    for level, (y, x, h, w) in enumerate(boxes):
        owner[y:y + h, x:x + w] = level
    flat = owner.flatten()
    starts = torch.cat([torch.zeros(1, dtype=torch.long),
                        torch.nonzero(flat[1:] != flat[:-1]).flatten() + 1])
    counts = torch.diff(starts, append=torch.tensor([flat.numel()]))
    return Mosaic(height, width, boxes, owner, torch.stack([starts, counts, flat[starts]], 1))


def pack(features: Sequence[Tensor], mosaic: Mosaic) -> Tensor:
    """The levels Tensor[N, C, H_l, W_l] in one zero map Tensor[N, C, height, width]
    (channels-last; differentiable)."""
    n, c = features[0].shape[:2]
    out = features[0].new_zeros((n, mosaic.height, mosaic.width, c)).permute(0, 3, 1, 2)
    for f, (y, x, h, w) in zip(features, mosaic.boxes):
        out[:, :, y:y + h, x:x + w] = f
    return out


def unpack(packed: Tensor, mosaic: Mosaic) -> list[Tensor]:
    """Each level's Tensor[N, K, H_l, W_l] (views) of a packed Tensor[N, K, height, width]."""
    return [packed[:, :, y:y + h, x:x + w] for y, x, h, w in mosaic.boxes]


@contextlib.contextmanager
def mosaic_scope(mosaic: Mosaic) -> Iterator[None]:
    """Inside (this thread), GroupNorm + ReLU layers normalize per level of `mosaic` and the
    hooked convolutions mask their input."""
    outer = getattr(_local, "mosaic", None)
    _local.mosaic = mosaic
    try:
        with segments_scope(mosaic.runs, len(mosaic.boxes)):
            yield
    finally:
        _local.mosaic = outer


def current_mosaic() -> Mosaic | None:
    """The mosaic of the innermost `mosaic_scope` of this thread, or None."""
    return getattr(_local, "mosaic", None)


def _mask_input(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook of a convolution of kernel > 1: its input times the mask in a scope."""
    mosaic = current_mosaic()
    if mosaic is None:
        return None
    return (args[0] * mosaic.mask(args[0]),) + args[1:]


def mosaic_applies(features: Sequence[Tensor]) -> bool:
    """Whether a head may pack these features now: more than one level, not under
    torch.compile, tracing or a dispatch mode (FakeTensorMode, FLOP counting)."""
    return (len(features) > 1 and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing() and _get_current_dispatch_mode() is None)


def run_packed(maps: Callable[[Tensor], tuple[Tensor, ...]], features: Sequence[Tensor],
               gap: int) -> list[tuple[Tensor, ...]]:
    """`maps` (the towers and predictors: Tensor[N, C, H, W] -> tuple of Tensor[N, K, H, W])
    run once over the features packed; each level's tuple of outputs, level order."""
    mosaic = plan_mosaic(tuple((f.shape[2], f.shape[3]) for f in features), gap)
    with mosaic_scope(mosaic):
        outs = maps(pack(features, mosaic))
    return list(zip(*(unpack(o, mosaic) for o in outs)))


def _reach(conv: nn.Conv2d) -> int:
    """How far beyond a level the convolution reads: its padding, which must be the 'same'
    padding (dilation * (kernel - 1) / 2) of a stride-1, zero-padded layer."""
    same = tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size))
    if (conv.stride != (1, 1) or conv.padding_mode != "zeros" or conv.padding != same
            or any(k % 2 == 0 for k in conv.kernel_size)):
        raise ConfigError(f"SOLVER.MOSAIC_HEAD_LEVELS: {conv} is not a stride-1 'same' "
                          "convolution; set it False")
    return max(same)


def enable_mosaic_levels(model: nn.Module) -> int:
    """Let `model.head` (an FCOS head: attribute `mosaic_gap`) run its levels packed: check
    that its modules are the heads, augment towers and cells (whose forwards only call their
    children and add or concatenate), containers, stride-1 'same' convolutions, fused
    GroupNorm + ReLU (`GroupNormReLU`, made by `fuse_group_norm_relu`: call this after it),
    ReLU, Identity or the per-level `Scale`; hook the convolutions of kernel > 1 and set the
    gap to the largest reach. Returns the gap."""
    from fad.nas.cells import AugmentCell, AugmentTower

    from .head import FCOSHead, Scale  # these modules import this one
    from .tower_head import TowerHead

    head = getattr(model, "head", None)
    if not isinstance(head, (FCOSHead, TowerHead)):
        raise ConfigError("SOLVER.MOSAIC_HEAD_LEVELS needs an FCOS detector (plain or searched "
                          f"head), not {type(model).__name__}; set it False")
    containers = (FCOSHead, TowerHead, AugmentTower, AugmentCell)
    if head.mosaic_gap:
        return head.mosaic_gap
    gap = 0
    for name, module in head.named_modules():
        if isinstance(module, nn.Conv2d):
            reach = _reach(module)
            if reach:
                module.register_forward_pre_hook(_mask_input)
            gap = max(gap, reach)
        elif not isinstance(module, (*containers, nn.Sequential, nn.ModuleList, GroupNormReLU,
                                     nn.ReLU, nn.Identity, Scale)):
            raise ConfigError(f"SOLVER.MOSAIC_HEAD_LEVELS: the head's {name or 'root'} is a "
                              f"{type(module).__name__}, which cannot run on packed levels "
                              "(only convolutions, GroupNorm + ReLU fused and ReLU can; "
                              "GroupNorms are fused before training); set it False")
    head.mosaic_gap = max(gap, 1)  # a head of 1x1 layers only still needs a gap > 0 (0: off)
    return head.mosaic_gap
