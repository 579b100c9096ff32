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
