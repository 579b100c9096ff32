"""The pieces DETR and ASAG share (fad.modeling.set_prediction) against hand-computed values:
box normalisation both ways and its broadcasting, the checked targets, the matched pairs, the
loss normaliser and the matcher's config error."""
import pytest
import torch

from fad.errors import DataError
from fad.modeling.set_prediction import (
    HungarianMatcher,
    average_num_boxes,
    cxcywh_to_xyxy,
    denormalize_cxcywh,
    matched_pairs,
    normalize_xyxy,
    normalized_targets,
)


def test_normalize_one_image_and_a_batch_by_hand():
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # centre (20, 40), 20 x 40 in a 50 x 100 image
    torch.testing.assert_close(normalize_xyxy(box, torch.tensor([100, 50])),
                               torch.tensor([[0.4, 0.4, 0.4, 0.4]]))
    batch = torch.tensor([[[10.0, 20.0, 30.0, 60.0]], [[0.0, 0.0, 40.0, 20.0]]])  # [2, 1, 4]
    sizes = torch.tensor([[100, 50], [40, 80]])  # (h, w) per image
    expected = torch.tensor([[[0.4, 0.4, 0.4, 0.4]], [[0.25, 0.25, 0.5, 0.5]]])
    torch.testing.assert_close(normalize_xyxy(batch, sizes[:, None]), expected)
    torch.testing.assert_close(denormalize_cxcywh(expected, sizes[:, None]), batch)
    torch.testing.assert_close(cxcywh_to_xyxy(torch.tensor([0.5, 0.5, 0.2, 0.4])),
                               torch.tensor([0.4, 0.3, 0.6, 0.7]))


def test_normalized_targets_checks_and_converts():
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0]]), "labels": torch.tensor([2])}]
    out = normalized_targets(targets, [(100, 50)], 3, "DETR targets")
    torch.testing.assert_close(out[0]["boxes"], torch.tensor([[0.4, 0.4, 0.4, 0.4]]))
    assert out[0]["labels"].tolist() == [2]
    with pytest.raises(DataError, match="^ASAG targets: target 0 has labels outside 0..1"):
        normalized_targets(targets, [(100, 50)], 2, "ASAG targets")


def test_matched_pairs_flatten_the_batch():
    targets = [{"labels": torch.tensor([4, 5, 6]), "boxes": torch.arange(12.0).view(3, 4)},
               {"labels": torch.tensor([7]), "boxes": torch.full((1, 4), -1.0)}]
    indices = [(torch.tensor([9, 2]), torch.tensor([2, 0])), (torch.tensor([3]), torch.tensor([0]))]
    image, query, labels, boxes = matched_pairs(indices, targets)
    assert image.tolist() == [0, 0, 1] and query.tolist() == [9, 2, 3]
    assert labels.tolist() == [6, 4, 7]
    torch.testing.assert_close(boxes, torch.tensor([[8.0, 9, 10, 11], [0, 1, 2, 3], [-1] * 4]))


def test_average_num_boxes_is_at_least_one():
    cpu = torch.device("cpu")
    assert average_num_boxes([{"labels": torch.zeros(3)}, {"labels": torch.zeros(2)}], cpu) == 5
    assert average_num_boxes([{"labels": torch.zeros(0)}], cpu) == 1.0


def test_matcher_refuses_zero_costs():
    with pytest.raises(ValueError, match=r"^HungarianMatcher: cost_class, cost_bbox and cost_giou "
                                         r"are all 0; one must be > 0$"):
        HungarianMatcher(0, 0, 0)
