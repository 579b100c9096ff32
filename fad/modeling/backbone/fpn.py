"""Backbone body + torchvision FPN producing P3-P7 (FCOS-imprv: P6 from P5, P7 from ReLU(P6))."""
from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


class BodyWithFPN(nn.Module):
    """`forward(x [N,3,H,W])` -> OrderedDict p3..p7, each [N, out_channels, H/s, W/s]."""

    def __init__(self, body: nn.Module, channels: dict[str, int], out_channels: int,
                 use_p5: bool = True):
        super().__init__()
        self.body = body
        self.in_features = ["c3", "c4", "c5"]
        # LastLevelP6P7 reads P5 when its input width equals its output width, else C5
        p6_in = out_channels if use_p5 else channels["c5"]
        self.fpn = FeaturePyramidNetwork(
            [channels[k] for k in self.in_features], out_channels,
            extra_blocks=LastLevelP6P7(p6_in, out_channels))
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        pyramid = self.fpn(OrderedDict((k, feats[k]) for k in self.in_features))
        return OrderedDict(zip(["p3", "p4", "p5", "p6", "p7"], pyramid.values()))
