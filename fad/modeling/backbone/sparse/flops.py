"""Density-aware multiply-accumulate count of a (Sparse)ResNet backbone (no FPN, no head).

Per block: conv1 x d1; conv2, conv3 and the DCN offset conv x d2; the two mask convs always;
interpolation 49 * C * HW1 * d1 * (1 - d1) after conv1 and 49 * 4C * HW2 * d2 * (1 - d2) after
conv3 (the sparse path interpolates conv3's output, `execution.py`); stem and downsample dense.
The DCN offset conv (3x3 -> 18 channels) reads the block input, as the mask convs do.
Dense baselines (`densities=None`) have no mask convs and no interpolation.
The published R-101 numbers are for a fixed canvas per resolution (`reference_canvas`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..resnet import STAGE_BLOCKS, STAGE_PLANES, check_depth


@dataclass(frozen=True)
class BlockSpec:
    """One residual block: its stage (0..3), input channels, width, stride, kind."""

    stage: int
    in_channels: int
    planes: int
    stride: int
    bottleneck: bool

    @property
    def out_channels(self) -> int:
        return self.planes * (4 if self.bottleneck else 1)


def block_specs(depth: int) -> list[BlockSpec]:
    """The blocks of a torchvision-style ResNet-`depth`, in forward order."""
    check_depth(depth)
    bottleneck = depth >= 50
    specs, cin = [], 64
    for stage, (count, planes) in enumerate(zip(STAGE_BLOCKS[depth], STAGE_PLANES)):
        for i in range(count):
            spec = BlockSpec(stage, cin, planes, 2 if (i == 0 and stage > 0) else 1, bottleneck)
            specs.append(spec)
            cin = spec.out_channels
    return specs


def reference_canvas(resolution: int) -> tuple[int, int]:
    """(H, W) canvas of the published numbers: (res // 32 * 32, res * 5/3 // 32 * 32)."""
    return resolution // 32 * 32, int(resolution * 5 / 3 // 32) * 32


def _down(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def backbone_macs(depth: int, height: int, width: int,
                  densities: float | Sequence[tuple[float, float]] | None = None,
                  stage_with_dcn: Sequence[bool] = (False, False, False, False)) -> float:
    """Multiply-accumulates of the backbone on an `height` x `width` input.

    Args:
        depth: 18, 34, 50, 101 or 152.
        densities: None (dense ResNet, no masks), one density for every mask, or one
            (d1, d2) pair per block (conv1 mask, conv2 mask) in forward order.
        stage_with_dcn: deformable conv2 (with its offset conv) per stage res2..res5.
    """
    specs = block_specs(depth)
    if isinstance(densities, (int, float)):
        densities = [(float(densities), float(densities))] * len(specs)
    if densities is not None and len(densities) != len(specs):
        raise ValueError(f"need {len(specs)} (d1, d2) pairs for ResNet-{depth}, "
                         f"got {len(densities)}")
    h, w = _down(height, 2), _down(width, 2)
    macs = 7 * 7 * 3 * 64 * h * w
    h, w = _down(h, 2), _down(w, 2)
    for i, b in enumerate(specs):
        d1, d2 = (1.0, 1.0) if densities is None else densities[i]
        ho, wo = _down(h, b.stride), _down(w, b.stride)
        hw1, hw2 = (h * w, ho * wo) if b.bottleneck else (ho * wo, ho * wo)
        c = b.planes
        if b.bottleneck:
            macs += b.in_channels * c * hw1 * d1 + (9 * c * c + c * 4 * c) * hw2 * d2
        else:
            macs += 9 * b.in_channels * c * hw1 * d1 + 9 * c * c * hw2 * d2
        if stage_with_dcn[b.stage]:
            macs += 9 * b.in_channels * 18 * hw2 * d2
        if b.stride != 1 or b.in_channels != b.out_channels:
            macs += b.in_channels * b.out_channels * hw2
        if densities is not None:
            macs += 9 * b.in_channels * (hw1 + hw2)
            macs += 49 * c * hw1 * d1 * (1 - d1) + 49 * b.out_channels * hw2 * d2 * (1 - d2)
        h, w = ho, wo
    return float(macs)
