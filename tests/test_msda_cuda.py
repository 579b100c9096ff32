"""MSDA CUDA C++ kernel (backend "cuda") vs the grid_sample reference (runs only where a GPU is
present; `pytest -m cuda` selects these tests)."""
import pytest
import torch

from fad.errors import OpError
from fad.ops import (
    build,
    ms_deform_attn_reference,
    multi_scale_deformable_attention,
    set_backend,
)
from fad.ops.msda.inputs import random_msda_inputs
from fad.ops.msda.reference import ms_deform_attn_reference_backward

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

LEVELS = [(6, 4), (3, 2), (1, 1), (5, 7)]


@pytest.fixture(scope="module")
def cuda_kernel():
    build.load("msda_cuda")
    return torch.ops.fad_msda


@pytest.fixture(autouse=True)
def _cuda_backend():
    set_backend("msda", "cuda")
    yield
    set_backend("msda", None)


def _inputs(dim, dtype=torch.float64, **kw):
    kw.setdefault("edges", True)
    return random_msda_inputs(2, LEVELS, 2, dim, 8, 3, dtype=dtype, device="cuda", **kw)


def _as(args, dtype):
    return [a.to(dtype) if a.is_floating_point() else a for a in args]


@pytest.mark.parametrize("dim", [30, 32, 64, 71, 1025])
def test_forward_matches_reference(cuda_kernel, dim):
    args = _inputs(dim)
    ref = ms_deform_attn_reference(*args)
    torch.testing.assert_close(cuda_kernel.forward(*args), ref, rtol=1e-10, atol=1e-12)
    out32 = cuda_kernel.forward(*_as(args, torch.float32))
    torch.testing.assert_close(out32.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dim", [30, 32, 64, 71, 1025])
def test_backward_matches_reference(cuda_kernel, dim):
    args = _inputs(dim, kinks=False, seed=1)
    grad = torch.randn(2, 8, 2 * dim, dtype=torch.float64, device="cuda")
    expected = ms_deform_attn_reference_backward(grad, *args)
    for got, ref in zip(cuda_kernel.backward(grad, *args), expected):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)
    for got, ref in zip(cuda_kernel.backward(grad.float(), *_as(args, torch.float32)), expected):
        torch.testing.assert_close(got.double(), ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_native(cuda_kernel, dtype):
    args = _inputs(32, seed=2)
    ref = ms_deform_attn_reference(*_as(args, torch.float32))
    out = cuda_kernel.forward(*_as(args, dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)
    grads = cuda_kernel.backward(torch.ones_like(out), *_as(args, dtype))
    assert [g.dtype for g in grads] == [dtype] * 3 and all(g.isfinite().all() for g in grads)


def test_autocast_computes_in_float32(cuda_kernel):
    args = _as(_inputs(16, seed=3), torch.float16)
    with torch.autocast("cuda", dtype=torch.float16):
        out = multi_scale_deformable_attention(*args)
    assert out.dtype == torch.float32
    ref = ms_deform_attn_reference(*_as(args, torch.float32))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_gradcheck(cuda_kernel):
    value, shapes, starts, loc, attn = random_msda_inputs(1, [(4, 3), (2, 2)], 2, 33, 3, 2,
                                                          device="cuda", seed=4, margin=0.0)
    leaves = [t.requires_grad_() for t in (value, loc, attn)]
    assert torch.autograd.gradcheck(
        lambda v, loc_, a: multi_scale_deformable_attention(v, shapes, starts, loc_, a), leaves,
        eps=1e-6, atol=1e-5, rtol=1e-4)


def test_opcheck(cuda_kernel):
    value, shapes, starts, loc, attn = random_msda_inputs(2, [(4, 3), (2, 2)], 2, 5, 3, 2,
                                                          dtype=torch.float32, device="cuda")
    for t in (value, loc, attn):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.fad.ms_deform_attn.default, (value, shapes, starts, loc, attn))


def test_levels_that_do_not_fit_value_are_an_error(cuda_kernel):
    """The Python entry (every backend) and the C++ kernel itself reject out-of-bounds levels."""
    value, shapes, starts, loc, attn = random_msda_inputs(1, [(3, 2), (2, 2)], 2, 4, 3, 2,
                                                          device="cuda")
    with pytest.raises(OpError, match="do not describe value's S = 10 tokens"):
        multi_scale_deformable_attention(value, shapes * 2, starts, loc, attn)
    with pytest.raises(RuntimeError, match="does not fit in value's S = 10"):
        cuda_kernel.forward(value, shapes * 2, starts, loc, attn)
    grad = torch.ones(1, 3, 8, dtype=value.dtype, device="cuda")
    with pytest.raises(RuntimeError, match="does not fit in value's S = 10"):
        cuda_kernel.backward(grad, value, shapes, starts + 8, loc, attn)


# --- the Triton backend on CUDA (fad.ops.msda.triton compiled, not interpreted) ---

@pytest.fixture(scope="module")
def triton_kernels():
    """fad.ops.msda.triton, skipping when triton is missing or was imported for the
    interpreter (TRITON_INTERPRET=1 runs CPU tensors only)."""
    from fad.ops.msda import triton as msda_triton

    if msda_triton.triton_unavailable():
        pytest.skip(msda_triton.triton_unavailable())
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(msda_triton.tl.zeros, InterpretedFunction):
        pytest.skip("triton was imported with TRITON_INTERPRET=1 in this process")
    return msda_triton


TRITON_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2,
              torch.bfloat16: 5e-2}


def _triton_vs_reference(msda_triton, args64, dtype, device="cuda"):
    """Triton forward and gradients in `dtype` on `device` vs the float64 reference on the same
    (rounded to `dtype`) inputs; tolerances TRITON_TOL, atol relative to max|ref|."""
    args = [a.to(device) for a in _as(args64, dtype)]
    args64 = _as(_as(args64, dtype), torch.float64)
    out = msda_triton.msda_triton_forward(*args)
    assert out.dtype == dtype and out.device == args[0].device
    ref = ms_deform_attn_reference(*args64)
    tol = TRITON_TOL[dtype]
    scale = max(ref.abs().max().item(), 1.0)
    torch.testing.assert_close(out.double().cpu(), ref.cpu(), rtol=tol, atol=tol * scale)
    grad = torch.randn(ref.shape, dtype=torch.float64, device=ref.device).to(dtype).double()
    expected = ms_deform_attn_reference_backward(grad, *args64)
    got = msda_triton.msda_triton_backward(grad.to(device, dtype), *args)
    for g, r, leaf in zip(got, expected, (args[0], args[3], args[4])):
        assert g.shape == leaf.shape and g.dtype == dtype and g.device == leaf.device
        scale = max(r.abs().max().item(), 1.0)
        torch.testing.assert_close(g.double().cpu(), r.cpu(), rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("dtype,dim", [
    (torch.float32, 1), (torch.float32, 32), (torch.float32, 64), (torch.float32, 256),
    (torch.float64, 7), (torch.float64, 32), (torch.float16, 32), (torch.bfloat16, 7),
    (torch.bfloat16, 64)])  # each pair compiles its own kernels: a few, not the product
def test_triton_matches_reference_every_dtype(triton_kernels, dtype, dim):
    _triton_vs_reference(triton_kernels, _inputs(dim, kinks=False, seed=5), dtype)


def test_triton_non_contiguous_inputs(triton_kernels):
    """Strided value/loc/attn/grad_output called directly (no op in between): same results as
    their contiguous copies, and contiguous gradients."""
    value, shapes, starts, loc, attn = _inputs(32, dtype=torch.float32, kinks=False, seed=6)
    value_t = value.transpose(0, 1).contiguous().transpose(0, 1)
    loc_t = loc.transpose(1, 2).contiguous().transpose(1, 2)
    attn_t = attn.transpose(1, 2).contiguous().transpose(1, 2)
    assert not (value_t.is_contiguous() or loc_t.is_contiguous() or attn_t.is_contiguous())
    out = triton_kernels.msda_triton_forward(value, shapes, starts, loc, attn)
    out_t = triton_kernels.msda_triton_forward(value_t, shapes, starts, loc_t, attn_t)
    torch.testing.assert_close(out_t, out, rtol=1e-6, atol=1e-6)
    grad = torch.randn(out.shape[::-1], device="cuda").transpose(0, 2)
    got = triton_kernels.msda_triton_backward(grad, value_t, shapes, starts, loc_t, attn_t)
    want = triton_kernels.msda_triton_backward(grad.contiguous(), value, shapes, starts, loc,
                                               attn)
    for g, w in zip(got, want):
        assert g.is_contiguous()
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second CUDA device")
def test_triton_on_a_second_device_without_set_device(triton_kernels):
    """Tensors on cuda:1 while cuda:0 is current: the launch runs on cuda:1."""
    assert torch.cuda.current_device() == 0
    _triton_vs_reference(triton_kernels, _inputs(32, kinks=False, seed=7), torch.float32,
                         device="cuda:1")
    assert torch.cuda.current_device() == 0


def test_triton_backend_through_the_op(triton_kernels):
    """backend "triton": forward and autograd of the op match the reference in float32."""
    set_backend("msda", "triton")
    args = _inputs(32, dtype=torch.float32, kinks=False, seed=8)
    leaves = [args[0].requires_grad_(), args[3].requires_grad_(), args[4].requires_grad_()]
    out = multi_scale_deformable_attention(*args)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = ms_deform_attn_reference(ref_leaves[0], args[1], args[2], *ref_leaves[1:])
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, leaves, grad.float())
    want = torch.autograd.grad(ref, ref_leaves, grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-3, atol=1e-3 * max(w.abs().max(), 1))
