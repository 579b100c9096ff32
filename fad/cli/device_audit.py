"""Audit a detector (or the FAD search step) for the GPU on fake CUDA tensors, no GPU needed:
`fad-device-audit --config-file CFG [--genotype-file G] [--search] [KEY VALUE ...]`.

Builds the model of the config with its parameters and buffers on a fake device and runs, on
fake inputs and targets: the training forward with its losses and the inference with its
post-processing on fake `cuda`, and a whole training step (forward, losses, backward, clipping,
optimizer step) on fake `meta` (the autograd engine needs a real CUDA context). With
`--search`: the search step (alpha step first and second order, then the weight step) instead.
Prints one line per finding (device mismatches, CPU tensors, host syncs, data-dependent sizes;
see `fad.engine.device_audit`) and exits 1 when any is not allowed, 0 when clean.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from unittest import mock

import torch
from torch import Tensor
from yacs.config import CfgNode

from fad.config.build import load_config
from fad.engine.amp import AmpPolicy, amp_policy
from fad.engine.device_audit import DeviceAudit
from fad.engine.launch import default_argument_parser, parse_args
from fad.engine.tool import run_command
from fad.engine.trainer import DetectorStep, forward_losses
from fad.modeling import build_detector
from fad.modeling.set_prediction import HungarianMatcher

NUM_CLASSES = 3  # classes of the audited model when MODEL.NUM_CLASSES is 0 (from the data)


def fake_batch(cfg: CfgNode, num_classes: int) -> tuple[list[Tensor], list[dict]]:
    """Two images of different sizes at the config's test scale and their targets (two boxes
    each), made in the current fake mode and device."""
    h = cfg.INPUT.MIN_SIZE_TEST
    sizes = [(h, min(cfg.INPUT.MAX_SIZE_TEST, h * 5 // 4)), (h * 3 // 4, h)]
    images = [torch.rand(3, hh, ww) for hh, ww in sizes]
    targets = []
    for hh, ww in sizes:
        boxes = torch.tensor([[0.1 * ww, 0.1 * hh, 0.6 * ww, 0.5 * hh],
                              [0.4 * ww, 0.3 * hh, 0.9 * ww, 0.95 * hh]])
        targets.append({"boxes": boxes, "labels": torch.tensor([0, num_classes - 1]),
                        "size": torch.tensor([hh, ww]), "orig_size": torch.tensor([hh, ww])})
    return images, targets


class _FakeCudaAmp(AmpPolicy):
    """The training's AMP policy with an autocast that engages on fake CUDA tensors:
    `torch.autocast("cuda")` turns itself off (with a warning) where no CUDA driver answers, so
    it is made while CUDA claims to be there; entering and running it need no driver."""

    def autocast(self) -> AbstractContextManager:
        with mock.patch.object(torch.cuda, "is_available", return_value=True):
            return super().autocast()


def _train_forward_on_cuda(cfg: CfgNode, audit: DeviceAudit, make, build, phase: str
                           ) -> tuple[torch.nn.Module, list[Tensor]]:
    """Build `build(cfg, num_classes)` and a fake batch with `make` of the caller's
    `audit.fake("cuda")`, audit the training forward with its losses under `phase`; returns the
    model and the images."""
    num_classes = cfg.MODEL.NUM_CLASSES or NUM_CLASSES
    model, (images, targets) = make(lambda: (build(cfg, num_classes),
                                                   fake_batch(cfg, num_classes)))
    with audit.phase(phase):
        model.train()
        policy = amp_policy(cfg, torch.device("cuda"))  # SOLVER.AMP: fp16 autocast, as trained
        forward_losses(model, images, targets, _FakeCudaAmp(policy.device_type, policy.dtype))
    return model, images


def audit_detector(cfg: CfgNode, audit: DeviceAudit, build=build_detector) -> None:
    """The detector's training forward and inference on fake CUDA, a training step on meta."""
    num_classes = cfg.MODEL.NUM_CLASSES or NUM_CLASSES
    with audit.fake("cuda") as make:
        model, images = _train_forward_on_cuda(cfg, audit, make, build, "train forward, cuda")
        with audit.phase("inference, cuda"), torch.no_grad():
            model.eval()
            model(images)
    with audit.fake("meta") as make:
        model, batch = make(lambda: (build(cfg, num_classes), fake_batch(cfg, num_classes)))
        with audit.phase("train step, meta"):
            model.train()
            DetectorStep(cfg, model, torch.device("meta")).run(batch)


def audit_search(cfg: CfgNode, audit: DeviceAudit) -> None:
    """The supernet's loss on fake CUDA; search steps (first and second order) on meta."""
    from fad.search.engine import SearchStep  # noqa: PLC0415 - the one command that needs it
    from fad.search.supernet import build_supernet  # noqa: PLC0415

    num_classes = cfg.MODEL.NUM_CLASSES or NUM_CLASSES
    with audit.fake("cuda") as make:
        _train_forward_on_cuda(cfg, audit, make, build_supernet, "search forward, cuda")
    for second_order in (False, True):
        run_cfg = cfg.clone()
        run_cfg.defrost()
        run_cfg.SEARCH.SECOND_ORDER = second_order
        with audit.fake("meta") as make:
            model, batch = make(lambda c=run_cfg: (build_supernet(c, num_classes),
                                                   fake_batch(c, num_classes)))
            order = "second" if second_order else "first"
            with audit.phase(f"search step ({order} order), meta"):
                model.train()
                SearchStep(run_cfg, model, torch.device("meta")).run((batch, batch))


@contextmanager
def _host_solvers_stood_in(audit: DeviceAudit) -> Iterator[None]:
    """The Hungarian matcher's host solver (scipy, `HungarianMatcher.assignment`) replaced by
    the audit's stand-in for the block."""
    solver = HungarianMatcher.__dict__["assignment"]
    HungarianMatcher.assignment = staticmethod(audit.stand_in_assignment)
    try:
        yield
    finally:
        HungarianMatcher.assignment = solver


def run_audit(cfg: CfgNode, search: bool = False) -> DeviceAudit:
    """Audit the detector of `cfg` (or its search step) and return the findings. Pretrained
    backbone weights are not loaded: fake tensors hold no data."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.BACKBONE.PRETRAINED = ""
    audit = DeviceAudit()
    with _host_solvers_stood_in(audit):
        (audit_search if search else audit_detector)(cfg, audit)
    return audit


def main(argv: Sequence[str] | None = None) -> None:
    """Parse `argv`, audit, print the findings; exit 1 when any is not allowed."""
    parser = default_argument_parser(__doc__, genotype_file=True)
    parser.add_argument("--search", action="store_true",
                        help="audit the FAD search step of a search config")
    args = parse_args(parser, argv)
    cfg = load_config(args.config_file, args.opts)
    audit = run_audit(cfg, search=args.search)
    for line in audit.lines():
        print(line)
    failures = len(audit.failures)
    print(f"device audit: {len(audit.findings)} findings, {failures} not allowed")
    if failures:
        sys.exit(1)


def run() -> None:
    """The `fad-device-audit` console command."""
    run_command(main)

