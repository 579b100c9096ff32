"""ASAG's adaptive sparse anchor generator: a variable number of anchors per image from P3-P5.

Coarse stage on P5 (four quadrant patches + a whole-image "P6" patch), then adaptive probing top
down (P4, then P3): uncertain small anchors open 15x15 patches whose finer predictions replace
them. Patch placement lives in `patches.py`, the losses on `SparseAnchors.records` in
`anchor_loss.py`; docs/asag.md lists the reference's numbers and quirks this follows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert

from fad.errors import ConfigError
from fad.modeling.set_prediction import values_like

from .patches import crop_patches, predicted_patches, training_patches

QUERY_SETTINGS: dict[int, tuple[int, int, float, int, int]] = {
    100: (50, 20, 0.1, 5, 200),
    300: (150, 50, 0.05, 50, 500),
}
"""Queries setting -> (anchors per coarse patch N1, per probed patch N2, emit threshold,
minimum coarse anchors per image, maximum anchors per image)."""

INFERENCE_LEVELS = {"P3P6": 3, "P4P6": 2, "P5P6": 1}
"""`used_inference_level` -> number of pyramid stages (coarse, P4, P3) that run."""

PROBES = (("P4", 1, 16), ("P3", 0, 8))
"""Probed levels top down: (name, index into the P3-P5 feature list, stride)."""

QUADRANTS = ((0, 0), (0, 1), (1, 0), (1, 1))
"""(row, col) of the P5 quadrant patches in the 2x2 split: TL, TR, BL, BR."""

PATCH = 15
"""Patch side in cells (the coarse 30x30 grid is cut in 15x15 quadrants; P6 is 15x15)."""
COARSE_GRID = 30
SELECT_LOW, SELECT_HIGH = 0.1, 0.7
"""An anchor is probed finer when SELECT_LOW < conf < SELECT_HIGH and w, h < stride * 15 / 2."""
MIN_SIZE = 3.0
"""Anchors narrower or lower than this many pixels get confidence 0."""


@dataclass
class PatchRecord:
    """One probed level's predictions, for the anchor loss.

    preds [P, N2, 5]: (cx, cy, w, h) after sigmoid in patch units + the raw confidence logit;
    corners [P, 2] int64 top-left cell (x, y) on the level; owners [P] int64 image index;
    loss_only [P] bool: top-up patches (training) whose anchors are never emitted.
    """
    stride: int
    preds: Tensor
    corners: Tensor
    owners: Tensor
    loss_only: Tensor


@dataclass
class AnchorRecords:
    """Everything `AnchorLoss` needs from a forward.

    p6 [B, F, N1, 5]: whole-image patch, F = 4 in training (as is, h-flip, v-flip, both), else 1;
    p5 [B, 4, N1, 5]: quadrants TL, TR, BL, BR; both (cx, cy, w, h) after sigmoid in units of
    their patch + raw confidence logit. patches: probed levels, P4 first. image_wh [B, 2] pixels.
    """
    p6: Tensor
    p5: Tensor
    patches: list[PatchRecord]
    image_wh: Tensor
    patch_size: int = PATCH


@dataclass
class SparseAnchors:
    """Anchors of a batch, padded to Q = the largest count in the batch.

    boxes [B, Q, 4] xyxy input-image pixels (padding: the whole image); scores [B, Q] confidence
    in [0, 1] (0 for padding and for anchors zeroed as too small / outside); valid [B, Q] bool
    (True = a real anchor; the first `valid[i].sum()` of each row); records: loss inputs (None
    from the fast path).
    """
    boxes: Tensor
    scores: Tensor
    valid: Tensor
    records: AnchorRecords | None


class _Anchors(NamedTuple):
    """Anchors of one stage: boxes [M, K, 4] cxcywh pixels, conf [M, K], owner [M] image;
    `coarse`: rows are images (M = B) and the minimum-anchors rule applies."""
    boxes: Tensor
    conf: Tensor
    owner: Tensor
    coarse: bool


class _Compressed:
    """Compressed P3-P5 maps [B, C, H_l, W_l], computed on first use (or all at once)."""

    def __init__(self, layers: nn.ModuleList, features: list[Tensor], lazy: bool):
        self._layers, self._features, self._maps = layers, features, {}
        if not lazy:
            for index in range(len(features)):
                self.get(index)

    def get(self, index: int) -> Tensor:
        """The compressed map of level `index` (0 = P3)."""
        if index not in self._maps:
            self._maps[index] = self._layers[index](self._features[index])
        return self._maps[index]


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """in -> hidden -> hidden -> out, GELU between."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(),
                         nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                         nn.Linear(hidden_dim, out_dim))


def _with_box_sigmoid(out: Tensor) -> Tensor:
    """[..., 5] raw -> sigmoid on (cx, cy, w, h), confidence logit kept."""
    return torch.cat([out[..., :4].sigmoid(), out[..., 4:]], -1)


class AdaptiveAnchorGenerator(nn.Module):
    """Adaptive sparse anchors from FPN levels P3-P5 (see the module docstring).

    Args:
        in_channels: FPN channels (256).
        num_queries: 100 or 300, the setting that picks N1/N2, the emit threshold and the
            min/max anchors per image (`QUERY_SETTINGS`).
        used_inference_level: "P3P6" (probe P4 and P3), "P4P6" (P4 only), "P5P6" (coarse only);
            the early stop also applies in training, as in the reference.
        compress_dim, hidden_dim: compressed channels (8) and MLP width (1000).
        use_target_epoch: epochs (from 0) that probe ground-truth patches instead of predicted.
        max_patches_per_level: cap on patches per image and level (None; the reference's
            CrowdHuman setting is 60).
        min_anchors, max_anchors: override the setting's 5/200 or 50/500 (CrowdHuman 50/600).
    """

    def __init__(self, in_channels: int = 256, num_queries: int = 100,
                 used_inference_level: str = "P3P6", compress_dim: int = 8,
                 hidden_dim: int = 1000, use_target_epoch: int = 1,
                 max_patches_per_level: int | None = None, min_anchors: int | None = None,
                 max_anchors: int | None = None):
        super().__init__()
        if num_queries not in QUERY_SETTINGS:
            raise ValueError(f"AdaptiveAnchorGenerator: num_queries must be one of "
                             f"{', '.join(map(str, QUERY_SETTINGS))}, got {num_queries}")
        if used_inference_level not in INFERENCE_LEVELS:
            raise ValueError("AdaptiveAnchorGenerator: used_inference_level must be one of "
                             f"{', '.join(INFERENCE_LEVELS)}, got {used_inference_level!r}")
        n1, n2, self.emit_threshold, default_min, default_max = QUERY_SETTINGS[num_queries]
        self.num_coarse, self.num_patch = n1, n2
        self.min_anchors = default_min if min_anchors is None else min_anchors
        self.max_anchors = default_max if max_anchors is None else max_anchors
        self.num_probes = INFERENCE_LEVELS[used_inference_level] - 1
        self.use_target_epoch = use_target_epoch
        self.max_patches_per_level = max_patches_per_level
        self.compress = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, in_channels // 2, 1), nn.GELU(),
                          nn.Conv2d(in_channels // 2, compress_dim, 3, padding=1))
            for _ in range(3))
        self.p6 = nn.Conv2d(compress_dim, compress_dim, 3, stride=2, padding=2, dilation=2)
        tokens = PATCH * PATCH
        self.coarse_norm = nn.LayerNorm((tokens, compress_dim))
        self.coarse_pos = nn.Parameter(torch.zeros(tokens, compress_dim))
        self.patch_norms = nn.ModuleDict({name: nn.LayerNorm((tokens, compress_dim))
                                          for name, _, _ in PROBES})
        self.patch_pos = nn.ParameterDict({name: nn.Parameter(torch.zeros(tokens, compress_dim))
                                           for name, _, _ in PROBES})
        self.coarse_mlp = _mlp(tokens * compress_dim, hidden_dim, 5 * n1)
        self.patch_mlp = _mlp(tokens * compress_dim, hidden_dim, 5 * n2)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Xavier-uniform on every parameter with > 1 dimension (including the (225, C)
        LayerNorm weights and biases), then zero positional embeddings."""
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        nn.init.zeros_(self.coarse_pos)
        for param in self.patch_pos.values():
            nn.init.zeros_(param)

    def forward(self, features: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict] | None = None, epoch: int = -1,
                fast_inference: bool = False) -> SparseAnchors:
        """Anchors of a batch.

        Args:
            features: P3, P4, P5 [B, in_channels, H_l, W_l] (fp32), padded batch.
            image_sizes: unpadded (h, w) of each image in input pixels.
            targets: training only; `boxes` [T_i, 4] cxcywh normalised by the unpadded size.
            epoch: training epoch from 0 (epochs < use_target_epoch probe ground truth).
            fast_inference: batch-1 inference computing only the compressed levels it probes
                and no loss records; returns the same anchors, in the same order, as the
                regular forward.
        """
        self._check_inputs(features, image_sizes, targets, epoch, fast_inference)
        levels = _Compressed(self.compress, features, lazy=fast_inference)
        sizes_wh = [v for h, w in image_sizes for v in (w, h)]
        image_wh = values_like(sizes_wh, features[0]).view(-1, 2)
        coarse = self._coarse_predictions(levels.get(2), image_sizes)
        current = self._coarse_anchors(coarse[:, :5].detach(), image_wh)
        from_gt = self.training and epoch < self.use_target_epoch
        emitted: list[list[tuple[Tensor, Tensor]]] = [[] for _ in image_sizes]
        records = []
        for name, index, stride in PROBES[:self.num_probes]:
            selected = ((current.conf < SELECT_HIGH) & (current.conf > SELECT_LOW)
                        & (current.boxes[..., 3] < stride * PATCH / 2)
                        & (current.boxes[..., 2] < stride * PATCH / 2))
            if not self.training and not selected.any():  # host sync: no patch left to probe
                break
            keep = current.conf > self.emit_threshold
            self._emit(emitted, current, keep if from_gt else keep & ~selected)
            corners, owners, loss_only = self._patches(current, selected, image_wh, stride,
                                                       targets, from_gt)
            tokens = crop_patches(levels.get(index), corners, owners, PATCH)
            tokens = self.patch_norms[name](tokens) + self.patch_pos[name]
            preds = _with_box_sigmoid(self.patch_mlp(tokens.flatten(1)).unflatten(
                -1, (self.num_patch, 5)))
            records.append(PatchRecord(stride, preds, corners, owners, loss_only))
            real = (~loss_only).nonzero()[:, 0]  # host sync: patches that are not loss-only
            current = self._patch_anchors(preds[real].detach(), corners[real], owners[real],
                                          image_wh, stride)
        self._emit(emitted, current, current.conf > self.emit_threshold)
        boxes, scores, valid = self._pad(emitted, image_wh)
        loss_records = None if fast_inference else AnchorRecords(
            p6=coarse[:, 4:], p5=coarse[:, :4], patches=records, image_wh=image_wh)
        return SparseAnchors(boxes, scores, valid, loss_records)

    def _check_inputs(self, features: list[Tensor], image_sizes: list[tuple[int, int]],
                      targets: list[dict] | None, epoch: int, fast_inference: bool) -> None:
        if len(features) != 3 or any(len(f) != len(image_sizes) for f in features):
            raise ValueError("AdaptiveAnchorGenerator needs P3, P4, P5 maps [B, C, H, W] and one "
                             f"(h, w) per image; got {len(features)} maps, "
                             f"{len(image_sizes)} sizes")
        if self.training and (targets is None or epoch < 0):
            raise ValueError("AdaptiveAnchorGenerator: training needs targets and the epoch "
                             "(>= 0); call eval() for inference")
        if fast_inference and (self.training or len(image_sizes) != 1):
            raise ConfigError("MODEL.ASAG.FAST_INFERENCE works at inference with one image per "
                              "batch; set TEST.IMS_PER_BATCH 1 or MODEL.ASAG.FAST_INFERENCE False")

    def _coarse_predictions(self, p5: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
        """Compressed P5 [B, C, H, W] -> [B, 4 + F, N1, 5] for TL, TR, BL, BR, then P6 (and its
        h-, v- and hv-flips in training). The unpadded region (at least one cell) is resized to
        30x30; P6 = 3x3 conv, stride 2, dilation 2 on its ReLU."""
        grid = torch.cat([
            F.interpolate(p5[i:i + 1, :, :max(round(h / 32), 1), :max(round(w / 32), 1)],
                          size=(COARSE_GRID, COARSE_GRID), mode="bilinear", align_corners=False)
            for i, (h, w) in enumerate(image_sizes)])
        views = [grid[:, :, r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH]
                 for r, c in QUADRANTS]
        p6 = self.p6(F.relu(grid))
        views.append(p6)
        if self.training:
            views += [p6.flip(-1), p6.flip(-2), p6.flip(-1).flip(-2)]
        tokens = torch.stack(views, 1).flatten(3).transpose(2, 3)  # [B, V, 225, C]
        tokens = self.coarse_norm(tokens) + self.coarse_pos
        out = self.coarse_mlp(tokens.flatten(2)).unflatten(-1, (self.num_coarse, 5))
        return _with_box_sigmoid(out)

    def _coarse_anchors(self, preds: Tensor, image_wh: Tensor) -> _Anchors:
        """[B, 5, N1, 5] (quadrants + P6) -> 5 * N1 anchors per image in (patch, index) order."""
        scale = values_like([0.5, 0.5, 0.5, 0.5, 1.0], preds)[None, :, None, None]
        offset = values_like([v for r, c in QUADRANTS for v in (c / 2, r / 2)] + [0.0, 0.0],
                             preds).view(-1, 2)
        boxes = preds[..., :4] * scale
        boxes = torch.cat([boxes[..., :2] + offset[None, :, None], boxes[..., 2:]], -1)
        boxes = boxes.flatten(1, 2) * image_wh.repeat(1, 2)[:, None]
        conf = preds[..., 4].sigmoid().flatten(1)
        tiny = (boxes[..., 2] < MIN_SIZE) | (boxes[..., 3] < MIN_SIZE)
        owner = torch.arange(len(preds), device=preds.device)
        return _Anchors(boxes, conf.masked_fill(tiny, 0.0), owner, coarse=True)

    def _patch_anchors(self, preds: Tensor, corners: Tensor, owners: Tensor, image_wh: Tensor,
                       stride: int) -> _Anchors:
        """[P, N2, 5] patch predictions -> anchors in pixels; confidence 0 when the centre is
        past the right/bottom image edge or the box is smaller than 3 px."""
        boxes = preds[..., :4] * (PATCH * stride)
        boxes = torch.cat([boxes[..., :2] + corners[:, None].to(boxes) * stride,
                           boxes[..., 2:]], -1)
        size = image_wh[owners][:, None]
        drop = ((boxes[..., 0] >= size[..., 0]) | (boxes[..., 1] >= size[..., 1])
                | (boxes[..., 2] < MIN_SIZE) | (boxes[..., 3] < MIN_SIZE))
        return _Anchors(boxes, preds[..., 4].sigmoid().masked_fill(drop, 0.0), owners,
                        coarse=False)

    @torch.no_grad()
    def _patches(self, current: _Anchors, selected: Tensor, image_wh: Tensor, stride: int,
                 targets: list[dict] | None, from_gt: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Corners [P, 2], owners [P] and loss_only [P] of the patches probed at `stride`."""
        if from_gt:
            corners = image_wh.new_zeros((0, 2), dtype=torch.int64)
            owners = corners.new_zeros((0,))
        else:
            corners, owners = predicted_patches(current.boxes, current.conf, selected,
                                                current.owner, image_wh, stride, PATCH,
                                                self.max_patches_per_level)
        if self.training:
            return training_patches(corners, owners, targets, image_wh, stride, PATCH, from_gt)
        return corners, owners, torch.zeros(len(corners), dtype=torch.bool,
                                            device=corners.device)

    def _emit(self, emitted: list[list[tuple[Tensor, Tensor]]], current: _Anchors,
              keep: Tensor) -> None:
        """Append each image's kept anchors (boxes [k, 4], conf [k]) in stage order. Coarse
        stage: when fewer than `min_anchors` are kept, the most confident `min_anchors` of all
        its anchors instead (ties in index order)."""
        for i, out in enumerate(emitted):
            if current.coarse:
                index = keep[i].nonzero().squeeze(1)  # host sync: adaptive anchor count
                if len(index) < self.min_anchors:  # host sync: adaptive anchor count
                    index = current.conf[i].sort(descending=True, stable=True).indices
                    index = index[:self.min_anchors]
                out.append((current.boxes[i, index], current.conf[i, index]))
            else:
                mine = keep & (current.owner == i)[:, None]
                index = mine.nonzero(as_tuple=True)  # host sync: adaptive anchor count
                out.append((current.boxes[index], current.conf[index]))

    def _pad(self, emitted: list[list[tuple[Tensor, Tensor]]], image_wh: Tensor
             ) -> tuple[Tensor, Tensor, Tensor]:
        """Concatenate each image's anchors, keep the `max_anchors` most confident (sorted by
        confidence, ties in order), pad to the batch maximum with whole-image boxes."""
        per_image = []
        for parts in emitted:
            boxes = torch.cat([b for b, _ in parts])
            conf = torch.cat([c for _, c in parts])
            if len(conf) > self.max_anchors:  # host sync: adaptive anchor count
                index = conf.sort(descending=True, stable=True).indices[:self.max_anchors]
                boxes, conf = boxes[index], conf[index]
            per_image.append((box_convert(boxes, "cxcywh", "xyxy"), conf))
        length = max(len(c) for _, c in per_image)
        batch = len(per_image)
        boxes = image_wh.new_zeros((batch, length, 4))
        boxes[..., 2:] = image_wh[:, None]
        scores = image_wh.new_zeros((batch, length))
        valid = torch.zeros((batch, length), dtype=torch.bool, device=image_wh.device)
        for i, (b, c) in enumerate(per_image):
            boxes[i, :len(c)], scores[i, :len(c)], valid[i, :len(c)] = b, c, True
        return boxes, scores, valid
