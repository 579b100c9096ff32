"""Clip annotated boxes to their image and drop the ones with no area, counting each kind
(the rules of docs/data.md, "Bad data")."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BoxFixes:
    """What the box rules changed in one dataset: boxes clipped to the image, and boxes dropped
    because reversed (xmax < xmin or ymax < ymin), of zero area (xmax == xmin or ymax == ymin)
    or wholly outside the image; with the number of images each touched."""

    clipped: int = 0
    clipped_images: int = 0
    reversed: int = 0
    zero_area: int = 0
    outside: int = 0
    dropped_images: int = 0

    @property
    def dropped(self) -> int:
        """Boxes dropped, all reasons."""
        return self.reversed + self.zero_area + self.outside

    def message(self, name: str) -> str | None:
        """One warning line for dataset `name`, or None when nothing was fixed."""
        if not (self.clipped or self.dropped):
            return None
        parts = []
        if self.clipped:
            parts.append(f"clipped {self.clipped} box(es) to the image in {self.clipped_images} "
                         "image(s)")
        if self.dropped:
            why = [f"{n} {what}" for n, what in ((self.reversed, "reversed"),
                                                 (self.zero_area, "of zero area"),
                                                 (self.outside, "wholly outside the image")) if n]
            parts.append(f"dropped {self.dropped} box(es) in {self.dropped_images} image(s) "
                         f"({', '.join(why)})")
        return f"{name}: {'; '.join(parts)}; check the annotations"


def sanitize_boxes(boxes: torch.Tensor, height: int, width: int,
                   fixes: BoxFixes) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip xyxy `boxes` [K, 4] of one image to it; returns (clipped boxes [K, 4], keep [K]).

    Dropped (keep False), counted by reason in `fixes`: reversed boxes (not swapped: the corners
    may be a typo), boxes of zero area, boxes with no area left inside the image. A kept box
    that changed is counted as clipped.
    """
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    reversed_ = (w < 0) | (h < 0)
    zero = ~reversed_ & ((w == 0) | (h == 0))
    clipped = boxes.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, height)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    outside = ~keep & ~reversed_ & ~zero
    changed = (clipped != boxes).any(dim=1) & keep
    fixes.reversed += int(reversed_.sum())
    fixes.zero_area += int(zero.sum())
    fixes.outside += int(outside.sum())
    fixes.clipped += int(changed.sum())
    fixes.clipped_images += int(bool(changed.any()))
    fixes.dropped_images += int(bool((~keep).any()))
    return clipped, keep
