"""Transforms keep boxes on the pixels they annotate; sizes follow the config; seeds fix them."""
from __future__ import annotations

import os

import pytest
import torch
from conftest import REPO

from fad.config import get_cfg_defaults, load_config
from fad.data.transforms import (
    DetectionTransforms,
    RandomHorizontalFlip,
    RandomResizeThenCrop,
    ResizeShortSide,
    build_transforms,
)

ONE_LABEL = torch.tensor([2])
NO_LABELS = torch.zeros(0, dtype=torch.int64)


def painted(height: int, width: int, boxes: list[list[int]]) -> torch.Tensor:
    """Black uint8 image [3, H, W] with each integer box filled white."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    for x0, y0, x1, y1 in boxes:
        image[:, y0:y1, x0:x1] = 255
    return image


def bright_box(image: torch.Tensor) -> list[float]:
    """xyxy extent of the pixels brighter than half."""
    ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_boxes_stay_on_their_pixels_after_resize_and_flip(flip):
    transform = DetectionTransforms([ResizeShortSide([48], 1000), RandomHorizontalFlip(flip)])
    source = torch.tensor([[10.0, 4.0, 30.0, 20.0]])
    image, boxes, _ = transform(painted(24, 60, [[10, 4, 30, 20]]), source, ONE_LABEL)
    assert image.shape == (3, 48, 120) and boxes.dtype == torch.float32
    expected = torch.tensor([[20.0, 8.0, 60.0, 40.0]])
    if flip:
        expected = torch.tensor([[120.0 - 60.0, 8.0, 120.0 - 20.0, 40.0]])
    assert torch.allclose(boxes, expected)
    assert bright_box(image) == pytest.approx(boxes[0].tolist(), abs=1)


def test_flip_mirrors_pixels_exactly():
    raw = torch.randint(0, 256, (3, 10, 16), dtype=torch.uint8)
    flip = DetectionTransforms([RandomHorizontalFlip(1.0)])
    image, boxes, _ = flip(raw, torch.tensor([[0.0, 1.0, 4.0, 9.0]]), ONE_LABEL)
    assert torch.allclose(image, raw.flip(-1).float() / 255, atol=1e-6, rtol=0)
    assert boxes.tolist() == [[12.0, 1.0, 16.0, 9.0]]


def test_long_side_cap_and_float_output_in_unit_range():
    resize = DetectionTransforms([ResizeShortSide([100], 150)])
    box = [[0, 0, 200, 50]]
    image, boxes, _ = resize(painted(50, 200, box), torch.tensor(box, dtype=torch.float32),
                             ONE_LABEL)
    assert image.shape == (3, 38, 150) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() == 1.0
    assert torch.allclose(boxes, torch.tensor([[0.0, 0.0, 150.0, 38.0]]), atol=0.1)


def test_empty_boxes_pass_through():
    transform = build_transforms(get_cfg_defaults(), is_train=True)
    image, boxes, labels = transform(painted(30, 40, []), torch.zeros(0, 4), NO_LABELS)
    assert boxes.shape == (0, 4) and labels.shape == (0,) and min(image.shape[1:]) == 800


def test_train_transform_draws_sizes_and_flips_from_the_generator():
    cfg = get_cfg_defaults()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (32, 40, 48), 1000
    cfg.INPUT.FLIP_PROB_TRAIN = 0.5
    transform = build_transforms(cfg, is_train=True)
    raw, box = painted(16, 20, [[0, 0, 5, 16]]), torch.tensor([[0.0, 0.0, 5.0, 16.0]])
    outcomes = set()
    for seed in range(40):
        first = transform(raw, box, ONE_LABEL, torch.Generator().manual_seed(seed))
        again = transform(raw, box, ONE_LABEL, torch.Generator().manual_seed(seed))
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
        outcomes.add((first[0].shape[1], bool(first[1][0, 0] > 0)))
    assert outcomes == {(s, f) for s in (32, 40, 48) for f in (False, True)}


def test_test_transform_uses_test_sizes_and_never_flips():
    cfg = get_cfg_defaults()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.FLIP_PROB_TRAIN = 64, 1000, 1.0
    transform = build_transforms(cfg, is_train=False)
    image, boxes, _ = transform(painted(32, 40, [[0, 0, 4, 4]]),
                                torch.tensor([[0.0, 0.0, 4.0, 4.0]]), ONE_LABEL)
    assert image.shape == (3, 64, 80) and boxes.tolist() == [[0.0, 0.0, 8.0, 8.0]]


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match=r"sizes must be > 0 .* got short sides \[0\]"):
        ResizeShortSide([0], 100)


def coordinate_image(height: int, width: int) -> torch.Tensor:
    """uint8 image [3, H, W] whose channel 0 holds each pixel's x and channel 1 its y (< 256)."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([xs, ys, torch.zeros_like(xs)]).to(torch.uint8)


def test_crop_drops_outside_boxes_with_their_labels_and_clips_the_others():
    crop = DetectionTransforms([RandomResizeThenCrop(1.0, [200], (50, 120))])
    boxes = torch.tensor([[0.0, 0.0, 30.0, 30.0], [60.0, 70.0, 140.0, 110.0],
                          [150.0, 10.0, 200.0, 60.0], [20.0, 160.0, 90.0, 200.0],
                          [95.0, 95.0, 105.0, 105.0]])
    labels = torch.tensor([3, 1, 4, 0, 2])
    dropped = clipped = 0
    for seed in range(60):
        image, out, kept = crop(coordinate_image(200, 200), boxes, labels,
                                torch.Generator().manual_seed(seed))
        height, width = image.shape[1:]
        assert 50 <= height <= 120 and 50 <= width <= 120
        left, top = round(image[0, 0, 0].item() * 255), round(image[1, 0, 0].item() * 255)
        shifted = boxes - torch.tensor([left, top, left, top])
        expected = shifted.clone()
        expected[:, 0::2] = expected[:, 0::2].clamp(0, width)
        expected[:, 1::2] = expected[:, 1::2].clamp(0, height)
        inside = ((expected[:, 2] - expected[:, 0]) >= 1) & ((expected[:, 3] - expected[:, 1]) >= 1)
        assert torch.equal(out, expected[inside]) and torch.equal(kept, labels[inside])
        dropped += int((~inside).sum())
        clipped += int((expected[inside] != shifted[inside]).any(1).sum())
    assert dropped > 0 and clipped > 0


def test_crop_branch_probability_and_sizes_over_many_seeds():
    step = DetectionTransforms([RandomResizeThenCrop(0.5, [400, 500, 600], (384, 600))])
    raw, box = painted(240, 320, [[40, 40, 200, 200]]), torch.tensor([[40.0, 40.0, 200.0, 200.0]])
    cropped = 0
    for seed in range(100):
        image, _, _ = step(raw, box, ONE_LABEL, torch.Generator().manual_seed(seed))
        if image.shape[1:] != (240, 320):
            cropped += 1
            assert all(384 <= side <= 600 for side in image.shape[1:]), image.shape
    assert 30 <= cropped <= 70


def test_3x_asag_config_sizes_and_determinism_under_a_seed():
    cfg = load_config(os.path.join(REPO, "configs", "asag", "asag_a_r50_3x_100q.yaml"), [])
    assert cfg.INPUT.CROP.ENABLED
    transform = build_transforms(cfg, is_train=True)
    raw, box = painted(240, 320, [[40, 40, 200, 200]]), torch.tensor([[40.0, 40.0, 200.0, 200.0]])
    shorts, state = set(), torch.get_rng_state()
    for seed in range(40):
        first = transform(raw, box, ONE_LABEL, torch.Generator().manual_seed(seed))
        again = transform(raw, box, ONE_LABEL, torch.Generator().manual_seed(seed))
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        height, width = first[0].shape[1:]
        assert min(height, width) in range(640, 801, 32) and max(height, width) <= 1333
        shorts.add(min(height, width))
    assert len(shorts) > 3 and torch.equal(torch.get_rng_state(), state)


def test_bad_crop_size_raises():
    with pytest.raises(ValueError, match=r"crop_size must be \(min, max\) .* \(600, 384\)"):
        RandomResizeThenCrop(0.5, [400], (600, 384))
