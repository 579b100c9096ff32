"""Read image files into uint8 tensors, turning every failure into a one-line `DataError`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DataError


def read_image(path: Path) -> torch.Tensor:
    """Decode `path` as RGB; returns uint8 [3, H, W]."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file is missing; add it or remove its id/annotation") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: image file is corrupt or unreadable ({exc}); replace the file") from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


def read_image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except FileNotFoundError:
        raise DataError(f"{path}: image file is missing; add it or remove its id/annotation") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: image file is corrupt or unreadable ({exc}); replace the file") from None
    return height, width
