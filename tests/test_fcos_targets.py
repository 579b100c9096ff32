"""FCOS-imprv target assignment and post-processing on hand-made cases."""
import torch

from fad.modeling.fcos.targets import assign_targets, centerness_target, make_locations


def test_locations_are_offset_by_half_stride():
    points, strides, ranges = make_locations([(2, 3), (1, 2)], (8, 16), torch.device("cpu"))
    assert points.tolist()[:4] == [[4, 4], [12, 4], [20, 4], [4, 12]]
    assert points.tolist()[6:] == [[8, 8], [24, 8]]
    assert strides.tolist() == [8] * 6 + [16] * 2
    assert ranges[0].tolist() == [0, 64] and ranges[-1].tolist() == [64, 128]


def test_centre_sampling_size_range_and_smallest_box_tie():
    points, strides, ranges = make_locations([(4, 4), (2, 2)], (8, 16), torch.device("cpu"))
    big = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    cls, reg = assign_targets(points, strides, ranges, big, torch.tensor([1]))
    # level 1: centre region = 16 +- 12 -> strictly inside only x, y in {12, 20}
    expected = torch.full((16,), -1)
    for y in (1, 2):
        for x in (1, 2):
            expected[y * 4 + x] = 1
    assert cls[:16].tolist() == expected.tolist()
    assert reg[5].tolist() == [12, 12, 20, 20]  # point (12, 12)
    # level 2 (stride 16): max(l,t,r,b) = 24 is outside its range [64, 128]
    assert (cls[16:] == -1).all()

    both = torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 8.0, 24.0, 24.0]])
    cls, reg = assign_targets(points, strides, ranges, both, torch.tensor([1, 2]))
    assert cls[5].item() == 2 and reg[5].tolist() == [4, 4, 12, 12]  # the smaller box wins
    assert (cls[:16] == 2).sum() == 4


def test_no_boxes_gives_all_background():
    points, strides, ranges = make_locations([(3, 3)], (8,), torch.device("cpu"))
    cls, reg = assign_targets(points, strides, ranges, torch.zeros(0, 4),
                              torch.zeros(0, dtype=torch.long))
    assert (cls == -1).all() and reg.shape == (9, 4)


def test_centerness_target_by_hand():
    c = centerness_target(torch.tensor([[12.0, 12.0, 20.0, 20.0], [5.0, 5.0, 5.0, 5.0]]))
    assert torch.allclose(c, torch.tensor([0.6, 1.0]))
