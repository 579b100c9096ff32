"""Pure-PyTorch reference of GroupNorm + ReLU: PyTorch's `F.group_norm` then `F.relu`."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def group_norm_relu_reference(x: Tensor, groups: int, weight: Tensor | None,
                              bias: Tensor | None, eps: float) -> Tensor:
    """x Tensor[N, C, ...], weight / bias Tensor[C] or None -> Tensor[N, C, ...]."""
    return F.relu(F.group_norm(x, groups, weight, bias, eps), inplace=True)
