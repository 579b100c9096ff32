"""Deformable DETR (+ box refinement, + two-stage) and Sparse DETR in the export contract of
`fad.export.base`.

The trained modules run unchanged, as in `DeformableDETR.forward`'s eval path: the transformer
carries the level shapes as Python (symbolic) ints and reads nothing back from a tensor, so it
traces with fixed and dynamic sizes.

- MSDA stays one `fad::ms_deform_attn` node; the ONNX writer translates it with
  `fad.ops.msda.onnx` (GridSample decomposition, or the TensorRT plugin node).
- Sparse DETR selects K = floor(rho * S) + 1 tokens (`token_budget`, from the shape) and image i
  keeps its first k_i (from its padding mask) - a mask, no data-dependent size.
- Two-stage keeps the top NUM_QUERIES proposals (a fixed top-k).
- Post-processing is the eager top-k over (query, class) pairs (fixed K, no NMS), padded to
  DETECTIONS_PER_IMG when Q * C is smaller.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode

from fad.modeling.detr.box_ops import refine_boxes
from fad.modeling.detr.detector import DeformableDETR
from fad.modeling.set_prediction import cxcywh_to_xyxy

from .base import ExportError, ExportModule, normalize_and_pad, pad_detections


def padding_mask(batch: Tensor, height: int, width: int) -> Tensor:
    """[N, H', W'] bool, True outside the top-left `height` x `width` of the padded `batch`
    [N, 3, H', W'] (as `fad.modeling.image_batch.batch_images` for images of one size)."""
    n, _, hp, wp = batch.shape
    rows = torch.arange(hp, device=batch.device)[None, :, None] >= height
    cols = torch.arange(wp, device=batch.device)[None, None, :] >= width
    return (rows | cols).expand(n, hp, wp)


class DeformableDETRExport(ExportModule):
    """`forward(images [N, 3, H, W] 0-255)` -> (boxes [N, K, 4], scores [N, K], labels [N, K],
    num_detections [N]) of the wrapped Deformable / Sparse DETR, K = its DETECTIONS_PER_IMG."""

    def __init__(self, model: DeformableDETR, cfg: CfgNode, input_size: Sequence[int]):
        super().__init__(cfg, input_size, model.num_detections)
        self.model = model

    def preprocess(self, images: Tensor) -> Tensor:
        """`normalize_and_pad` with the padded size written as d * ceil(size / d), which the
        symbolic shapes of a dynamic graph simplify (Sparse DETR's token count divides it).
        The ceil is (size + d - 1) // d: torch.onnx writes a symbolic floor division as ONNX
        Div, which truncates, so -(-size // d) would round a padded size down in the graph."""
        height, width = images.shape[-2:]
        d = self.size_divisible
        x = normalize_and_pad(images, self.pixel_mean, self.pixel_std, 1)
        pad_w, pad_h = (width + d - 1) // d * d - width, (height + d - 1) // d * d - height
        return F.pad(x, (0, pad_w, 0, pad_h))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        height, width = images.shape[-2:]
        batch = self.preprocess(images)
        m = self.model
        features = m.backbone(batch, padding_mask(batch, height, width))
        pos = [m.position_encoding(mask).to(src.dtype) for src, mask in features]
        t = m.transformer(features, pos, m.heads)
        last = len(t.hs) - 1
        logits = m.heads.cls(last)(t.hs[last])
        boxes = refine_boxes(m.heads.box(last)(t.hs[last]), t.layer_reference(last))
        return self._detections(logits, boxes, height, width)

    def _detections(self, logits: Tensor, boxes: Tensor, height: int, width: int
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Top (query, class) pairs as in `fad.modeling.detr.postprocess`, in export layout."""
        n, q, c = logits.shape
        k = min(self.detections_per_img, q * c)
        scores, flat = logits.sigmoid().reshape(n, q * c).topk(k, dim=1)
        query = torch.div(flat, c, rounding_mode="floor")
        xyxy = torch.gather(cxcywh_to_xyxy(boxes), 1, query[..., None].expand(-1, -1, 4))
        x1, y1, x2, y2 = xyxy.unbind(-1)
        pixels = torch.stack([x1 * width, y1 * height, x2 * width, y2 * height], -1)
        valid = torch.ones_like(scores, dtype=torch.bool)
        return pad_detections(pixels, scores, flat % c, valid, self.detections_per_img)


def build_detr_export(model: DeformableDETR, cfg: CfgNode, input_size: Sequence[int]
                      ) -> DeformableDETRExport:
    """The export module of a trained Deformable DETR or Sparse DETR."""
    if not isinstance(model, DeformableDETR):
        raise ExportError(f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE} expects a "
                          f"DeformableDETR model, got {type(model).__name__}")
    return DeformableDETRExport(model, cfg, input_size)
