"""The FCOS head around two FAD towers (the supernet's, or the augment towers of a genotype).

A tower is any module with `forward(s0, s1) -> Tensor[N, out_channels, H, W]` and an
`out_channels` attribute. Per FPN level l (towers and predictors shared over levels):
  bf = box_reduce(box_tower(P_l, P_l));  reg = relu(Scale_l(bbox_pred(bf)));  ctr = centerness(bf)
  logits = cls_logits(cls_reduce(cls_tower(bf, P_l)))   (no detach: cls gradients reach bf)
Outputs follow the head contract of `head.py` (level-major flattening).

Init, as the reference code: predictors and `cls_reduce` N(0, 0.01), bias 0 (cls_logits: the
prior bias); `box_reduce` keeps PyTorch's default init (N(0, 0.01) there would shrink the
un-normalised box feature ~0.01*sqrt(fan_in) times, so the initial boxes are near points and the
GIoU loss stalls: tiny CPU setting, loss_bbox at 1.000 for 40+ iterations instead of ~20).
"""
from __future__ import annotations

from torch import Tensor, nn

from fad.modeling.layers import prior_bias

from .head import Scale, flatten_level_outputs, init_predictor, level_outputs


class TowerHead(nn.Module):
    """`forward(features: list[Tensor[N, C_fpn, H_l, W_l]])` -> dict of flattened outputs."""

    def __init__(self, box_tower: nn.Module, cls_tower: nn.Module, tower_channels: int,
                 num_classes: int, prior_prob: float = 0.01, num_levels: int = 5):
        super().__init__()
        self.box_tower, self.cls_tower = box_tower, cls_tower
        self.box_reduce = nn.Conv2d(box_tower.out_channels, tower_channels, 1)
        self.cls_reduce = nn.Conv2d(cls_tower.out_channels, tower_channels, 1)
        self.bbox_pred = nn.Conv2d(tower_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(tower_channels, 1, 3, padding=1)
        self.cls_logits = nn.Conv2d(tower_channels, num_classes, 3, padding=1)
        for conv in (self.cls_reduce, self.bbox_pred, self.centerness):
            init_predictor(conv)
        init_predictor(self.cls_logits, prior_bias(prior_prob))
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        self.parallel_levels = 0  # > 0: on two CPU threads by level (parallel_levels.py)
        self.mosaic_gap = 0  # > 0: the levels packed in one map (mosaic.py)

    def maps(self, feat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits [N, K, H, W], regression before the level's scale [N, 4, H, W], centerness
        [N, 1, H, W]) of an FPN map feat [N, C, H, W]."""
        bf = self.box_reduce(self.box_tower(feat, feat))
        logits = self.cls_logits(self.cls_reduce(self.cls_tower(bf, feat)))
        return logits, self.bbox_pred(bf), self.centerness(bf)

    def level(self, index: int, feat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Level `index`'s (logits, regression [N, 4, H, W], centerness) of its FPN map."""
        logits, reg, ctr = self.maps(feat)
        return logits, self.scales[index](reg).relu(), ctr

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        if len(features) > len(self.scales):
            raise ValueError(f"the head has {len(self.scales)} per-level scales but got "
                             f"{len(features)} feature maps")
        logits, regs, ctrs = level_outputs(self, features)
        return {
            "cls_logits": flatten_level_outputs(list(logits)),
            "bbox_regression": flatten_level_outputs(list(regs)),
            "bbox_ctrness": flatten_level_outputs(list(ctrs)),
        }

