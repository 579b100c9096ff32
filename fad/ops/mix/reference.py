"""Pure-PyTorch reference of the edge mixing op: a GroupNorm, a ReLU and an add per candidate."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def gn_relu_sum_reference(xs: list[Tensor], scale: Tensor, shift: Tensor, groups: int,
                          eps: float, base: Tensor | None = None) -> Tensor:
    """`base + sum_k relu(group_norm(xs[k], groups, scale[k], shift[k], eps))`.

    xs: K tensors [N, C, H, W]; scale, shift: Tensor[K, C]; base: Tensor[N, C, H, W] or None
    -> Tensor[N, C, H, W].
    """
    acc = base
    for x, a, b in zip(xs, scale.unbind(), shift.unbind()):
        out = F.relu(F.group_norm(x, groups, a, b, eps), inplace=True)
        acc = out if acc is None else acc + out
    return acc
