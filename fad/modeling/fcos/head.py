"""The plain FCOS-imprv head: two conv towers shared over FPN levels, per-level Scale.

Head contract (also met by `TowerHead`, the frame of the FAD searched heads): `forward(features)`
takes the P3-P7 maps `list[Tensor[N, C, H_l, W_l]]` and returns a dict of level-major, row-major
flattened outputs `cls_logits` [N, sum_l H_l*W_l, num_classes], `bbox_regression` [N, sum HW, 4]
(l, t, r, b divided by the level's stride, >= 0) and `bbox_ctrness` [N, sum HW, 1] (logits).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fad.modeling.layers import group_norm, prior_bias

from .mosaic import mosaic_applies, run_packed
from .parallel_levels import map_levels


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def flatten_level_outputs(maps: list[Tensor]) -> Tensor:
    """`list[Tensor[N, K, H_l, W_l]]` -> Tensor[N, sum_l H_l*W_l, K] (level-major, row-major)."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1)


def level_outputs(head: nn.Module, features: list[Tensor]
                  ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], tuple[Tensor, ...]]:
    """(logits, regressions, centerness), each a tuple over the levels, of an FCOS head (its
    `maps`, `level`, `scales`, `parallel_levels`, `mosaic_gap`): the levels packed in one map
    (`mosaic.run_packed`, each level's scale on its slice) where `head.mosaic_gap` is set and
    `mosaic_applies`, else `map_levels` (one after the other, or on two threads)."""
    if head.mosaic_gap and mosaic_applies(features):
        logits, regs, ctrs = zip(*run_packed(head.maps, features, head.mosaic_gap))
        return logits, tuple(head.scales[i](r).relu() for i, r in enumerate(regs)), ctrs
    return tuple(zip(*map_levels(head.level, features, head.parallel_levels, head)))


def init_predictor(conv: nn.Conv2d, bias: float = 0.0) -> None:
    """N(0, 0.01) weights and a constant bias, as for every FCOS predictor."""
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.constant_(conv.bias, bias)


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        conv = nn.Conv2d(channels, channels, 3, padding=1)
        init_predictor(conv)
        layers += [conv, group_norm(channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Classification tower + box tower (centerness on the box tower), shared over levels."""

    def __init__(self, in_channels: int, num_classes: int, num_convs: int = 4,
                 prior_prob: float = 0.01, num_levels: int = 5):
        super().__init__()
        self.cls_tower = _tower(in_channels, num_convs)
        self.bbox_tower = _tower(in_channels, num_convs)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1)
        init_predictor(self.cls_logits, prior_bias(prior_prob))
        init_predictor(self.bbox_pred)
        init_predictor(self.centerness)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        self.parallel_levels = 0  # > 0: on two CPU threads by level (parallel_levels.py)
        self.mosaic_gap = 0  # > 0: the levels packed in one map (mosaic.py)

    def maps(self, feat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits [N, K, H, W], regression before the level's scale [N, 4, H, W], centerness
        [N, 1, H, W]) of an FPN map feat [N, C, H, W]."""
        box_feat = self.bbox_tower(feat)
        logits = self.cls_logits(self.cls_tower(feat))
        return logits, self.bbox_pred(box_feat), self.centerness(box_feat)

    def level(self, index: int, feat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Level `index`'s (logits, regression [N, 4, H, W], centerness) of its FPN map."""
        logits, reg, ctr = self.maps(feat)
        return logits, torch.relu(self.scales[index](reg)), ctr

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        logits, regs, ctrs = level_outputs(self, features[:len(self.scales)])
        return {
            "cls_logits": flatten_level_outputs(list(logits)),
            "bbox_regression": flatten_level_outputs(list(regs)),
            "bbox_ctrness": flatten_level_outputs(list(ctrs)),
        }
