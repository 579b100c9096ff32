"""Read image files into uint8 RGB tensors, turning every failure into a one-line `DataError`.

The pixel rules (docs/data.md, "Bad data"): every mode becomes 8-bit RGB (grayscale replicated,
alpha dropped, palette expanded, CMYK by PIL's formula without a colour profile, 16-bit scaled
by 255/65535 and rounded); 32-bit float images are refused. The EXIF orientation tag is not
applied: COCO and VOC boxes are in the stored pixel order (their tools never rotate), so the
pixels are used as stored; the image check counts the images carrying such a tag.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fad.errors import DataError

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # PIL's modes of 16-bit grayscale files
# What the reading does to a file of each PIL mode (for the check's counts); RGB: nothing.
CONVERSIONS = {"1": "grayscale", "L": "grayscale", "LA": "grayscale", "P": "palette",
               "PA": "palette", "RGBA": "RGBA", "RGBX": "RGBA", "CMYK": "CMYK",
               **{m: "16-bit" for m in SIXTEEN_BIT}}
EXIF_ORIENTATION = 0x0112

@contextmanager
def _open(path: Path) -> Iterator[Image.Image]:
    try:
        with Image.open(path) as img:
            yield img
    except DataError:  # a rule's refusal inside the block: already one line
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: image file is missing; add it or remove its "
                        "id/annotation") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: image file is corrupt or unreadable ({exc}); "
                        "replace the file") from None


def _rgb(img: Image.Image, path: Path) -> np.ndarray:
    """uint8 [H, W, 3] by the pixel rules of the module docstring."""
    if img.mode == "F":
        raise DataError(f"{path}: 32-bit float image; save it as 8-bit RGB (or 16-bit "
                        "grayscale) PNG or JPEG")
    if img.mode in SIXTEEN_BIT:
        wide = np.asarray(img).astype(np.int64)
        gray = ((wide.clip(0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB")).copy()


def read_image(path: Path) -> torch.Tensor:
    """Decode `path` as 8-bit RGB (the pixel rules above); returns uint8 [3, H, W]."""
    with _open(path) as img:
        rgb = _rgb(img, path)
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class ImageInfo:
    """What the image check learns from decoding a file: its size, the conversion reading it
    makes (a CONVERSIONS value, None for 8-bit RGB) and whether it has an EXIF orientation
    other than 1 (not applied)."""

    height: int
    width: int
    conversion: str | None = None
    exif_orientation: bool = False


def decode_image_info(path: Path) -> ImageInfo:
    """Decode every pixel of `path` (finds truncated or damaged files a header read misses);
    its `ImageInfo`. A 32-bit float image is a `DataError`."""
    with _open(path) as img:
        img.load()
        if img.mode == "F":
            _rgb(img, path)
        width, height = img.size
        orientation = img.getexif().get(EXIF_ORIENTATION)
        return ImageInfo(height, width, CONVERSIONS.get(img.mode),
                         orientation not in (None, 1))


def read_image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    with _open(path) as img:
        width, height = img.size
    return height, width


def check_image_size(path: Path, actual: tuple[int, int], annotated: tuple[int, int]) -> None:
    """A one-line `DataError` when the image's (height, width) differs from its annotation's."""
    if tuple(actual) != tuple(annotated):
        raise DataError(f"{path}: image is {actual[0]}x{actual[1]} (h x w) but its annotation "
                        f"says {annotated[0]}x{annotated[1]}; fix the annotation")
