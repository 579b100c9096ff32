"""MSDA op: compiled CPU kernel vs the grid_sample reference, gradients, custom-op machinery,
input checks and backend selection."""
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fad.errors import OpError
from fad.ops import (
    backends,
    build,
    ms_deform_attn_reference,
    multi_scale_deformable_attention,
    set_backend,
)
from fad.ops.msda.inputs import random_msda_inputs
from fad.ops.msda.reference import ms_deform_attn_reference_backward

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LEVELS = [(6, 4), (3, 2), (1, 1), (5, 7)]
D_VALUES = [30, 32, 64, 71, 1025]


@pytest.fixture(scope="module")
def cpu_kernel():
    """Build (or load the cached build of) the CPU extension; a build error fails the test."""
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler on PATH")
    build.load("msda_cpu")
    return torch.ops.fad_msda


@pytest.fixture(autouse=True)
def _cpp_backend():
    """Each test starts on the compiled backend and leaves no override behind."""
    set_backend("msda", "cpp")
    yield
    set_backend("msda", None)


def _inputs(dim, dtype=torch.float64, **kw):
    kw.setdefault("edges", True)
    return random_msda_inputs(2, LEVELS, 2, dim, 8, 3, dtype=dtype, **kw)


@pytest.mark.parametrize("dim", D_VALUES)
def test_forward_float64_matches_reference(cpu_kernel, dim):
    args = _inputs(dim)
    out = cpu_kernel.forward(*args)
    assert out.shape == (2, 8, 2 * dim)
    torch.testing.assert_close(out, ms_deform_attn_reference(*args), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dim", D_VALUES)
def test_forward_float32_matches_reference(cpu_kernel, dim):
    args = _inputs(dim, torch.float32, seed=1)
    ref = ms_deform_attn_reference(*[a.double() if a.is_floating_point() else a for a in args])
    torch.testing.assert_close(cpu_kernel.forward(*args).double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_forward_low_precision_computes_in_float(cpu_kernel, dtype):
    args = _inputs(32, dtype, seed=2)
    out = cpu_kernel.forward(*args)
    assert out.dtype == dtype
    ref = ms_deform_attn_reference(*[a.float() if a.is_floating_point() else a for a in args])
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)


def test_points_outside_contribute_nothing(cpu_kernel):
    value, shapes, starts, loc, attn = _inputs(8)
    loc[:, :, :, :, :, 0] = -0.6  # x * W - 0.5 <= -1 on every level -> no contribution
    assert cpu_kernel.forward(value, shapes, starts, loc, attn).abs().max() == 0
    grad = torch.ones(2, 8, 16, dtype=torch.float64)
    assert all(g.abs().max() == 0 for g in cpu_kernel.backward(grad, value, shapes, starts,
                                                                loc, attn))


def test_forward_hand_computed():
    """One 2x2 level, one point at pixel (0.25, 0.5): bilinear mix of the four values."""
    value = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 4, 1, 1)
    shapes, starts = torch.tensor([[2, 2]]), torch.tensor([0])
    loc = torch.tensor([(0.25 + 0.5) / 2, (0.5 + 0.5) / 2], dtype=torch.float64)
    attn = torch.full((1, 1, 1, 1, 1), 0.5, dtype=torch.float64)
    expected = 0.5 * (0.75 * 0.5 * 1 + 0.25 * 0.5 * 2 + 0.75 * 0.5 * 3 + 0.25 * 0.5 * 4)
    for backend in ("reference", "cpp"):
        set_backend("msda", backend)
        out = multi_scale_deformable_attention(value, shapes, starts, loc.view(1, 1, 1, 1, 1, 2),
                                               attn)
        assert out.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("dim", D_VALUES)
def test_backward_float64_matches_reference(cpu_kernel, dim):
    args = _inputs(dim, kinks=False, seed=3)
    grad = torch.randn(2, 8, 2 * dim, dtype=torch.float64)
    got = cpu_kernel.backward(grad, *args)
    closed = ms_deform_attn_reference_backward(grad, *args)
    leaves = [args[0].requires_grad_(), args[3].requires_grad_(), args[4].requires_grad_()]
    auto = torch.autograd.grad(ms_deform_attn_reference(*args), leaves, grad)
    for g, c, a in zip(got, closed, auto):
        torch.testing.assert_close(g, a, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(c, a, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dim", [32, 64, 30])
def test_backward_float32_matches_reference_at_each_thread_count(cpu_kernel, dim, threads):
    """The float32 loops (vectors for D = 32 / 64) and the task split: 2 images x 2 heads on 3
    threads split the queries into groups, each with its own gradient buffer."""
    args64 = _inputs(dim, kinks=False, seed=5)
    grad64 = torch.randn(2, 8, 2 * dim, dtype=torch.float64)
    expected = ms_deform_attn_reference_backward(grad64, *args64)
    args = [a.float() if a.is_floating_point() else a for a in args64]
    default = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = cpu_kernel.backward(grad64.float(), *args)
    finally:
        torch.set_num_threads(default)
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("dim", [2, 30, 71])
def test_gradcheck(cpu_kernel, backend, dim):
    value, shapes, starts, loc, attn = random_msda_inputs(1, [(4, 3), (2, 2)], 2, dim, 3, 2,
                                                          seed=4, margin=0.0)
    leaves = [t.requires_grad_() for t in (value, loc, attn)]
    set_backend("msda", backend)
    assert torch.autograd.gradcheck(
        lambda v, loc_, a: multi_scale_deformable_attention(v, shapes, starts, loc_, a), leaves,
        eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_opcheck(cpu_kernel, backend):
    value, shapes, starts, loc, attn = random_msda_inputs(2, [(4, 3), (2, 2)], 2, 5, 3, 2,
                                                          dtype=torch.float32, seed=5)
    set_backend("msda", backend)
    for t in (value, loc, attn):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.fad.ms_deform_attn.default, (value, shapes, starts, loc, attn))
    grad = torch.randn(2, 3, 10)
    torch.library.opcheck(torch.ops.fad.ms_deform_attn_backward.default,
                          (grad, value.detach(), shapes, starts, loc.detach(), attn.detach()))


def test_torch_compile_fullgraph(cpu_kernel):
    args = random_msda_inputs(1, [(4, 3), (2, 2)], 2, 4, 3, 2, dtype=torch.float32, seed=6)
    value, shapes, starts, loc, attn = args
    for t in (value, loc, attn):
        t.requires_grad_()
    compiled = torch.compile(multi_scale_deformable_attention, backend="aot_eager",
                             fullgraph=True)
    out = compiled(*args)
    out.sum().backward()
    grads = [t.grad.clone() for t in (value, loc, attn)]
    torch.testing.assert_close(out, ms_deform_attn_reference(*args))
    ref_grads = torch.autograd.grad(ms_deform_attn_reference(*args).sum(), (value, loc, attn))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_torch_export(cpu_kernel):
    class Wrap(torch.nn.Module):
        def forward(self, value, shapes, starts, loc, attn):
            return multi_scale_deformable_attention(value, shapes, starts, loc, attn) * 2

    args = random_msda_inputs(1, [(4, 3), (2, 2)], 2, 4, 3, 2, dtype=torch.float32, seed=7)
    program = torch.export.export(Wrap(), args)
    assert any(n.target is torch.ops.fad.ms_deform_attn.default for n in program.graph.nodes)
    torch.testing.assert_close(program.module()(*args), 2 * ms_deform_attn_reference(*args))


def test_flop_counter_counts_msda(cpu_kernel):
    """5 per channel of every sampling point (4 bilinear corners + the weighting), all sizes
    distinct: 3 images x 7 queries x 2 heads x 4 levels x 5 points x 6 channels x 5 = 25200."""
    value, shapes, starts, loc, attn = random_msda_inputs(3, LEVELS, 2, 6, 7, 5,
                                                          dtype=torch.float32)
    value.requires_grad_()
    with FlopCounterMode(display=False) as counter:
        multi_scale_deformable_attention(value, shapes, starts, loc, attn).sum().backward()
    counts = counter.get_flop_counts()["Global"]
    assert counts[torch.ops.fad.ms_deform_attn] == 25200
    assert counts[torch.ops.fad.ms_deform_attn_backward] == 2 * 25200


def test_bad_inputs_raise_one_line_errors():
    value, shapes, starts, loc, attn = random_msda_inputs(1, [(2, 2)], 2, 4, 3, 2)
    cases = [((value, shapes, starts, loc, attn[..., :1]), "attention_weights must be"),
             ((value, shapes, starts, loc, attn.long()), "must be floating point"),
             ((value, shapes.view(-1), starts, loc, attn), "spatial_shapes must be")]
    for args, message in cases:
        with pytest.raises(OpError, match=message) as info:
            multi_scale_deformable_attention(*args)
        assert "\n" not in str(info.value) and ".py" not in str(info.value)


def _triton_cpu(monkeypatch) -> None:
    """The triton backend on CPU tensors: Triton's interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_levels_that_do_not_fit_value_are_an_error_on_every_backend(monkeypatch, backend):
    if backend == "cpp" and shutil.which("c++") is None:
        pytest.skip("no C++ compiler on PATH")
    if backend == "triton":
        _triton_cpu(monkeypatch)
    set_backend("msda", backend)
    value, shapes, starts, loc, attn = random_msda_inputs(1, [(3, 2), (2, 2)], 2, 4, 3, 2)
    bad = [(shapes * 2, starts), (shapes, starts + 1), (shapes, starts.flip(0)),
           (shapes - 3, starts)]
    for bad_shapes, bad_starts in bad:
        with pytest.raises(OpError, match="do not describe value's S = 10 tokens") as info:
            multi_scale_deformable_attention(value, bad_shapes, bad_starts, loc, attn)
        assert "\n" not in str(info.value) and ".py" not in str(info.value)
    grad = torch.ones(1, 3, 8, dtype=value.dtype)
    with pytest.raises(OpError, match="do not describe"):
        torch.ops.fad.ms_deform_attn_backward(grad, value, shapes * 2, starts, loc, attn)


def test_triton_backend_matches_reference_under_the_interpreter():
    """The dispatch reaches fad.ops.msda.triton (forward, the three gradients, opcheck of the
    custom op, torch.compile fullgraph). A fresh process: Triton must be imported with
    TRITON_INTERPRET=1 already set."""
    code = """
import torch
from fad.ops import ms_deform_attn_reference, multi_scale_deformable_attention, set_backend
from fad.ops.msda import backend_for
from fad.ops.msda.inputs import random_msda_inputs
set_backend("msda", "triton")
assert backend_for("cpu") == "triton"
args = random_msda_inputs(2, [(4, 3), (2, 5)], 2, 8, 3, 2, dtype=torch.float32, seed=8)
leaves = [args[i].requires_grad_() for i in (0, 3, 4)]
out = multi_scale_deformable_attention(*args)
grad = torch.randn_like(out)
ref = ms_deform_attn_reference(*args)
torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
got = torch.autograd.grad(out, leaves, grad)
for g, r in zip(got, torch.autograd.grad(ref, leaves, grad)):
    torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)
torch.library.opcheck(torch.ops.fad.ms_deform_attn.default, args)
compiled = torch.compile(multi_scale_deformable_attention, backend="aot_eager", fullgraph=True)
torch.testing.assert_close(compiled(*args), ref, rtol=1e-5, atol=1e-5)
print("ok")
"""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    env.pop("FAD_MSDA_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_mixed_dtypes_are_promoted(cpu_kernel):
    value, shapes, starts, loc, attn = random_msda_inputs(1, [(3, 2)], 2, 4, 3, 2)
    out = multi_scale_deformable_attention(value.float(), shapes, starts, loc, attn.half())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ms_deform_attn_reference(
        value.float().double(), shapes, starts, loc, attn.half().double()))


def test_cpu_autocast_computes_in_float32(cpu_kernel):
    value, shapes, starts, loc, attn = random_msda_inputs(1, [(3, 2)], 2, 4, 3, 2,
                                                          dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = multi_scale_deformable_attention(value.bfloat16(), shapes, starts,
                                               loc.bfloat16(), attn.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ms_deform_attn_reference(
        value.bfloat16().float(), shapes, starts, loc.bfloat16().float(),
        attn.bfloat16().float()))


def test_kernel_rejects_shapes_that_do_not_fit(cpu_kernel):
    value, shapes, starts, loc, attn = random_msda_inputs(1, [(2, 2)], 2, 4, 3, 2)
    with pytest.raises(RuntimeError, match="does not fit"):
        cpu_kernel.forward(value, shapes * 2, starts, loc, attn)


def test_backend_setting_config_and_environment(monkeypatch):
    from fad.config import get_cfg_defaults
    from fad.ops import msda

    monkeypatch.delenv("FAD_MSDA_BACKEND", raising=False)
    cfg = get_cfg_defaults()
    cfg.MODEL.OPS.MSDA_BACKEND = "reference"
    backends.configure_backends(cfg)
    assert backends.get_backend("msda") == "reference" and msda.backend_for("cpu") == "reference"
    monkeypatch.setenv("FAD_MSDA_BACKEND", "cpp")  # the environment overrides the config
    assert backends.get_backend("msda") == "cpp"
    monkeypatch.setenv("FAD_MSDA_BACKEND", "bogus")
    with pytest.raises(OpError, match="FAD_MSDA_BACKEND"):
        backends.get_backend("msda")
    monkeypatch.delenv("FAD_MSDA_BACKEND")
    cfg.MODEL.OPS.MSDA_BACKEND = "fastest"
    with pytest.raises(OpError, match="MODEL.OPS.MSDA_BACKEND"):
        backends.configure_backends(cfg)
    with pytest.raises(OpError, match="unknown depthwise backend 'triton'"):
        backends.set_backend("depthwise", "triton")
    for name in ("auto", "reference", "cpp", "cuda", "triton"):
        set_backend("msda", name)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in msda.backend_unavailable("triton", "cpu")
    assert "runs cuda tensors" in msda.backend_unavailable("cuda", "cpu")
    assert "runs cpu tensors" in msda.backend_unavailable("cpp", "cuda")
    set_backend("msda", "cuda")
    with pytest.raises(build.ExtensionUnavailable, match="msda backend 'cuda'"):
        multi_scale_deformable_attention(*random_msda_inputs(1, [(3, 2)], 2, 4, 3, 2))


def test_auto_falls_back_once_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(build, "load_error", {"msda_cpu": "no C++ compiler (test)"}.get)
    monkeypatch.setattr(backends.STATE, "warned", set())
    args = random_msda_inputs(1, [(3, 2)], 2, 4, 3, 2)
    set_backend("msda", "auto")
    with caplog.at_level(logging.WARNING, logger="fad.ops.backends"):
        out1 = multi_scale_deformable_attention(*args)
        out2 = multi_scale_deformable_attention(*args)
    set_backend("msda", "cpp")
    with pytest.raises(build.ExtensionUnavailable,
                       match="msda backend 'cpp' .* no C\\+\\+ compiler"):
        multi_scale_deformable_attention(*args)
    notices = [r for r in caplog.records if "pure-PyTorch reference" in r.getMessage()]
    assert len(notices) == 1 and "no C++ compiler (test)" in notices[0].getMessage()
    torch.testing.assert_close(out1, ms_deform_attn_reference(*args))
    torch.testing.assert_close(out2, out1)
