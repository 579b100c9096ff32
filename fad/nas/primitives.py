"""FAD primitives: the std / sinSep / dilated-separable units, `none`, and the primitive list.

Every unit maps Tensor[N, C, H, W] -> Tensor[N, C, H, W] (stride 1) and ends with GN + ReLU.
GroupNorm follows the one rule of `fad.modeling.layers.group_norm` (32 groups; fewer at narrow
widths, >= 2 channels per group).

Names: a RepShare op of family A (`std` or `sinSep`) emits five candidates, in this order:
`A_conv_3x3`, `A_conv_3x3+dil_conv_3x3`, `A_conv_3x3_x2`, `A_conv_3x3_x2+dil_conv_3x3`,
`A_conv_3x3_x3`. The ten names plus `none` form `PRIMITIVES` (std first, then sinSep, then none),
which is also the order of the 11 alphas of every edge.

Dilation-3 variant (off by default, MODEL.FAD.DIL3), as in the reference code: each family gets
a dilation-3 separable unit on the chain's first output, emitted second and named
`A_conv_3x3+dil_conv_3x3_r3`, so a family emits `A_conv_3x3`, `A_conv_3x3+dil_conv_3x3_r3`,
`A_conv_3x3+dil_conv_3x3`, `A_conv_3x3_x2`, `A_conv_3x3_x2+dil_conv_3x3`, `A_conv_3x3_x3` and an
edge has 12 candidates + `none` = 13 alphas, in `PRIMITIVES_DIL3` order. Both lists use the
reference's names, so genotype files pass between the two code bases either way.
"""
from __future__ import annotations

from typing import NamedTuple

from torch import nn

from fad.modeling.layers import group_norm
from fad.ops.depthwise import DepthwiseConv3x3

from .pointwise import Pointwise

FAMILIES = ("std", "sinSep")
# suffix -> (chain length, dilation of the trailing separable unit or 0 for none)
_SUFFIX_SPECS = {
    "conv_3x3": (1, 0),
    "conv_3x3+dil_conv_3x3_r3": (1, 3),
    "conv_3x3+dil_conv_3x3": (1, 2),
    "conv_3x3_x2": (2, 0),
    "conv_3x3_x2+dil_conv_3x3": (2, 2),
    "conv_3x3_x3": (3, 0),
}
DIL3_SUFFIX = "conv_3x3+dil_conv_3x3_r3"
NONE = "none"


def primitives(dil3: bool = False) -> tuple[str, ...]:
    """The alpha order of one edge: per family its candidates in RepShare emit order, then `none`
    (11, or 13 with dil3)."""
    suffixes = tuple(s for s in _SUFFIX_SPECS if dil3 or s != DIL3_SUFFIX)
    return tuple(f"{family}_{suffix}" for family in FAMILIES for suffix in suffixes) + (NONE,)


PRIMITIVES = primitives(dil3=False)
PRIMITIVES_DIL3 = primitives(dil3=True)
SEARCHABLE = PRIMITIVES_DIL3[:-1]  # every name a genotype may use


def primitives_for(num_ops: int) -> tuple[str, ...]:
    """The primitive list whose length is `num_ops` (the width of an alpha tensor)."""
    for ops in (PRIMITIVES, PRIMITIVES_DIL3):
        if len(ops) == num_ops:
            return ops
    raise ValueError(f"alphas with {num_ops} columns match no primitive list (expected "
                     f"{len(PRIMITIVES)}, or {len(PRIMITIVES_DIL3)} with MODEL.FAD.DIL3)")


class OpSpec(NamedTuple):
    """What a candidate name means: unit family, chain length (1-3), and the dilation of the
    trailing separable unit (0: no trailing unit)."""

    family: str
    depth: int
    dilation: int


def op_spec(name: str) -> OpSpec:
    """Decode a candidate name such as `sinSep_conv_3x3_x2+dil_conv_3x3` (not `none`)."""
    if name not in SEARCHABLE:
        raise ValueError(f"{name!r} is not a searchable operation; choose one of {SEARCHABLE}")
    family, suffix = name.split("_", 1)
    depth, dilation = _SUFFIX_SPECS[suffix]
    return OpSpec(family, depth, dilation)


def conv_unit(family: str, channels: int) -> nn.Sequential:
    """`std`: conv3x3 (bias); `sinSep`: depthwise 3x3 (no bias) then 1x1 (bias); + GN + ReLU."""
    if family == "std":
        convs = [nn.Conv2d(channels, channels, 3, padding=1)]
    elif family == "sinSep":
        convs = [DepthwiseConv3x3(channels), Pointwise(channels, channels)]
    else:
        raise ValueError(f"unknown unit family {family!r}; choose one of {FAMILIES}")
    return nn.Sequential(*convs, group_norm(channels), nn.ReLU(inplace=True))


def dil_unit(channels: int, dilation: int = 2) -> nn.Sequential:
    """Dilated separable unit: depthwise 3x3 with `dilation` (no bias), 1x1 (bias), GN, ReLU."""
    return nn.Sequential(
        DepthwiseConv3x3(channels, dilation),
        Pointwise(channels, channels),
        group_norm(channels),
        nn.ReLU(inplace=True),
    )


def discrete_op(name: str, channels: int) -> nn.Sequential:
    """The stand-alone op of a candidate name (augment stage): stacked units, no decouple 1x1s."""
    spec = op_spec(name)
    units = [conv_unit(spec.family, channels) for _ in range(spec.depth)]
    if spec.dilation:
        units.append(dil_unit(channels, spec.dilation))
    return nn.Sequential(*units)


def preprocess(in_channels: int, out_channels: int) -> nn.Module:
    """Cell-input adapter: identity when widths match, else 1x1 conv (with bias, as the
    reference's adapter) + GN + ReLU."""
    if in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(Pointwise(in_channels, out_channels),
                         group_norm(out_channels), nn.ReLU(inplace=True))
