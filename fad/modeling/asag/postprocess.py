"""ASAG outputs -> detections: top-k over the valid (query, class) pairs, optional class-wise
NMS (the 300-query setting), boxes in input-image pixels without clipping."""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_convert

from fad.modeling.set_prediction import values_like


@torch.no_grad()
def postprocess(logits: Tensor, boxes: Tensor, valid: Tensor, image_sizes: list[tuple[int, int]],
                num_detections: int = 100, nms_thresh: float = 0.0) -> list[dict[str, Tensor]]:
    """Per image the top `num_detections` (query, class) pairs by sigmoid score.

    Args:
        logits: [B, Q, C] class logits of the used head.
        boxes: [B, Q, 4] (cx, cy, w, h) fractions of each image's unpadded size.
        valid: [B, Q] bool; padded queries (False) are never detections (at batch 1 there are
            none, as in the reference's evaluation).
        image_sizes: (h, w) of each input image.
        num_detections: K; fewer when the image has fewer than K valid pairs.
        nms_thresh: > 0: class-wise NMS at this IoU after the top-k (the reference's 300-query
            setting, 0.7), keeping score order.

    Returns per image {"boxes" [K', 4] xyxy pixels, "scores" [K'], "labels" [K'] int64 0-based};
    flat index f over the image's valid queries decodes to query f // C, label f % C.
    """
    num_classes = logits.shape[-1]
    results = []
    for i, (h, w) in enumerate(image_sizes):
        prob = logits[i][valid[i]].sigmoid().flatten()  # host sync: adaptive anchor count
        scores, flat = prob.topk(min(num_detections, prob.numel()))  # host sync: as above
        query = torch.div(flat, num_classes, rounding_mode="floor")
        labels = flat % num_classes
        xyxy = box_convert(boxes[i][valid[i]][query], "cxcywh", "xyxy")  # host sync: as above
        xyxy = xyxy * values_like([w, h, w, h], xyxy)
        if nms_thresh > 0:
            keep = batched_nms(xyxy, scores, labels, nms_thresh)  # host sync: NMS keeps a count
            xyxy, scores, labels = xyxy[keep], scores[keep], labels[keep]
        results.append({"boxes": xyxy, "scores": scores, "labels": labels})
    return results
