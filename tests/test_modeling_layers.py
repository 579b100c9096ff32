"""The rules every head shares: GroupNorm groups and the focal prior bias."""
import math

import pytest
import torch

from fad.modeling.detr.backbone import MultiLevelBackbone
from fad.modeling.fcos.head import FCOSHead
from fad.modeling.layers import group_norm, group_norm_groups, prior_bias
from fad.nas.primitives import conv_unit


@pytest.mark.parametrize("channels, max_groups, groups", [
    (256, 32, 32), (96, 32, 32), (64, 32, 32), (48, 32, 16), (32, 32, 16), (16, 32, 8),
    (6, 32, 2), (3, 32, 1), (256, 8, 8), (8, 8, 4),
])
def test_group_norm_groups(channels, max_groups, groups):
    """Largest divisor of max_groups dividing C with >= 2 channels per group."""
    assert group_norm_groups(channels, max_groups) == groups
    norm = group_norm(channels, max_groups)
    assert (norm.num_groups, norm.num_channels) == (groups, channels)


def test_every_head_uses_the_one_group_rule():
    """The plain FCOS head, the FAD units and the DETR projections agree at width 16."""
    fcos = FCOSHead(16, 3, num_convs=1)
    detr = MultiLevelBackbone(torch.nn.Identity(), [8, 16, 32], d_model=16, num_levels=1,
                              gn_groups=16)
    norms = [fcos.cls_tower[1], conv_unit("std", 16)[1], detr.input_proj[0][1]]
    assert [n.num_groups for n in norms] == [8, 8, 8]
    out = fcos([torch.randn(1, 16, 1, 1)])  # a 1x1 map still normalises
    assert torch.isfinite(out["cls_logits"]).all()


def test_prior_bias_by_hand():
    assert prior_bias(0.01) == pytest.approx(-math.log(99.0))
    assert prior_bias(0.5) == 0.0
    assert torch.sigmoid(torch.tensor(prior_bias(0.2))).item() == pytest.approx(0.2)
    head = FCOSHead(16, 3, num_convs=1, prior_prob=0.01)
    torch.testing.assert_close(head.cls_logits.bias, torch.full((3,), -math.log(99.0)))
