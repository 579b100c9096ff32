"""Pure-PyTorch reference of the depthwise 3x3 convolution: PyTorch's own `F.conv2d`."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def depthwise_conv3x3_reference(x: Tensor, weight: Tensor, dilation: int = 1) -> Tensor:
    """x Tensor[N, C, H, W], weight Tensor[C, 1, 3, 3] -> Tensor[N, C, H, W] (padding =
    dilation, one group per channel)."""
    return F.conv2d(x, weight, padding=dilation, dilation=dilation, groups=weight.shape[0])
