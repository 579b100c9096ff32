"""Read image files into uint8 tensors, turning every failure into a one-line `DataError`."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fad.errors import DataError


@contextmanager
def _open(path: Path) -> Iterator[Image.Image]:
    try:
        with Image.open(path) as img:
            yield img
    except FileNotFoundError:
        raise DataError(f"{path}: image file is missing; add it or remove its "
                        "id/annotation") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: image file is corrupt or unreadable ({exc}); "
                        "replace the file") from None


def read_image(path: Path) -> torch.Tensor:
    """Decode `path` as RGB; returns uint8 [3, H, W]."""
    with _open(path) as img:
        rgb = np.asarray(img.convert("RGB")).copy()
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def read_image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    with _open(path) as img:
        width, height = img.size
    return height, width


def decode_image_size(path: Path) -> tuple[int, int]:
    """(height, width) after decoding every pixel, which finds the truncated or damaged files a
    header read misses (no RGB copy is made)."""
    with _open(path) as img:
        img.load()
        width, height = img.size
    return height, width


def check_image_size(path: Path, actual: tuple[int, int], annotated: tuple[int, int]) -> None:
    """A one-line `DataError` when the image's (height, width) differs from its annotation's."""
    if tuple(actual) != tuple(annotated):
        raise DataError(f"{path}: image is {actual[0]}x{actual[1]} (h x w) but its annotation "
                        f"says {annotated[0]}x{annotated[1]}; fix the annotation")
