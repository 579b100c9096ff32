"""Clip annotated boxes to their image and drop the ones with no area."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BoxFixes:
    """How many boxes of a dataset were clipped to the image or dropped as degenerate."""

    clipped: int = 0
    dropped: int = 0

    def message(self, name: str) -> str | None:
        """One warning line for dataset `name`, or None when nothing was fixed."""
        if not (self.clipped or self.dropped):
            return None
        return (f"{name}: clipped {self.clipped} box(es) to the image and dropped {self.dropped} "
                "degenerate or out-of-image box(es); check the annotations")


def sanitize_boxes(boxes: torch.Tensor, height: int, width: int,
                   fixes: BoxFixes) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip xyxy `boxes` [K, 4] to the image; returns (clipped boxes [K, 4], keep mask [K]).

    Boxes left with no area are marked False in the mask; `fixes` counts both kinds of change
    (a dropped box is counted only as dropped).
    """
    clipped = boxes.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, height)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    changed = (clipped != boxes).any(dim=1)
    fixes.clipped += int((changed & keep).sum())
    fixes.dropped += int((~keep).sum())
    return clipped, keep
