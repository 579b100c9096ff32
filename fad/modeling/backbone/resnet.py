"""ResNet / ResNeXt bodies from torchvision, returning the C2-C5 feature maps."""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.ops import FrozenBatchNorm2d
from yacs.config import CfgNode

from fad.errors import CheckpointError, ConfigError

logger = logging.getLogger("fad")

# ResNet depth -> residual blocks of res2..res5, and the width (planes) of each stage
STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                152: (3, 8, 36, 3)}
STAGE_PLANES = (64, 128, 256, 512)
_WEIGHTS = {  # (depth, groups, width per group) -> torchvision weights enum
    (18, 1, 64): "ResNet18_Weights", (34, 1, 64): "ResNet34_Weights",
    (50, 1, 64): "ResNet50_Weights", (101, 1, 64): "ResNet101_Weights",
    (152, 1, 64): "ResNet152_Weights", (50, 32, 4): "ResNeXt50_32X4D_Weights",
    (101, 32, 8): "ResNeXt101_32X8D_Weights", (101, 64, 4): "ResNeXt101_64X4D_Weights",
}


def torchvision_weights_name(depth: int, groups: int = 1, width_per_group: int = 64) -> str:
    """Name of the torchvision ImageNet weights enum for this ResNet / ResNeXt shape."""
    key = (depth, groups, width_per_group)
    if key not in _WEIGHTS:
        known = ", ".join(f"{d}/{g}x{w}" for d, g, w in _WEIGHTS)
        raise ConfigError(f"MODEL.BACKBONE.PRETRAINED torchvision: torchvision has no ImageNet "
                          f"weights for depth {depth} with {groups} groups x {width_per_group} "
                          f"(known depth/groups x width: {known}); give a local .pth instead")
    return _WEIGHTS[key]


def check_depth(depth: int) -> None:
    """A ValueError unless `depth` is in `STAGE_BLOCKS`."""
    if depth not in STAGE_BLOCKS:
        raise ValueError(f"no ResNet of depth {depth}; choose one of "
                         f"{', '.join(map(str, STAGE_BLOCKS))}")


def body_channels(depth: int) -> dict[str, int]:
    """Channels of c2..c5 of a ResNet-`depth` (bottleneck blocks, x4, from depth 50 on)."""
    expansion = 4 if depth >= 50 else 1
    return {f"c{i + 2}": planes * expansion for i, planes in enumerate(STAGE_PLANES)}


def set_norm_eval(module: nn.Module) -> None:
    """Every BatchNorm2d of `module` to eval mode: running statistics stay frozen while the affine
    parameters keep training (MODEL.BACKBONE.NORM_EVAL; mmdetection's `norm_eval`)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


class ResNetBody(nn.Module):
    """Wraps a torchvision ResNet; `forward(x [N,3,H,W])` -> OrderedDict c2..c5 (strides 4..32).

    `norm_eval`: BatchNorm layers stay in eval mode when the body trains (see `set_norm_eval`).
    """

    def __init__(self, net: tv_resnet.ResNet, norm_eval: bool = False):
        super().__init__()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2 = net.layer1, net.layer2
        self.layer3, self.layer4 = net.layer3, net.layer4
        self.norm_eval = norm_eval
        self.train()

    def train(self, mode: bool = True) -> ResNetBody:
        super().train(mode)
        if mode and self.norm_eval:
            set_norm_eval(self)
        return self

    def stages(self) -> list[nn.Module]:
        """Stem, layer1..layer4 (the order `freeze_stages` counts in)."""
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return OrderedDict(c2=c2, c3=c3, c4=c4, c5=c5)


def norm_layer(name: str):
    """The backbone norm class for `MODEL.BACKBONE.NORM`."""
    if name == "FrozenBN":
        return FrozenBatchNorm2d
    if name == "BN":
        return nn.BatchNorm2d
    raise ValueError(f"unknown backbone norm {name!r}; choose FrozenBN or BN")


def load_pretrained(net: nn.Module, spec: str, depth: int, groups: int = 1,
                    width_per_group: int = 64) -> None:
    """Load ImageNet weights into a torchvision-layout ResNet/ResNeXt from a local file or
    torchvision.

    Keys the file lacks (e.g. extra mask convs of a sparse ResNet) keep their initialisation;
    the classifier (`fc.*`) is ignored.
    """
    if not spec:
        return
    if spec == "torchvision":
        name = torchvision_weights_name(depth, groups, width_per_group)
        weights = getattr(tv_resnet, name).IMAGENET1K_V1
        state = weights.get_state_dict(progress=True)
    else:
        if not os.path.isfile(spec):
            raise ConfigError(
                f"MODEL.BACKBONE.PRETRAINED {spec!r} does not exist; give a local .pth of a "
                "torchvision ResNet state dict, 'torchvision' to download, or '' for random init")
        try:
            state = torch.load(spec, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
            raise CheckpointError(f"MODEL.BACKBONE.PRETRAINED {spec}: not a readable torch file "
                                  f"({exc}); give a torchvision ResNet state dict") from None
        state = state.get("state_dict", state.get("model", state))
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = net.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"MODEL.BACKBONE.PRETRAINED {spec}: {len(wrong)} tensors do not "
                              f"fit a ResNet-{depth} with {groups} groups x {width_per_group}, "
                              f"e.g. {wrong[0]} {tuple(state[wrong[0]].shape)} vs "
                              f"{tuple(own[wrong[0]].shape)}; check "
                              "MODEL.BACKBONE.DEPTH / GROUPS / WIDTH_PER_GROUP")
    result = net.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"MODEL.BACKBONE.PRETRAINED {spec}: keys not in a "
                              f"ResNet-{depth}: {', '.join(result.unexpected_keys[:5])}; give a "
                              "torchvision ResNet state dict")
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    logger.info("loaded backbone weights from %s (%d keys kept their init)", spec, len(missing))


def freeze_stages(stages: Sequence[nn.Module], freeze_at: int, keep: Sequence[str] = ()) -> None:
    """Freeze `stages[:freeze_at]`: the stem (freeze_at >= 1) and layer1..layer{freeze_at-1}.

    Parameters inside a submodule named in `keep` stay trainable (SparseResNet: the parts a
    torchvision checkpoint lacks). `MODEL.BACKBONE.FREEZE_AT` 0 freezes nothing.
    """
    for stage in stages[:freeze_at]:
        for name, p in stage.named_parameters():
            if not any(part in keep for part in name.split(".")):
                p.requires_grad_(False)


def build_resnet_body(cfg: CfgNode) -> tuple[nn.Module, dict[str, int]]:
    """ResNet/ResNeXt body and its channels per output, from `MODEL.BACKBONE.*`."""
    bb = cfg.MODEL.BACKBONE
    check_depth(bb.DEPTH)
    block = tv_resnet.BasicBlock if bb.DEPTH < 50 else tv_resnet.Bottleneck
    net = tv_resnet.ResNet(block, list(STAGE_BLOCKS[bb.DEPTH]), groups=bb.GROUPS,
                           width_per_group=bb.WIDTH_PER_GROUP, norm_layer=norm_layer(bb.NORM))
    load_pretrained(net, bb.PRETRAINED, bb.DEPTH, bb.GROUPS, bb.WIDTH_PER_GROUP)
    body = ResNetBody(net, bb.NORM_EVAL)
    freeze_stages(body.stages(), bb.FREEZE_AT)
    return body, body_channels(bb.DEPTH)
