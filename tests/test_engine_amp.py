"""One AMP policy: fp16 + GradScaler on CUDA, bf16 autocast on the CPU when asked, fp32 for the
second-order search; a real detector step under CPU bf16 (whole model, or the backbone only:
SOLVER.AMP_CPU_SCOPE backbone, or towers: the backbone and the towers' big convs); the
architect's scaled alpha step."""
import math

import pytest
import torch
from conftest import tiny_fcos_cfg
from torch import nn

from fad.config import get_cfg_defaults
from fad.data import build_dataset, make_train_loader
from fad.engine import amp as amp_module
from fad.engine.amp import amp_policy, to_float32, tower_convs
from fad.engine.trainer import DetectorStep
from fad.errors import ConfigError
from fad.modeling import build_detector
from fad.search.architect import Architect

CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")


def _cfg(amp: bool, amp_cpu: bool = False):
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["SOLVER.AMP", amp, "SOLVER.AMP_CPU", amp_cpu])
    return cfg


def test_policy_per_device_without_a_gpu():
    cuda = amp_policy(_cfg(True), CUDA)
    assert cuda.dtype == torch.float16 and cuda.scaled and cuda.device_type == "cuda"
    cpu = amp_policy(_cfg(True, amp_cpu=True), CPU)
    assert cpu.dtype == torch.bfloat16 and not cpu.scaled
    assert not cpu.grad_scaler().is_enabled()
    assert amp_policy(_cfg(True), CPU).dtype is None  # CPU bf16 only with SOLVER.AMP_CPU
    for device in (CUDA, CPU):
        assert amp_policy(_cfg(False, amp_cpu=True), device).dtype is None
        second = amp_policy(_cfg(True, amp_cpu=True), device, second_order=True)
        assert second.dtype is None and not second.scaled


def test_detector_step_runs_under_cpu_bf16(synthetic_root, tmp_path):
    cfg = tiny_fcos_cfg(synthetic_root, str(tmp_path))
    cfg.merge_from_list(["SOLVER.AMP", True, "SOLVER.AMP_CPU", True])
    torch.manual_seed(0)
    dataset = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True)
    model = build_detector(cfg, dataset.num_classes).train()
    step = DetectorStep(cfg, model, CPU)
    dtypes = []
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    out = step.run(next(iter(make_train_loader(cfg, dataset))))
    assert dtypes == [torch.bfloat16]
    assert math.isfinite(sum(v.item() for v in out.losses.values()))
    after = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


def _first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def test_backbone_scope_runs_only_the_backbone_in_bf16(synthetic_root, tmp_path):
    cfg = tiny_fcos_cfg(synthetic_root, str(tmp_path))
    cfg.merge_from_list(["SOLVER.AMP", True, "SOLVER.AMP_CPU", True,
                         "SOLVER.AMP_CPU_SCOPE", "backbone"])
    policy = amp_policy(cfg, CPU)
    assert policy.dtype == torch.bfloat16 and policy.scope == "backbone"
    assert not torch.is_autocast_enabled("cpu")
    with policy.autocast():  # the forward itself runs fp32; `attach` puts the autocast in place
        assert not torch.is_autocast_enabled("cpu")
    torch.manual_seed(0)
    dataset = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True)
    model = build_detector(cfg, dataset.num_classes).train()
    step = DetectorStep(cfg, model, CPU)
    seen = {"backbone conv": [], "backbone out": [], "head conv": []}
    _first_conv(model.backbone).register_forward_hook(
        lambda mod, inp, out: seen["backbone conv"].append(out.dtype))
    model.backbone.register_forward_hook(
        lambda mod, inp, out: seen["backbone out"].extend(v.dtype for v in out.values()))
    _first_conv(model.head).register_forward_hook(
        lambda mod, inp, out: seen["head conv"].append(out.dtype))
    batch = next(iter(make_train_loader(cfg, dataset)))
    out = step.run(batch)
    assert seen["backbone conv"] == [torch.bfloat16]
    assert set(seen["backbone out"]) == {torch.float32}  # cast back before the head
    assert set(seen["head conv"]) == {torch.float32}
    assert not torch.is_autocast_enabled("cpu")  # left after the backbone
    assert math.isfinite(sum(v.item() for v in out.losses.values()))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    model.eval()  # inference (the evaluation after training, fad-test) stays fp32
    with torch.no_grad():
        model(batch[0])
    assert seen["backbone conv"][-1] == torch.float32


def test_backbone_scope_needs_a_backbone():
    cfg = _cfg(True, amp_cpu=True)
    cfg.merge_from_list(["SOLVER.AMP_CPU_SCOPE", "backbone"])
    with pytest.raises(ConfigError, match="AMP_CPU_SCOPE"):
        amp_policy(cfg, CPU).attach(nn.Linear(2, 2))
    amp_policy(_cfg(True), CPU).attach(nn.Linear(2, 2))  # fp32: nothing to attach


def test_towers_scope_runs_the_big_tower_convs_in_bf16(synthetic_root, tmp_path, monkeypatch):
    cfg = tiny_fcos_cfg(synthetic_root, str(tmp_path))
    cfg.merge_from_list(["SOLVER.AMP", True, "SOLVER.AMP_CPU", True,
                         "SOLVER.AMP_CPU_SCOPE", "towers"])
    torch.manual_seed(0)
    dataset = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True)
    model = build_detector(cfg, dataset.num_classes).train()
    convs = tower_convs(model)
    assert convs and all(m.groups == 1 and m.kernel_size == (3, 3) for m in convs)
    assert not any(m is model.head.cls_logits or m is model.head.bbox_pred for m in convs)
    batch = next(iter(make_train_loader(cfg, dataset)))
    calls, head_outputs = [], []
    for conv in convs:  # registered before the step's hooks: sees the conv's own output dtype
        conv.register_forward_hook(lambda mod, inp, out: calls.append(
            (inp[0].numel() // inp[0].shape[1], inp[0].dtype, out.dtype)))
    model.head.cls_logits.register_forward_hook(
        lambda mod, inp, out: head_outputs.append(out.dtype))
    with torch.no_grad():  # the positions of every level's tower calls, to set the threshold
        model.eval()(batch[0])
    positions = sorted({n for n, _, _ in calls})
    assert len(positions) >= 3
    threshold = positions[-2]  # the two largest levels in bf16, the others fp32
    monkeypatch.setattr(amp_module, "TOWER_MIN_POSITIONS", threshold)
    calls.clear()
    step = DetectorStep(cfg, model.train(), CPU)
    out = step.run(batch)
    assert {(n >= threshold, i, o) for n, i, o in calls} == {
        (True, torch.float32, torch.bfloat16), (False, torch.float32, torch.float32)}
    assert set(head_outputs) == {torch.float32}  # GroupNorm, ReLU and the predictors: fp32
    assert not torch.is_autocast_enabled("cpu")
    assert math.isfinite(sum(v.item() for v in out.losses.values()))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad is not None for conv in convs for p in conv.parameters())
    model.eval()  # inference stays fp32
    calls.clear()
    with torch.no_grad():
        model(batch[0])
    assert {o for _, _, o in calls} == {torch.float32}


def test_towers_scope_needs_tower_convs():
    cfg = _cfg(True, amp_cpu=True)
    cfg.merge_from_list(["SOLVER.AMP_CPU_SCOPE", "towers"])
    model = nn.Module()
    model.backbone, model.head = nn.Conv2d(3, 3, 3), nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="towers"):
        amp_policy(cfg, CPU).attach(model)


def test_to_float32_keeps_containers_and_non_float_tensors():
    half, idx = torch.ones(2, dtype=torch.bfloat16), torch.arange(3)
    out = to_float32({"a": half, "b": [half, (idx, half)], "c": "text"})
    assert out["a"].dtype == torch.float32 and torch.equal(out["a"], torch.ones(2))
    assert isinstance(out["b"], list) and isinstance(out["b"][1], tuple)
    assert out["b"][1][0] is idx and out["b"][1][1].dtype == torch.float32
    assert out["c"] == "text"


def _tiny_architect(scaler=None, second_order=False):
    torch.manual_seed(0)
    layer = nn.Linear(3, 1)
    alpha = nn.Parameter(torch.randn(2))
    x, y = torch.randn(5, 3), torch.randn(5, 1)

    def loss_fn(batch):
        w = alpha.softmax(-1)
        return ((w[0] * layer(x) + w[1] * layer(x).tanh() - y) ** 2).mean()

    arch = Architect(loss_fn, list(layer.parameters()), [alpha], lr=0.1, scaler=scaler,
                     second_order=second_order)
    return arch, alpha


def test_scaled_alpha_step_equals_the_plain_one_and_skips_overflows():
    plain, alpha_plain = _tiny_architect()
    start = alpha_plain.detach().clone()
    plain.step(None)
    assert not torch.equal(alpha_plain.detach(), start)  # the step moves alpha
    scaled, alpha_scaled = _tiny_architect(torch.amp.GradScaler("cpu", init_scale=1024.0))
    scaled.step(None)
    torch.testing.assert_close(alpha_scaled, alpha_plain)
    overflow, alpha = _tiny_architect(torch.amp.GradScaler("cpu", init_scale=float("inf")))
    start = alpha.detach().clone()
    overflow.step(None)
    assert torch.equal(alpha.detach(), start)
    with pytest.raises(ValueError, match="fp32"):
        _tiny_architect(torch.amp.GradScaler("cpu"), second_order=True)
