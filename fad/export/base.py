"""The export contract every detector's export module meets, and the helpers they share.

An export module wraps a trained detector (eval mode) into one graph with pre- and
post-processing inside, so that a runtime needs nothing of ours:

    module = build_export_module(model, cfg, (H, W))      # nn.Module
    boxes, scores, labels, num_detections = module(images)

- `images`: float32 [N, 3, H, W], RGB, 0-255, already resized to the input size. The module
  divides by 255, normalises by INPUT.PIXEL_MEAN / PIXEL_STD and zero-pads (after normalising,
  as `fad.modeling.image_batch.batch_images`) to a multiple of INPUT.SIZE_DIVISIBILITY.
- `boxes`: float32 [N, K, 4] (x1, y1, x2, y2 in the input's pixels), `scores`: float32 [N, K],
  `labels`: int64 [N, K] (0-based class index), `num_detections`: int64 [N]. K is the
  detector's DETECTIONS_PER_IMG; rows are best score first and rows past `num_detections` are
  zero. `pad_detections` produces this layout and ends every detector's post-processing.
- Static shapes only inside: no data-dependent sizes (`nonzero`, boolean indexing); score
  thresholds are masks, top-k sizes are fixed. The detections equal the eager model's
  (`model([img / 255 for img in images])`) within float tolerance.

Builders are registered by MODEL.META_ARCHITECTURE in `EXPORTERS` (fad/export/__init__.py);
a builder is `build(model, cfg, input_size) -> ExportModule`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode

from fad.errors import FadError


class ExportError(FadError):
    """A detector, format or input size that cannot be exported (one line: what and why)."""


def normalize_and_pad(images: Tensor, mean: Tensor, std: Tensor, size_divisible: int) -> Tensor:
    """`images` [N, 3, H, W] float RGB 0-255 -> normalised [N, 3, H', W'], zero-padded at the
    bottom/right to the next multiple of `size_divisible` (`mean`, `std`: [3], of [0, 1] images)."""
    x = (images / 255.0 - mean[None, :, None, None]) / std[None, :, None, None]
    pad_h = (-images.shape[-2]) % size_divisible
    pad_w = (-images.shape[-1]) % size_divisible
    return F.pad(x, (0, pad_w, 0, pad_h))  # also with symbolic sizes (a dynamic graph)


def topk_padded(scores: Tensor, k: int, fill: float = -1.0) -> tuple[Tensor, Tensor]:
    """Top `k` of `scores` [N, M] along dim 1 for any M (also M < k, or M symbolic): the scores
    are extended by `k` entries of `fill` first. Returns (values [N, k], indices [N, k]); an
    index >= M marks a padding entry (its value is `fill`). Valid scores must be above `fill`
    (the default -1 suits probabilities; -inf suits logits)."""
    pad = scores.new_full((scores.shape[0], k), fill)
    return torch.cat([scores, pad], 1).topk(k, dim=1)


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """`x` [N, M, ...] gathered at `index` [N, K] (clamped into [0, M)) -> [N, K, ...]."""
    index = index.clamp(max=x.shape[1] - 1)
    shape = index.shape + (1,) * (x.dim() - 2)
    return x.gather(1, index.reshape(shape).expand(index.shape + x.shape[2:]))


def pad_detections(boxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor, k: int
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The `k` best valid detections per image, in the export output layout.

    `boxes` [N, M, 4], `scores` [N, M] (>= 0 where valid), `labels` [N, M] int, `valid` [N, M]
    bool. Returns boxes [N, k, 4] float32, scores [N, k] float32, labels [N, k] int64 (best
    score first, rows past the valid count zero) and num_detections [N] int64.
    """
    top, index = topk_padded(torch.where(valid, scores, -1.0), k)
    keep = gather_rows(valid, index) & (index < scores.shape[1])
    out_boxes = torch.where(keep[..., None], gather_rows(boxes, index), 0.0).float()
    out_scores = torch.where(keep, top, 0.0).float()
    out_labels = torch.where(keep, gather_rows(labels, index), 0).long()
    return out_boxes, out_scores, out_labels, keep.long().sum(1)


class ExportModule(nn.Module):
    """Base of the export modules: holds the input normalisation of the config.

    Subclasses implement `forward(images [N, 3, H, W] 0-255) -> (boxes, scores, labels,
    num_detections)` (module docstring) and call `self.preprocess(images)` first.
    """

    def __init__(self, cfg: CfgNode, input_size: Sequence[int], detections_per_img: int):
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.size_divisible = int(cfg.INPUT.SIZE_DIVISIBILITY)
        self.detections_per_img = int(detections_per_img)
        self.register_buffer("pixel_mean", torch.tensor(cfg.INPUT.PIXEL_MEAN, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.INPUT.PIXEL_STD, dtype=torch.float32),
                             persistent=False)

    def preprocess(self, images: Tensor) -> Tensor:
        """[N, 3, H, W] 0-255 -> normalised and padded [N, 3, H', W'] (`normalize_and_pad`)."""
        return normalize_and_pad(images, self.pixel_mean, self.pixel_std, self.size_divisible)
