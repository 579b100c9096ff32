"""The random detection batch the training-step benchmarks time on."""
from __future__ import annotations

import torch


def random_detection_batch(size: tuple[int, int], batch: int, classes: int,
                           device: torch.device | str = "cpu", seed: int = 0,
                           boxes: int = 4) -> tuple[list[torch.Tensor], list[dict]]:
    """`batch` images Tensor[3, H, W] in [0, 1) with `boxes` boxes each (Tensor[boxes, 4] xyxy,
    sides 16 px to 0.4 of the image + 16 px, from the top-left 0.6 of it) and 0-based labels <
    `classes`, drawn from `seed`."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    images = [torch.rand(3, h, w, generator=g).to(device) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(boxes, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 16 + torch.rand(boxes, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4])
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                        "labels": torch.randint(0, classes, (boxes,), generator=g).to(device)})
    return images, targets
