"""FCOS detector (FCOS-imprv): backbone + FPN P3-P7 + any head meeting the head contract.

The head is pluggable: the plain `FCOSHead` (head.py), or a `TowerHead` (tower_head.py) around
the FAD towers (augment towers of `fad.nas.cells`, or the supernet's of `fad.search`). Targets
(targets.py), losses (loss.py) and post-processing follow FCOS-imprv (Tian et al., "FCOS: A
Simple and Strong Anchor-free Object Detector", TPAMI 2020), the detector of the FAD paper;
`build.py` reads the
config, this module takes plain arguments.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image

from fad.modeling.image_batch import batch_images

from .loss import fcos_losses
from .targets import STRIDES, assign_targets, make_locations


class FCOS(nn.Module):
    """`forward(images, targets=None)` -> losses (training) or detections (eval).

    `backbone(Tensor[N, 3, H, W])` returns the P3-P7 maps (an ordered dict); `head` meets the head
    contract of `head.py`. Training: positives within `center_sampling_radius` strides of a box
    centre, sigmoid focal loss (`focal_alpha`, `focal_gamma`). Inference: per level the
    `topk_candidates` locations scoring above `score_thresh`, class-aware NMS at `nms_thresh`,
    `detections_per_img` kept. Images are normalised by `pixel_mean` / `pixel_std` (RGB, [0, 1]
    input) and padded to a multiple of `size_divisible`.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, *, center_sampling_radius: float,
                 focal_alpha: float, focal_gamma: float, score_thresh: float,
                 topk_candidates: int, nms_thresh: float, detections_per_img: int,
                 size_divisible: int, pixel_mean: Sequence[float], pixel_std: Sequence[float]):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.radius, self.alpha, self.gamma = center_sampling_radius, focal_alpha, focal_gamma
        self.score_thresh, self.topk = score_thresh, topk_candidates
        self.nms_thresh, self.detections_per_img = nms_thresh, detections_per_img
        self.size_divisible = size_divisible
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std), persistent=False)

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
        bounds = list(accumulate((h * w for h, w in shapes), initial=0))
        results = []
        for i, size in enumerate(sizes):
            boxes, scores, labels = [], [], []
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                cls_l = cls[i, lo:hi]
                cand = torch.nonzero(cls_l > self.score_thresh)  # host sync: score threshold
                loc, lab = cand[:, 0], cand[:, 1]
                score = torch.sqrt(cls_l[loc, lab] * ctr[i, lo + loc])
                k = min(self.topk, score.numel())  # host sync: top-k of the candidates
                score, order = score.topk(k)
                loc, lab = loc[order] + lo, lab[order]
                p, r = points[loc], reg[i, loc]
                boxes.append(torch.cat([p - r[:, :2], p + r[:, 2:]], 1))
                scores.append(score)
                labels.append(lab)
            b = clip_boxes_to_image(torch.cat(boxes), size)
            s, lab = torch.cat(scores), torch.cat(labels)
            keep = batched_nms(b, s, lab, self.nms_thresh)  # host sync: NMS keeps a data count
            keep = keep[: self.detections_per_img]
            results.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
        return results

