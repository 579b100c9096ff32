"""`GroupNormReLU` (an `nn.GroupNorm` followed by ReLU, one op) and `fuse_group_norm_relu`,
which puts it in place of the (GroupNorm, ReLU) pairs of a model."""
from __future__ import annotations

from torch import Tensor, nn

from .dispatch import group_norm_relu
from .segments import current_segments, group_norm_relu_segments


class GroupNormReLU(nn.GroupNorm):
    """`forward(x: Tensor[N, C, H, W]) -> Tensor[N, C, H, W]` = relu(GroupNorm(x)); the
    parameters and state dict of `nn.GroupNorm` (`weight`, `bias`). Inside a `segments_scope`,
    each segment of the map normalized on its own (`group_norm_relu_segments`)."""

    def forward(self, x: Tensor) -> Tensor:
        segments = current_segments()
        if segments is not None:
            return group_norm_relu_segments(x, self.num_groups, self.weight, self.bias,
                                            self.eps, *segments)
        return group_norm_relu(x, self.num_groups, self.weight, self.bias, self.eps)


def _fused(norm: nn.GroupNorm) -> GroupNormReLU:
    """A `GroupNormReLU` holding `norm`'s own parameter objects (optimizers keep working)."""
    fused = GroupNormReLU(norm.num_groups, norm.num_channels, norm.eps, norm.affine,
                          device="meta")
    fused.weight, fused.bias = norm.weight, norm.bias
    fused.train(norm.training)
    return fused


def fuse_group_norm_relu(model: nn.Module) -> int:
    """In every nn.Sequential of `model`, replace each adjacent (nn.GroupNorm, nn.ReLU) pair by
    (GroupNormReLU, nn.Identity), in place; the state-dict keys and values stay the same, and
    the GroupNorm's parameters stay the same objects. Returns the number of pairs fused."""
    fused = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            norm, relu = module[i], module[i + 1]
            if type(norm) is nn.GroupNorm and isinstance(relu, nn.ReLU):
                module[i], module[i + 1] = _fused(norm), nn.Identity()
                fused += 1
    return fused
