"""Triton MSDA kernels on the CPU through Triton's interpreter (TRITON_INTERPRET=1) vs the
pure-PyTorch reference, plus an ahead-of-time compile of the same kernels for CUDA targets.

Triton reads TRITON_INTERPRET when it is first imported (its library functions, e.g. tl.sum,
are jit-wrapped then), so the variable is set here before anything imports triton. When another
module imported triton first (a whole-suite run), the interpreter tests run in a fresh process
instead (`test_interpreter_tests_in_fresh_process`); the compile tests need the opposite (triton
imported without the interpreter) and likewise move to a fresh process when they must.

Tolerances (atol is relative to the largest reference magnitude of the compared tensor):
float64: rtol 1e-12, atol 1e-12 * max|ref| (forward and all gradients);
float32 inputs vs a float64 reference: rtol 1e-5, atol 1e-5 * max|ref|;
float16 / bfloat16 inputs vs the float32 reference on the upcast inputs: rtol = tol,
atol = tol * max|ref| with tol 1e-2 (float16) and 3e-2 (bfloat16).
"""
import importlib.util
import math
import os
import subprocess
import sys

if "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")

from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from fad.errors import OpError  # noqa: E402
from fad.ops import ms_deform_attn_reference  # noqa: E402
from fad.ops.msda import triton as msda_triton  # noqa: E402
from fad.ops.msda.inputs import level_tensors, random_msda_inputs  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# triton was imported under TRITON_INTERPRET=1: its library runs in the interpreter
INTERPRETED = isinstance(triton.language.zeros, InterpretedFunction)
interpreter = pytest.mark.skipif(
    not INTERPRETED, reason="triton was imported without TRITON_INTERPRET=1 in this process; "
    "test_interpreter_tests_in_fresh_process runs this test")
compiler = pytest.mark.skipif(
    INTERPRETED, reason="triton was imported under TRITON_INTERPRET=1 in this process; "
    "test_compile_tests_in_fresh_process runs this test")

# (batch, [(H, W) per level], heads M, head dim D, queries Lq, points P)
CASES = {
    "1lvl-3x5-D32": (1, [(3, 5)], 1, 32, 5, 2),
    "2lvl-1x7-D7-N2": (2, [(3, 5), (1, 7)], 2, 7, 6, 3),
    "3lvl-1x1-D5-N2": (2, [(4, 4), (2, 3), (1, 1)], 3, 5, 9, 2),
    "4lvl-D32-N2": (2, [(6, 4), (3, 2), (1, 1), (5, 7)], 2, 32, 8, 4),
    # BLOCK_D = 512 -> BLOCK_Q = 4: three query blocks, the last one masked
    "2lvl-D257-qblocks": (1, [(2, 3), (3, 2)], 1, 257, 9, 2),
}
HIGH = {torch.float64: 1e-12, torch.float32: 1e-5}
LOW = {torch.float16: 1e-2, torch.bfloat16: 3e-2}


def _inputs(case: str, dtype: torch.dtype, kinks: bool = True, seed: int = 0):
    batch, shapes, heads, dim, queries, points = CASES[case]
    return random_msda_inputs(batch, shapes, heads, dim, queries, points, dtype=dtype,
                              seed=seed, edges=True, kinks=kinks)


def _reference_grads(grad_output, value, shapes, starts, loc, attn):
    """Autograd through the reference: (grad_value, grad_loc, grad_attn)."""
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
    out = ms_deform_attn_reference(leaves[0], shapes, starts, leaves[1], leaves[2])
    return torch.autograd.grad(out, leaves, grad_output)


def _upcast(args, dtype):
    return [a.to(dtype) if a.is_floating_point() else a for a in args]


def _check_close(got, ref, tol):
    """got (any float dtype) vs ref: rtol = tol, atol = tol * max|ref|."""
    torch.testing.assert_close(got.to(ref.dtype), ref, rtol=tol,
                               atol=tol * max(ref.abs().max().item(), 1.0))


@interpreter
def test_kernels_run_in_the_interpreter():
    """TRITON_INTERPRET=1 is honoured: interpreter-wrapped kernels that take CPU tensors."""
    assert all(isinstance(k, InterpretedFunction) for k in msda_triton._kernels(True))
    args = _inputs("1lvl-3x5-D32", torch.float32)
    assert msda_triton.msda_triton_forward(*args).device.type == "cpu"


@interpreter
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_reference(case, dtype):
    """Edge points (borders, corners, outside, the kinks at -1, 0, W - 1, W) included."""
    args = _inputs(case, dtype)
    out = msda_triton.msda_triton_forward(*args)
    batch, _, heads, dim, queries, _ = CASES[case]
    assert out.shape == (batch, queries, heads * dim) and out.dtype == dtype
    _check_close(out, ms_deform_attn_reference(*_upcast(args, torch.float64)), HIGH[dtype])


@interpreter
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_backward_matches_autograd_of_reference(case, dtype):
    """All three gradients; edge points without the kinks (-1, 0, W - 1, W), where the slope is
    one-sided and grid_sample's rounding picks a different side."""
    args = _inputs(case, dtype, kinks=False, seed=2)
    batch, _, heads, dim, queries, _ = CASES[case]
    grad_output = torch.randn(batch, queries, heads * dim,
                              generator=torch.Generator().manual_seed(3), dtype=dtype)
    got = msda_triton.msda_triton_backward(grad_output, *args)
    ref = _reference_grads(*_upcast([grad_output, *args], torch.float64))
    for g, r, leaf in zip(got, ref, (args[0], args[3], args[4])):
        assert g.shape == leaf.shape and g.dtype == dtype
        _check_close(g, r, HIGH[dtype])


@interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["2lvl-1x7-D7-N2", "4lvl-D32-N2"])
def test_low_precision_accumulates_in_float32(case, dtype):
    """Half inputs: forward and gradients in the input dtype, close to the float32 reference."""
    args = _inputs(case, dtype, kinks=False, seed=1)
    out = msda_triton.msda_triton_forward(*args)
    assert out.dtype == dtype
    wide = _upcast(args, torch.float32)
    _check_close(out, ms_deform_attn_reference(*wide), LOW[dtype])
    grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    got = msda_triton.msda_triton_backward(grad_output, *args)
    for g, r in zip(got, _reference_grads(grad_output.float(), *wide)):
        assert g.dtype == dtype
        _check_close(g, r, LOW[dtype])


@interpreter
def test_points_that_sample_nothing():
    """Pixel coordinate <= -1 or >= W (H), and NaN: zero output and zero gradients, as the C++
    kernels (grid_sample differs only at exactly -1 / W, where it keeps a one-sided slope)."""
    value, shapes, starts, _, _ = random_msda_inputs(2, [(3, 5), (1, 7)], 2, 7, 1, 1)
    h, w = shapes[:, 0].double(), shapes[:, 1].double()
    pix = [(-1.0, 1.0), (w - 0.5, h), (w, h - 0.5), (-3.0, -3.0), (1.0, math.nan)]
    loc = torch.stack([torch.stack([(x + 0.5) / w, (y + 0.5) / h], -1) for x, y in pix])
    loc = loc.view(1, len(pix), 1, 2, 1, 2).expand(2, -1, 2, -1, -1, -1).contiguous()
    attn = torch.ones(loc.shape[:-1], dtype=torch.float64)
    out = msda_triton.msda_triton_forward(value, shapes, starts, loc, attn)
    assert out.abs().max() == 0
    grads = msda_triton.msda_triton_backward(torch.ones_like(out), value, shapes, starts, loc,
                                             attn)
    assert all(g.abs().max() == 0 for g in grads)


@interpreter
def test_forward_hand_computed():
    """One 2x2 level, one point at pixel (0.25, 0.5): bilinear mix of the four values."""
    value = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 4, 1, 1)
    shapes, starts = level_tensors([(2, 2)])
    loc = torch.tensor([(0.25 + 0.5) / 2, (0.5 + 0.5) / 2], dtype=torch.float64)
    attn = torch.full((1, 1, 1, 1, 1), 0.5, dtype=torch.float64)
    out = msda_triton.msda_triton_forward(value, shapes, starts, loc.view(1, 1, 1, 1, 1, 2), attn)
    expected = 0.5 * (0.75 * 0.5 * 1 + 0.25 * 0.5 * 2 + 0.75 * 0.5 * 3 + 0.25 * 0.5 * 4)
    assert out.item() == pytest.approx(expected, abs=1e-15)


def test_empty_inputs_launch_nothing():
    value, shapes, starts, loc, attn = random_msda_inputs(1, [(2, 2)], 1, 4, 1, 1)
    out = msda_triton.msda_triton_forward(value, shapes, starts, loc[:, :0], attn[:, :0])
    assert out.shape == (1, 0, 4)
    grads = msda_triton.msda_triton_backward(out, value, shapes, starts, loc[:, :0], attn[:, :0])
    assert grads[0].shape == value.shape and grads[0].abs().max() == 0


def test_errors_name_the_problem(monkeypatch):
    args = _inputs("1lvl-3x5-D32", torch.float32)
    with pytest.raises(OpError, match="share one of"):
        msda_triton.msda_triton_forward(args[0].double(), *args[1:])
    with pytest.raises(OpError, match="must be int64"):
        msda_triton.msda_triton_forward(args[0], args[1].int(), *args[2:])
    monkeypatch.setenv("TRITON_INTERPRET", "0" if INTERPRETED else "1")
    with pytest.raises(OpError, match="before anything imports triton"):
        msda_triton.msda_triton_forward(*args)
    monkeypatch.setattr(msda_triton, "triton", None)
    assert "not installed" in msda_triton.triton_unavailable()
    with pytest.raises(OpError, match="triton package is not installed"):
        msda_triton.msda_triton_forward(*args)


def test_import_without_triton(monkeypatch):
    """The module imports when triton is absent; only a launch raises."""
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("msda_triton_no_triton", msda_triton.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.triton_unavailable() is not None
    with pytest.raises(OpError, match="not installed"):
        module.msda_triton_forward(*_inputs("1lvl-3x5-D32", torch.float32))


@compiler
@pytest.mark.parametrize("dtype,arch", [(torch.float32, 90), (torch.bfloat16, 80),
                                        (torch.float16, 90), (torch.float64, 80)])
def test_kernels_compile_for_cuda(dtype, arch):
    """The real (non-interpreted) kernels lower to PTX and a cubin for sm_<arch> with exactly the
    arguments a launch at a decoder shape passes (Triton's binder: alignment hints, constants,
    block sizes, num_warps): no GPU needed, and it catches what the interpreter does not check
    (types, layouts, atomics). Registers and spills: tests/test_triton_resources.py."""
    from fad.cli.bench.triton_resources import _launch, compile_launch

    for name in ("forward", "backward"):
        kernel, args, kwargs, _ = _launch(name, dtype, 32)
        compiled = compile_launch(kernel, args, kwargs, arch)
        assert compiled.asm["cubin"]
        assert ("atom.global" in compiled.asm["ptx"]) == (name == "backward")


@interpreter
def test_backward_with_non_contiguous_inputs():
    """Called directly with strided inputs, the gradients equal those of contiguous copies and
    come back contiguous (the kernel writes them densely)."""
    args = list(_inputs("4lvl-D32-N2", torch.float64, kinks=False, seed=5))
    strided = [args[0].transpose(0, 1).contiguous().transpose(0, 1), args[1], args[2],
               args[3].transpose(1, 2).contiguous().transpose(1, 2),
               args[4].transpose(1, 2).contiguous().transpose(1, 2)]
    assert not any(strided[i].is_contiguous() for i in (0, 3, 4))
    grad_output = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(6),
                              dtype=torch.float64).transpose(1, 2)
    got = msda_triton.msda_triton_backward(grad_output, *strided)
    ref = _reference_grads(grad_output, *args)
    for g, r in zip(got, ref):
        assert g.is_contiguous()
        _check_close(g, r, HIGH[torch.float64])
    _check_close(msda_triton.msda_triton_forward(*strided), ms_deform_attn_reference(*args),
                 HIGH[torch.float64])


@interpreter
def test_int64_offsets_match_int32(monkeypatch):
    """Tensors over 2**31 - 1 elements switch the kernels to int64 offsets (INDEX64); forced here
    on small inputs, that path gives the same forward and gradients."""
    args = _inputs("2lvl-1x7-D7-N2", torch.float64, kinks=False, seed=7)
    grad_output = torch.randn(2, 6, 14, generator=torch.Generator().manual_seed(8),
                              dtype=torch.float64)
    narrow = [msda_triton.msda_triton_forward(*args),
              *msda_triton.msda_triton_backward(grad_output, *args)]
    monkeypatch.setattr(msda_triton, "_INT32_MAX", 0)
    assert msda_triton.forward_launch(*args, narrow[0])[2]["INDEX64"]
    wide = [msda_triton.msda_triton_forward(*args),
            *msda_triton.msda_triton_backward(grad_output, *args)]
    for a, b in zip(wide, narrow):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)


def test_head_dim_zero_returns_empty_results():
    value, shapes, starts, loc, attn = random_msda_inputs(1, [(2, 2)], 2, 0, 3, 1)
    out = msda_triton.msda_triton_forward(value, shapes, starts, loc, attn)
    assert out.shape == (1, 3, 0)
    grads = msda_triton.msda_triton_backward(out, value, shapes, starts, loc, attn)
    assert [g.shape for g in grads] == [value.shape, loc.shape, attn.shape]
    assert all(g.abs().sum() == 0 for g in grads)


@pytest.mark.parametrize("dim,queries,dtype,expected", [
    (32, 300, torch.float32, (16, 32, 4)),     # 512-element tile: 4 per thread of 128
    (32, 300, torch.float64, (8, 32, 4)),      # float64: 2 per thread
    (1, 300, torch.float16, (128, 1, 4)),      # at most one query per thread
    (256, 300, torch.bfloat16, (2, 256, 4)),
    (1025, 300, torch.float32, (1, 2048, 16)),  # 16 warps x 32 x 4 = 2048
    (32, 5, torch.float32, (8, 32, 4)),        # no wider than next_power_of_2(Lq)
])
def test_block_config(dim, queries, dtype, expected):
    assert msda_triton.block_config(dim, queries, dtype) == expected


def test_backward_block_config_halves_wide_tiles():
    """Backward at BLOCK_D >= 256: 2 elements a thread (its cross-warp sums spilled at 4)."""
    assert msda_triton.block_config(256, 300, torch.float32, backward=True) == (1, 256, 4)
    assert msda_triton.block_config(64, 300, torch.float32, backward=True) == (8, 64, 4)
    # float64 there: 1 element a thread (2 spilled 16 bytes on sm_80), so 8 warps
    assert msda_triton.block_config(256, 300, torch.float64, backward=True) == (1, 256, 8)
    assert msda_triton.block_config(256, 300, torch.float64) == (1, 256, 4)
    assert msda_triton.block_config(1024, 300, torch.float64, backward=True) == (1, 1024, 16)


def _rerun_in_fresh_process(request, interpret: str, select: str) -> None:
    """Run this file's tests matching `select` in a new process with TRITON_INTERPRET set
    before triton's first import; fail with the tail of its output."""
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", select,
            os.path.abspath(__file__)]
    markexpr = request.config.getoption("markexpr")
    if markexpr:
        args[4:4] = ["-m", markexpr]
    env = dict(os.environ, TRITON_INTERPRET=interpret, OMP_NUM_THREADS="1")
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.skipif(INTERPRETED, reason="the interpreter tests ran in this process")
def test_interpreter_tests_in_fresh_process(request):
    _rerun_in_fresh_process(request, "1", "not compile and not fresh_process")


@pytest.mark.skipif(not INTERPRETED, reason="the compile tests ran in this process")
def test_compile_tests_in_fresh_process(request):
    _rerun_in_fresh_process(request, "0", "compile and not fresh_process")
