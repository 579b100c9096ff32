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
