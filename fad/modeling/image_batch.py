"""Normalise a list of images and pad them into one batch tensor."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def padded_canvas(size: Sequence[int], size_divisible: int) -> tuple[int, int]:
    """(H, W) of `size` rounded up to multiples of `size_divisible` (taken as >= 1): the canvas
    `batch_images` pads images of at most that size to."""
    d = max(int(size_divisible), 1)
    h, w = (-(-int(s) // d) * d for s in size)
    return h, w


def batch_images(images: list[Tensor], mean: Tensor, std: Tensor, size_divisible: int
                 ) -> tuple[Tensor, list[tuple[int, int]], Tensor]:
    """`images`: list of [3, H_i, W_i] float in [0, 1].

    Returns the normalised batch [N, 3, H, W] zero-padded at the bottom/right to a multiple of
    `size_divisible`, the original (H_i, W_i) sizes, and the padding mask [N, H, W] (True = pad).
    """
    if not images:
        raise ValueError("batch_images needs at least one image")
    for img in images:
        if img.dim() != 3 or img.shape[0] != 3 or not img.is_floating_point():
            raise ValueError(f"images must be float [3, H, W] tensors, got {tuple(img.shape)} "
                             f"{img.dtype}")
    sizes = [(int(img.shape[1]), int(img.shape[2])) for img in images]
    h, w = padded_canvas((max(s[0] for s in sizes), max(s[1] for s in sizes)), size_divisible)
    batch = images[0].new_zeros((len(images), 3, h, w))
    mask = torch.ones((len(images), h, w), dtype=torch.bool, device=images[0].device)
    mean = mean.to(images[0])[:, None, None]
    std = std.to(images[0])[:, None, None]
    for i, img in enumerate(images):
        batch[i, :, : img.shape[1], : img.shape[2]] = (img - mean) / std
        mask[i, : img.shape[1], : img.shape[2]] = False
    return batch, sizes, mask
