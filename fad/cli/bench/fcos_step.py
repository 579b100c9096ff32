"""One FCOS training step: ours vs torchvision's fcos_resnet50_fpn, same backbone and input.

Both models are ResNet-50 (FrozenBN, stem+res2 frozen) + FPN P3-P7 + 4-conv GN towers (torchvision
makes FrozenBN only with pretrained weights: its BatchNorm2d layers are swapped here); both get
the same already-resized batch (torchvision's internal resize is switched off). Steps are
interleaved, medians reported; `time_ratio` = median over rounds of ours / torchvision in the
same round (issue #24's goal <= 0.85); `ours` trains with the layers `DetectorStep` makes
(`prepare_layers`: SOLVER.CHANNELS_LAST NHWC, GroupNorm + ReLU fused, FrozenBN folded into the
convolutions, their weight gradient as GEMMs where MODEL.OPS.CONV_WGRAD_BACKEND says so), side
by side with the same model and weights under the `reference` weight gradient
(`time_ratio_reference_wgrad`) and one in NCHW (`ours_nchw`, `time_ratio_nchw`). The step's
FLOPs set its limit on a CPU (`fad.cli.bench.flop_limit`: `limit_step_s`, `fraction_of_limit`
for ours, `fraction_of_limit_torchvision`).
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn
from torchvision.models.detection import fcos_resnet50_fpn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d

from fad.config import get_cfg_defaults
from fad.engine.trainer import prepare_layers
from fad.modeling import build_detector
from fad.ops.backends import get_backend, using

from .batch import random_detection_batch
from .flop_limit import limit_keys, step_flops
from .timing import time_rounds


class _NoResize(GeneralizedRCNNTransform):
    def resize(self, image, target=None):
        return image, target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, nargs=2, default=(384, 512), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _step(model: nn.Module, opt: torch.optim.Optimizer, images: list[torch.Tensor],
          targets: list[dict]) -> Callable[[], None]:
    """One training step of `model` on the batch: forward, backward, optimizer step."""
    def step() -> None:
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["MODEL.BACKBONE.DEPTH", 50, "MODEL.BACKBONE.FREEZE_AT", 2])
    # 0-based labels: torchvision's FCOS takes them too
    images, targets = random_detection_batch(args.size, args.batch, args.classes, device)
    steps = {}
    for name, channels_last in (("ours", cfg.SOLVER.CHANNELS_LAST), ("ours_nchw", False)):
        torch.manual_seed(0)
        model = build_detector(cfg, args.classes).to(device).train()
        layout = cfg.clone()
        layout.SOLVER.CHANNELS_LAST = channels_last
        prepare_layers(layout, model)  # as DetectorStep does
        steps[name] = _step(model, _sgd(model), images, targets)
    steps["ours_reference_wgrad"] = _with_backend(steps["ours"], "conv_wgrad", "reference")
    torch.manual_seed(0)
    tv = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=args.classes)
    _freeze_batch_norms(tv.backbone.body)
    tv = tv.to(device).train()
    for name, p in tv.backbone.body.named_parameters():  # same frozen stem + res2 as ours
        p.requires_grad_(name.startswith(("layer2", "layer3", "layer4")))
    t = tv.transform
    tv.transform = _NoResize(1, 1, t.image_mean, t.image_std, size_divisible=32)
    steps["torchvision"] = _step(tv, _sgd(tv), images, targets)
    samples = time_rounds(steps, 1, args.repeats, device, grad=True)
    times = samples.medians()
    limit = {}
    if device.type == "cpu":  # the dense rates it compares with are the CPU's
        torch.manual_seed(0)
        flops = step_flops(build_detector(cfg, args.classes).train(), (images, targets))
        limit = limit_keys(flops, {"": times["ours"], "_torchvision": times["torchvision"]},
                           args.repeats)
    return {"device": str(device), "input": list(args.size), "batch": args.batch,
            "channels_last": cfg.SOLVER.CHANNELS_LAST,
            "ours_step_s": round(times["ours"], 4),
            "ours_nchw_step_s": round(times["ours_nchw"], 4),
            "torchvision_step_s": round(times["torchvision"], 4),
            "time_ratio": round(samples.median_ratio("ours", "torchvision"), 4),
            "ours_reference_wgrad_step_s": round(times["ours_reference_wgrad"], 4),
            "time_ratio_nchw": round(samples.median_ratio("ours_nchw", "torchvision"), 4),
            "time_ratio_reference_wgrad": round(
                samples.median_ratio("ours_reference_wgrad", "torchvision"), 4),
            "conv_wgrad_backend": get_backend("conv_wgrad"),
            "cpu_time_ratio": round(samples.median_ratio("ours", "torchvision", cpu=True), 4),
            **limit, "target": "<= 0.85"}


def _with_backend(step: Callable[[], None], op: str, backend: str) -> Callable[[], None]:
    """`step` run with `op` on `backend` (`fad.ops.backends.using`)."""
    def run() -> None:
        with using(op, backend):
            step()
    return run


def _freeze_batch_norms(module: nn.Module) -> None:
    """Swap every BatchNorm2d below `module` for a FrozenBatchNorm2d, in place: torchvision
    builds FrozenBN only with pretrained weights (without, train-mode BatchNorm2d)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features, child.eps))
        else:
            _freeze_batch_norms(child)


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                           momentum=0.9)
