"""`fuse_group_norm_relu`: which pairs it fuses, the unchanged state dict (checkpoints load
both ways), and a channels-last training step of the tiny searched FCOS with the fused op equal
to the unfused one."""
import os

import torch
from conftest import REPO, tiny_fcos_cfg, two_image_batch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from fad.engine import trainer
from fad.modeling import build_detector
from fad.modeling.fcos import resolve_genotype
from fad.ops.gn_relu import GroupNormReLU, fuse_group_norm_relu, kernel_runs

PAPER = os.path.join(REPO, "configs", "fad", "genotypes", "fad_paper.log")


def _net() -> nn.Module:
    """Three fusable pairs (one nested, one without affine), a GroupNorm before a conv, a ReLU
    after a conv."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(inplace=True),
        nn.Sequential(nn.Conv2d(8, 8, 1), nn.GroupNorm(2, 8), nn.ReLU()),
        nn.GroupNorm(2, 8), nn.Conv2d(8, 4, 1), nn.ReLU(),
        nn.GroupNorm(2, 4, affine=False), nn.ReLU())


def test_fuses_adjacent_group_norm_relu_pairs_only():
    net = _net()
    params = {name: id(p) for name, p in net.named_parameters()}
    assert fuse_group_norm_relu(net) == 3
    assert isinstance(net[1], GroupNormReLU) and isinstance(net[2], nn.Identity)
    assert isinstance(net[3][1], GroupNormReLU) and isinstance(net[3][2], nn.Identity)
    assert type(net[4]) is nn.GroupNorm and isinstance(net[6], nn.ReLU)
    assert isinstance(net[7], GroupNormReLU) and net[7].weight is None
    assert {name: id(p) for name, p in net.named_parameters()} == params  # the same objects
    assert fuse_group_norm_relu(net) == 0


def test_state_dict_unchanged_and_checkpoints_load_both_ways(tmp_path):
    plain, fused = _net(), _net()
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(torch.rand_like(p))
    before = plain.state_dict()
    torch.save(before, tmp_path / "before.pth")
    fuse_group_norm_relu(fused)
    fused.load_state_dict(torch.load(tmp_path / "before.pth"))
    after = fused.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    torch.save(after, tmp_path / "after.pth")
    reloaded = _net()
    reloaded.load_state_dict(torch.load(tmp_path / "after.pth"))
    x = torch.randn(2, 3, 9, 7).to(memory_format=torch.channels_last)
    assert kernel_runs(fused[0](x), fused[1].weight, fused[1].bias)
    torch.testing.assert_close(fused(x), reloaded(x), rtol=1e-5, atol=1e-5)


def test_fused_searched_fcos_step_equals_the_unfused_one(synthetic_root, tmp_path, monkeypatch,
                                                         float64_default):
    """In float64, so the comparison is exact: in float32 the two steps' roundings, amplified by
    the backward through BatchNorm and GroupNorm, differ by up to 0.2 % of a gradient's scale on
    an AVX2 CPU (its kernel path sums in another order than AVX-512's); the kernel's float32
    path is checked op by op in tests/test_gn_relu_op.py."""
    monkeypatch.setenv("FAD_GN_RELU_BACKEND", "cpp")  # a build failure fails the test
    losses, grads, kernel_calls, fused = {}, {}, {}, 0
    for fuse in (False, True):
        cfg = tiny_fcos_cfg(synthetic_root, str(tmp_path / str(fuse)))
        cfg.defrost()
        cfg.MODEL.FAD.TOWER_CHANNELS, cfg.MODEL.FAD.EDGE_CHANNELS = 32, 16
        resolve_genotype(cfg, PAPER)
        cfg.SOLVER.CHANNELS_LAST = True
        torch.manual_seed(0)
        model = build_detector(cfg, 3)
        # DetectorStep fuses a channels-last model itself; the reference arm runs unfused
        monkeypatch.setattr(trainer, "fuse_group_norm_relu",
                            fuse_group_norm_relu if fuse else lambda m: 0)
        step = trainer.DetectorStep(cfg, model, torch.device("cpu"))
        if fuse:
            fused = sum(isinstance(m, GroupNormReLU) for m in model.modules())
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            losses[fuse] = step.run(two_image_batch()).losses
        kernel_calls[fuse] = sum(e.count for e in prof.key_averages()
                                 if e.key == "fad_gn_relu::forward")
        grads[fuse] = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert fused > 0 and kernel_calls[False] == 0 and kernel_calls[True] >= fused
    for key, value in losses[False].items():  # reported as float32
        torch.testing.assert_close(losses[True][key], value, rtol=1e-6, atol=1e-7)
    assert list(grads[True]) == list(grads[False])
    for key, value in grads[False].items():
        assert value.dtype == torch.float64
        torch.testing.assert_close(grads[True][key], value, rtol=1e-9, atol=1e-12, msg=key)
