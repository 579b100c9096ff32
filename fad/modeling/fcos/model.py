"""FCOS detector (FCOS-imprv): backbone + FPN P3-P7 + any head meeting the head contract.

The head is pluggable: the plain `FCOSHead` (head.py), or a `TowerHead` (tower_head.py) around
the FAD searched/supernet towers of `fad.augment` / `fad.search`. Targets (targets.py), losses
(loss.py) and post-processing follow spec FAD.md §5.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image
from yacs.config import CfgNode

from fad.modeling.backbone import build_backbone
from fad.modeling.image_batch import batch_images

from .head import FCOSHead
from .loss import fcos_losses
from .targets import STRIDES, assign_targets, make_locations


class FCOS(nn.Module):
    """`forward(images, targets=None)` -> losses (training) or detections (eval)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, cfg: CfgNode):
        super().__init__()
        self.backbone = backbone
        self.head = head
        f = cfg.MODEL.FCOS
        self.radius, self.alpha, self.gamma = f.CENTER_SAMPLING_RADIUS, f.FOCAL_ALPHA, f.FOCAL_GAMMA
        self.score_thresh, self.topk = f.SCORE_THRESH, f.TOPK_CANDIDATES
        self.nms_thresh, self.detections_per_img = f.NMS_THRESH, f.DETECTIONS_PER_IMG
        self.size_divisible = cfg.INPUT.SIZE_DIVISIBILITY
        self.register_buffer("pixel_mean", torch.tensor(cfg.INPUT.PIXEL_MEAN), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.INPUT.PIXEL_STD), persistent=False)

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("FCOS needs targets in training mode")
        batch, sizes, _ = batch_images(images, self.pixel_mean, self.pixel_std, self.size_divisible)
        features = list(self.backbone(batch).values())
        outputs = self.head(features)
        shapes = [tuple(f.shape[-2:]) for f in features]
        points, strides, ranges = make_locations(shapes, STRIDES[: len(shapes)], batch.device)
        if self.training:
            return self.losses(outputs, targets, points, strides, ranges)
        return self.postprocess(outputs, points, strides, shapes, sizes)

    def losses(self, outputs: dict[str, Tensor], targets: list[dict], points: Tensor,
               strides: Tensor, ranges: Tensor) -> dict[str, Tensor]:
        """Assign targets per image, then the batch losses."""
        assigned = [assign_targets(points, strides, ranges, t["boxes"], t["labels"], self.radius)
                    for t in targets]
        cls_t = torch.stack([a[0] for a in assigned])
        reg_t = torch.stack([a[1] for a in assigned])
        return fcos_losses(outputs, cls_t, reg_t, strides, self.alpha, self.gamma)

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, Tensor], points: Tensor, strides: Tensor,
                    shapes: list[tuple[int, int]], sizes: list[tuple[int, int]]) -> list[dict]:
        """Per level: score threshold, top-k by sqrt(cls*ctr); then class-aware NMS per image."""
        cls = outputs["cls_logits"].float().sigmoid()
        ctr = outputs["bbox_ctrness"].float().sigmoid()[..., 0]
        reg = outputs["bbox_regression"].float() * strides[None, :, None]
        bounds = torch.tensor([0] + [h * w for h, w in shapes]).cumsum(0).tolist()
        results = []
        for i, size in enumerate(sizes):
            boxes, scores, labels = [], [], []
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                cls_l = cls[i, lo:hi]
                cand = torch.nonzero(cls_l > self.score_thresh)
                loc, lab = cand[:, 0], cand[:, 1]
                score = torch.sqrt(cls_l[loc, lab] * ctr[i, lo + loc])
                score, order = score.topk(min(self.topk, score.numel()))
                loc, lab = loc[order] + lo, lab[order]
                p, r = points[loc], reg[i, loc]
                boxes.append(torch.cat([p - r[:, :2], p + r[:, 2:]], 1))
                scores.append(score)
                labels.append(lab)
            b = clip_boxes_to_image(torch.cat(boxes), size)
            s, lab = torch.cat(scores), torch.cat(labels)
            keep = batched_nms(b, s, lab, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
        return results


def build_fcos(cfg: CfgNode, num_classes: int, head: nn.Module | None = None) -> FCOS:
    """FCOS with the plain head, or with `head` (e.g. a FAD searched head) when given."""
    backbone = build_backbone(cfg)
    if head is None:
        head = FCOSHead(backbone.out_channels, num_classes, cfg.MODEL.FCOS.NUM_CONVS,
                        cfg.MODEL.FCOS.PRIOR_PROB)
    return FCOS(backbone, head, cfg)
