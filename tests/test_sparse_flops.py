"""Density-aware FLOPs calculator: published dense R-101 numbers and an independent count."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import resnet as tv_resnet

from fad.modeling.backbone.sparse.flops import backbone_macs, block_specs, reference_canvas

DCN = (False, True, True, True)


@pytest.mark.parametrize("resolution, gmacs", [(500, 70.03), (600, 100.20), (800, 184.06),
                                               (1000, 289.47)])
def test_published_dense_r101(resolution, gmacs):
    h, w = reference_canvas(resolution)
    assert round(backbone_macs(101, h, w, stage_with_dcn=DCN) / 1e9, 2) == gmacs


def test_canvas_of_resolution_1000():
    assert reference_canvas(1000) == (992, 1664)


def test_uniform_half_density():
    gmacs = backbone_macs(101, 992, 1664, 0.5, stage_with_dcn=DCN) / 1e9
    assert gmacs == pytest.approx(162.3, abs=0.05)


def test_density_one_adds_only_the_mask_convs():
    dense = backbone_macs(50, 320, 480)
    full = backbone_macs(50, 320, 480, 1.0)
    masks = 0
    h, w = 80, 120
    for b in block_specs(50):
        ho, wo = (h - 1) // b.stride + 1, (w - 1) // b.stride + 1
        masks += 9 * b.in_channels * (h * w + ho * wo)
        h, w = ho, wo
    assert full - dense == masks


@pytest.mark.parametrize("depth", [18, 50])
def test_dense_count_matches_torch_flop_counter(depth):
    net = tv_resnet.resnet18() if depth == 18 else tv_resnet.resnet50()
    body = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                               net.layer3, net.layer4).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        body(torch.zeros(1, 3, 96, 160))
    conv_flops = counter.get_flop_counts()["Global"][torch.ops.aten.convolution]
    assert backbone_macs(depth, 96, 160) == conv_flops / 2


def test_per_block_densities_and_errors():
    n = len(block_specs(50))
    pairs = [(0.4, 0.6)] * n
    assert backbone_macs(50, 256, 256, pairs) < backbone_macs(50, 256, 256)
    with pytest.raises(ValueError, match="pairs"):
        backbone_macs(50, 256, 256, pairs[:-1])
    with pytest.raises(ValueError, match="depth"):
        backbone_macs(42, 256, 256)
