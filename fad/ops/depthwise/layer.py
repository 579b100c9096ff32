"""`DepthwiseConv3x3`: an `nn.Conv2d` whose forward runs the depthwise op."""
from __future__ import annotations

from torch import Tensor, nn

from .dispatch import depthwise_conv3x3


class DepthwiseConv3x3(nn.Conv2d):
    """`forward(x: Tensor[N, C, H, W]) -> Tensor[N, C, H, W]`, no bias, padding = dilation."""

    def __init__(self, channels: int, dilation: int = 1):
        super().__init__(channels, channels, 3, padding=dilation, dilation=dilation,
                         groups=channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return depthwise_conv3x3(x, self.weight, self.dilation[0])
