"""Backbone weights: local torchvision-layout files (ResNet and ResNeXt) and the weights map."""
import pytest
import torch
from torchvision.models import resnet as tv_resnet

from fad.config import get_cfg_defaults
from fad.errors import CheckpointError, ConfigError
from fad.modeling.backbone.resnet import _WEIGHTS, build_resnet_body, torchvision_weights_name


def _cfg(depth, path, groups=1, width=64):
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["MODEL.BACKBONE.DEPTH", depth, "MODEL.BACKBONE.PRETRAINED", str(path),
                         "MODEL.BACKBONE.GROUPS", groups, "MODEL.BACKBONE.WIDTH_PER_GROUP", width,
                         "MODEL.BACKBONE.FREEZE_AT", 0])
    return cfg


def test_loads_a_local_resnext_file(tmp_path):
    torch.manual_seed(0)
    net = tv_resnet.resnext50_32x4d()
    path = tmp_path / "x50.pth"
    torch.save(net.state_dict(), path)
    body, channels = build_resnet_body(_cfg(50, path, 32, 4))
    assert channels["c5"] == 2048
    ours = body.state_dict()
    for key in ("layer3.2.conv2.weight", "layer1.0.bn1.running_mean", "layer4.2.conv3.weight"):
        torch.testing.assert_close(ours[key], net.state_dict()[key])
    assert body.layer3[2].conv2.groups == 32


def test_a_file_of_another_shape_is_a_clear_error(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(tv_resnet.resnet18().state_dict(), path)
    with pytest.raises(CheckpointError, match="do not fit a ResNet-50 with 32 groups x 4"):
        build_resnet_body(_cfg(50, path, 32, 4))


def test_torchvision_weights_map():
    assert torchvision_weights_name(101, 64, 4) == "ResNeXt101_64X4D_Weights"
    assert torchvision_weights_name(50) == "ResNet50_Weights"
    for name in _WEIGHTS.values():  # every name exists in this torchvision (no download here)
        assert hasattr(getattr(tv_resnet, name), "IMAGENET1K_V1")
    with pytest.raises(ConfigError, match="no ImageNet weights for depth 101 with 16 groups x 4"):
        torchvision_weights_name(101, 16, 4)
