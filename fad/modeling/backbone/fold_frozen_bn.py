"""A FrozenBatchNorm2d folded into the convolution before it, for training (`prepare_layers`).

A frozen batch norm is a fixed per-channel affine map, y = x * scale + shift with
scale = weight / sqrt(running_var + eps) and shift = bias - running_mean * scale, so
frozen_bn(conv(x, w, b)) = conv(x, w * scale, b * scale + shift). Folded, a ResNet block's
convolutions write their normalised output directly: the norm's two passes over each map
(multiply, add) and, where the convolution trains, its backward pass (grad * scale) are gone;
the folding itself is a multiply of the (small) weight per forward, so the weight keeps
training and the gradient reaching it is the unfolded one's up to float rounding.

`fold_frozen_batch_norms(model)` pairs each `nn.Conv2d` with the FrozenBatchNorm2d that reads
its output and nothing else: adjacent members of an `nn.Sequential` (a ResNet stem, a
downsample) and convK / bnK of torchvision's ResNet blocks (those classes exactly). The
convolution becomes a `FrozenBNFoldedConv2d` and the norm a `FoldedFrozenBatchNorm2d` (the
identity), in place: the same modules, parameters and state-dict keys and values.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.ops import FrozenBatchNorm2d

from fad.ops.conv_wgrad import WgradConv2d


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A FrozenBatchNorm2d that the convolution before it applies (`FrozenBNFoldedConv2d`):
    `forward(x) -> x`; its buffers stay here (state dict, `.to()`)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class FrozenBNFoldedConv2d(WgradConv2d):
    """conv2d followed by the FrozenBatchNorm2d `folded_norm`, as one convolution:
    `forward(x: Tensor[N, C, H, W]) -> Tensor[N, O, Ho, Wo]` with weight * scale and
    bias * scale + shift. `folded_norm` is a plain attribute (not a submodule: the norm stays
    registered where it was, the state dict unchanged)."""

    folded_norm: FrozenBatchNorm2d

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = norm_affine(self.folded_norm)
        bias = shift if self.bias is None else self.bias * scale + shift
        return self._conv_forward(x, self.weight * scale.view(-1, 1, 1, 1), bias)


def norm_affine(norm: nn.Module) -> tuple[Tensor, Tensor]:
    """(scale, shift), each Tensor[C], of a batch norm applying its running statistics (a
    FrozenBatchNorm2d, a BatchNorm2d in eval): norm(x) = x * scale + shift per channel."""
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    return scale, norm.bias - norm.running_mean * scale


def _pairs(module: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(conv, norm) candidates directly inside `module`: adjacent Sequential members, or a
    torchvision ResNet block's convK / bnK."""
    if isinstance(module, nn.Sequential):
        members = list(module)
        return list(zip(members[:-1], members[1:]))
    if type(module) in (tv_resnet.BasicBlock, tv_resnet.Bottleneck):  # not subclasses: a
        # sparse block interpolates between conv2 and bn2
        return [(getattr(module, f"conv{k}"), getattr(module, f"bn{k}"))
                for k in (1, 2, 3) if hasattr(module, f"conv{k}")]
    return []


def fold_frozen_batch_norms(model: nn.Module) -> int:
    """Fold every FrozenBatchNorm2d that directly follows an `nn.Conv2d` (exactly those
    classes, or a `WgradConv2d`) into it, in place; returns the number of pairs folded."""
    folded = 0
    for module in model.modules():
        for conv, norm in _pairs(module):
            if (type(conv) in (nn.Conv2d, WgradConv2d) and type(norm) is FrozenBatchNorm2d
                    and norm.weight.shape[0] == conv.out_channels):
                conv.__class__ = FrozenBNFoldedConv2d
                conv.__dict__["folded_norm"] = norm  # not registered: no new state-dict keys
                norm.__class__ = FoldedFrozenBatchNorm2d
                folded += 1
    return folded
