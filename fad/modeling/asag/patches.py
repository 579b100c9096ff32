"""Patch placement of ASAG's adaptive probing: where the 15x15 patches of P4 / P3 go.

Patches are addressed by their top-left cell `(x, y)` (int64) on the probed level; a patch covers
cells `[x, x + size) x [y, y + size)`. Image sizes are the unpadded `(w, h)` in input pixels.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_convert, nms

PATCH_NMS_IOU = 0.25
"""IoU of the NMS that deduplicates patches (predicted and ground-truth ones)."""


def place_patches(corner: Tensor, image_wh: Tensor, stride: int, size: int) -> Tensor:
    """Wanted top-left corners [K, 2] (float cells, x y) -> placed corners [K, 2] int64.

    The corner is floored, shifted back so that the patch ends by ceil(image / stride), then
    clamped at 0 (so a patch larger than the image starts at 0). `image_wh` [K, 2] pixels.
    """
    corner = torch.floor(corner)
    end = torch.ceil(image_wh / stride)
    corner = corner + (end - (corner + size)).clamp(max=0)
    return corner.clamp(min=0).long()


def predicted_patches(boxes: Tensor, conf: Tensor, selected: Tensor, owner: Tensor,
                      image_wh: Tensor, stride: int, size: int,
                      max_per_image: int | None = None) -> tuple[Tensor, Tensor]:
    """Patches around the selected anchors of one level.

    `boxes` [M, K, 4] cxcywh pixels, `conf` [M, K], `selected` [M, K] bool, `owner` [M] image of
    each row, `image_wh` [B, 2]. A `stride * size` square around each selected centre; batched
    NMS (IoU 0.25, by confidence, per image); optionally the first `max_per_image` per image.
    Returns corners [P, 2] int64 (x, y) and images [P] int64, in NMS keep order (decreasing
    confidence over the batch).
    """
    owners = torch.repeat_interleave(owner, selected.sum(1))
    squares = boxes[selected].clone()
    squares[:, 2:] = stride * size
    squares = box_convert(squares, "cxcywh", "xyxy")
    keep = batched_nms(squares, conf[selected], owners, PATCH_NMS_IOU)
    if max_per_image is not None:
        kept = owners[keep]
        rank = torch.tril(kept[:, None] == kept[None, :]).sum(1) - 1  # earlier ones of its image
        keep = keep[rank < max_per_image]
    squares, owners = squares[keep], owners[keep]
    centre = (squares[:, :2] + squares[:, 2:]) / 2 / stride
    corners = place_patches(centre - size / 2, image_wh[owners], stride, size)
    return corners, owners


def ground_truth_patches(boxes: Tensor, image_wh: Tensor, stride: int, size: int) -> Tensor:
    """Jittered patches on the small ground-truth boxes of one image (training only).

    `boxes` [T, 4] normalised cxcywh, `image_wh` [2] pixels. Boxes with w and h below
    `stride * size / 2` are deduplicated by NMS (IoU 0.25) scored by minus the summed squared
    distances of their centre to the others' (central boxes first); each patch starts at its
    box's top-left cell, is shifted back to end inside the image, then moved up/left by a uniform
    random part of the room left beyond the box's bottom-right corner. Returns [K, 2] int64.
    """
    px = boxes * image_wh.repeat(2)
    small = (px[:, 2] < stride * size / 2) & (px[:, 3] < stride * size / 2)
    px = px[small]  # host sync: the small boxes (data-dependent count)
    scores = -(px[:, None, :2] - px[None, :, :2]).square().sum(-1).sum(-1)
    xyxy = box_convert(px, "cxcywh", "xyxy")
    cells = xyxy[nms(xyxy, scores, PATCH_NMS_IOU)] / stride  # host sync: NMS keeps a count
    corner = torch.floor(cells[:, :2])
    corner = corner + (torch.ceil(image_wh / stride) - (corner + size)).clamp(max=0)
    room = (corner + size - cells[:, 2:]).clamp(min=0)
    return torch.floor(corner - torch.rand_like(room) * room).clamp(min=0).long()


def random_patches(count: int, image_wh: Tensor, stride: int, size: int) -> Tensor:
    """`count` uniformly random corners [count, 2] int64 (x in [0, max(ceil(w/s) - size, 1))),
    drawn on `image_wh`'s device."""
    high = (torch.ceil(image_wh / stride) - size).clamp(min=1)
    return (torch.rand(count, 2, device=image_wh.device) * high).long()


def training_patches(corners: Tensor, owners: Tensor, targets: list[dict], image_wh: Tensor,
                     stride: int, size: int, from_ground_truth: bool, min_patches: int = 4
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """The patches a training step probes at one level, grouped by image.

    `corners` [P, 2] / `owners` [P]: the predicted patches (ignored when `from_ground_truth`, the
    first epochs, which use every ground-truth patch instead). Otherwise an image with fewer than
    `min_patches` predicted patches is topped up with random ground-truth patches, and any image
    still short with random patches, to exactly `min_patches`; top-ups only count for the loss.
    `targets[i]["boxes"]` [T_i, 4] normalised cxcywh. Returns corners [P', 2], owners [P'] and
    `loss_only` [P'] bool.
    """
    out_corners, out_owners, out_loss_only = [], [], []
    device = image_wh.device
    for i, tgt in enumerate(targets):
        gt = ground_truth_patches(tgt["boxes"].to(image_wh), image_wh[i], stride, size)
        if from_ground_truth:
            mine = gt
            loss_only = torch.zeros_like(gt[:, 0], dtype=torch.bool)
        else:
            mine = corners[owners == i]  # host sync: the patches of image i (adaptive count)
            loss_only = torch.zeros_like(mine[:, 0], dtype=torch.bool)
            if len(gt) and len(mine) < min_patches:  # host sync: top-up by the patch counts
                pick = torch.randperm(len(gt), device=device)[:min_patches - len(mine)]
                mine = torch.cat([mine, gt[pick]])
                loss_only = torch.cat([loss_only, torch.ones_like(pick, dtype=torch.bool)])
        if len(mine) < min_patches:  # host sync: top-up by the patch count
            extra = random_patches(min_patches - len(mine), image_wh[i], stride, size)
            mine = torch.cat([mine, extra])
            loss_only = torch.cat([loss_only, torch.ones_like(extra[:, 0], dtype=torch.bool)])
        out_corners.append(mine)
        out_owners.append(torch.full_like(mine[:, 0], i))
        out_loss_only.append(loss_only)
    return torch.cat(out_corners), torch.cat(out_owners), torch.cat(out_loss_only)


def crop_patches(feature: Tensor, corners: Tensor, owners: Tensor, size: int) -> Tensor:
    """Cut `size x size` patches out of a compressed level.

    `feature` [B, C, H, W]; `corners` [P, 2] int64 (x, y); `owners` [P]. Cells past the map
    (a patch of an image smaller than `size` cells) read zeros. Returns [P, size * size, C],
    position-major ((y * size + x), then channel). Every placement (`place_patches`,
    `ground_truth_patches`, `random_patches`) keeps a corner within the map (x <= W, y <= H),
    so a margin of `size` cells (zeros) holds every patch, without reading the corners back.
    """
    num, channels = len(corners), feature.shape[1]
    feature = torch.nn.functional.pad(feature, (0, size, 0, size))
    offsets = torch.arange(size, device=corners.device)
    ys = (corners[:, 1, None] + offsets)[:, :, None]
    xs = (corners[:, 0, None] + offsets)[:, None, :]
    cells = feature.permute(0, 2, 3, 1)[owners[:, None, None], ys, xs]
    return cells.reshape(num, size * size, channels)
