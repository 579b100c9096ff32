"""Layer rules shared by every head: the GroupNorm group count and the focal prior bias."""
from __future__ import annotations

import math

from torch import nn


def group_norm_groups(channels: int, max_groups: int = 32) -> int:
    """Groups for GroupNorm over `channels`: the largest divisor of `max_groups` that divides
    `channels` and leaves >= 2 channels per group (1 if none), so GN(32) at the usual widths and
    a 1x1 map (P7 of a small image) still normalises at the narrow widths of tiny CPU configs."""
    groups = math.gcd(max_groups, channels)
    while groups > 1 and channels // groups < 2:
        groups //= 2
    return groups


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm over `channels` with `group_norm_groups(channels, max_groups)` groups."""
    return nn.GroupNorm(group_norm_groups(channels, max_groups), channels)


def prior_bias(prior_prob: float) -> float:
    """Classifier bias b with sigmoid(b) = `prior_prob` (focal-loss init: -log((1 - p) / p))."""
    return -math.log((1 - prior_prob) / prior_prob)
