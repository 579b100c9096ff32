"""Turn DETR outputs into detections: top-k over (query, class) scores, boxes in pixels."""
from __future__ import annotations

import torch
from torch import Tensor

from fad.modeling.set_prediction import cxcywh_to_xyxy, values_like


@torch.no_grad()
def postprocess(logits: Tensor, boxes: Tensor, image_sizes: list[tuple[int, int]],
                num_detections: int = 100) -> list[dict[str, Tensor]]:
    """Top `num_detections` (query, class) pairs per image, no NMS.

    Args:
        logits: [N, Q, C] class logits.
        boxes: [N, Q, 4] sigmoid (cx, cy, w, h) relative to each image's unpadded size.
        image_sizes: (H, W) of each input image.

    Returns per image {"boxes" [K, 4] xyxy pixels, "scores" [K], "labels" [K] int64} with
    K = min(num_detections, Q * C), sorted by score; flat index f decodes to query f // C and
    label f % C.
    """
    n, q, c = logits.shape
    prob = logits.sigmoid().view(n, q * c)
    scores, flat = prob.topk(min(num_detections, q * c), dim=1)
    query = torch.div(flat, c, rounding_mode="floor")
    labels = flat % c
    xyxy = torch.gather(cxcywh_to_xyxy(boxes), 1, query[..., None].expand(-1, -1, 4))
    results = []
    for i, (h, w) in enumerate(image_sizes):
        scale = values_like([w, h, w, h], xyxy)
        results.append({"boxes": xyxy[i] * scale, "scores": scores[i], "labels": labels[i]})
    return results
