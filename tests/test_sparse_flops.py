"""Density-aware FLOPs calculator: published dense R-101 numbers and an independent count."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import resnet as tv_resnet

from fad.config import get_cfg_defaults
from fad.modeling.backbone import build_backbone_body
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
    """At density 1 the interpolation term vanishes: the count is the dense one plus the two
    one-channel 3x3 mask convs of every block, counted here by torch's FlopCounterMode on the mask
    convs of a built SparseResNet-50 at the input each block sees."""
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", "sparse_resnet", "MODEL.BACKBONE.DEPTH", 50])
    body, _ = build_backbone_body(cfg)
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda _, args: inputs.append(args[0].shape))
             for b in body.blocks]
    with torch.no_grad():
        body.eval()(torch.zeros(1, 3, 128, 192))
    for hook in hooks:
        hook.remove()
    assert len(inputs) == len(block_specs(50)) == 16
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        for block, shape in zip(body.blocks, inputs):
            block.conv1_mask(torch.zeros(shape))
            block.conv2_mask(torch.zeros(shape))
    mask_macs = counter.get_flop_counts()["Global"][torch.ops.aten.convolution] / 2
    assert backbone_macs(50, 128, 192, 1.0) - backbone_macs(50, 128, 192) == mask_macs


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
