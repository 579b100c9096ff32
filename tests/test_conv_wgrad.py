"""`fad.ops.conv_wgrad`: the weight gradient of a convolution as GEMMs over blocks of its im2col
and from the direct kernel against a hand-written sum and aten's convolution backward (float64;
GEMMs whole, in blocks of images and in bands of rows; the kernel's register blocks and tails,
float32 on both CPU copies), the layer's autograd against nn.Conv2d, which layers
`use_fast_weight_grad` changes, which path each call takes, and a DetectorStep training step
with each equal to one without."""
import collections

import pytest
import torch
from conftest import run_at_baseline_isa, tiny_fcos_cfg, two_image_batch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from fad.engine import trainer
from fad.modeling import build_detector
from fad.ops.backends import using
from fad.ops.build import ExtensionUnavailable, load_error
from fad.ops.conv_wgrad import (
    WgradConv2d,
    dispatch,
    gemm,
    layer,
    use_fast_weight_grad,
    weight_grad_direct,
    weight_grad_gemm,
    weight_grad_path,
)

needs_kernel = pytest.mark.skipif(load_error("conv_wgrad_cpu") is not None,
                                  reason="the conv_wgrad_cpu kernel cannot be built here")

# (N, C, O, H, W, kernel, stride, padding, dilation)
CASES = [
    (2, 3, 4, 9, 11, (3, 3), (1, 1), (1, 1), (1, 1)),
    (1, 5, 2, 7, 6, (3, 3), (1, 1), (2, 2), (2, 2)),
    (3, 4, 3, 8, 10, (3, 5), (1, 1), (1, 2), (1, 1)),
    (2, 2, 6, 6, 9, (3, 3), (1, 1), (0, 0), (1, 1)),  # no padding: a smaller output
    (1, 3, 3, 5, 12, (5, 3), (1, 1), (1, 0), (1, 2)),  # padding and dilation differ per side
    (2, 4, 4, 1, 1, (3, 3), (1, 1), (1, 1), (1, 1)),  # a 1x1 map: all taps but the centre
    (2, 6, 5, 4, 7, (1, 1), (1, 1), (0, 0), (1, 1)),  # 1x1
    (1, 3, 2, 4, 5, (1, 1), (1, 1), (1, 0), (1, 1)),  # a padded 1x1
    (2, 3, 4, 9, 11, (3, 3), (2, 2), (1, 1), (1, 1)),  # strided, odd map
    (2, 6, 4, 8, 7, (1, 1), (2, 2), (0, 0), (1, 1)),  # strided 1x1 (a downsample)
    (1, 3, 5, 13, 10, (7, 7), (2, 2), (3, 3), (1, 1)),  # a ResNet stem
    (2, 4, 3, 10, 9, (3, 3), (2, 1), (1, 2), (2, 1)),  # stride, padding, dilation per side
    (1, 2, 3, 5, 5, (3, 3), (3, 3), (0, 0), (1, 1)),  # stride = kernel: no overlap
]



def _tensors(case, channels_last: bool):
    """x Tensor[N, C, H, W], weight Tensor[O, C, kh, kw], grad_out Tensor[N, O, Ho, Wo]."""
    n, c, o, h, w, kernel, stride, padding, dilation = case
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(o, c, *kernel, generator=g, dtype=torch.float64)
    ho, wo = gemm.conv_output_size((h, w), kernel, stride, padding, dilation)
    grad = torch.randn(n, o, ho, wo, generator=g, dtype=torch.float64)
    if channels_last:
        x, grad = (t.to(memory_format=torch.channels_last) for t in (x, grad))
    return x, weight, grad


def _aten_weight_grad(x, grad, weight, stride, padding, dilation):
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, list(stride), list(padding), list(dilation), False, [0, 0], 1,
        [False, True, False])[1]


def _col_budget(blocks: str, grad: torch.Tensor, weight: torch.Tensor) -> int:
    """A COL_BYTES that puts the columns (float64) in one block ("whole"), in blocks of two
    images, in bands of two output rows of one image, or in bands of one row."""
    ho, wo = grad.shape[2:]
    row = wo * weight[0].numel() * 8
    return {"whole": gemm.COL_BYTES, "images": 2 * ho * row, "bands": 2 * row + 1,
            "rows": 1}[blocks]


def test_conv_output_size_is_conv2d_s():
    for case in CASES:
        x, weight, _ = _tensors(case, False)
        out = torch.nn.functional.conv2d(x, weight, None, *case[6:])
        assert gemm.conv_output_size(tuple(x.shape[2:]), *case[5:]) == tuple(out.shape[2:])


@pytest.mark.parametrize("blocks", ["whole", "images", "bands", "rows"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", CASES)
def test_weight_grad_gemm_equals_aten(case, channels_last, blocks, monkeypatch):
    x, weight, grad = _tensors(case, channels_last)
    monkeypatch.setattr(gemm, "COL_BYTES", _col_budget(blocks, grad, weight))
    got = weight_grad_gemm(x, grad, *case[5:])
    assert got.shape == weight.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, _aten_weight_grad(x, grad, weight, *case[6:]),
                               rtol=1e-12, atol=1e-12)


@needs_kernel
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", CASES)
def test_weight_grad_direct_equals_aten(case, channels_last):
    x, weight, grad = _tensors(case, channels_last)
    got = weight_grad_direct(x, grad, *case[5:])
    assert got.shape == weight.shape and got.dtype == torch.float64
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, _aten_weight_grad(x, grad, weight, *case[6:]),
                               rtol=1e-12, atol=1e-12)


# float32 register blocks: input channels in blocks of 16 (+ a tail), output channels in blocks
# of 6 (a last 1-5; 7 and 8 left split 4 + 3 / 4 + 4).
BLOCK_CASES = [
    (2, 16, 6, 7, 9, (3, 3), (1, 1), (1, 1), (1, 1)),
    (2, 32, 32, 6, 11, (3, 3), (1, 1), (1, 1), (1, 1)),  # 6 x 4 + 4 + 4 outputs
    (1, 48, 13, 5, 8, (3, 3), (1, 1), (3, 3), (3, 3)),  # 6 + 7 -> 6 + 4 + 3
    (2, 40, 11, 6, 7, (3, 3), (2, 1), (1, 1), (1, 1)),  # 16 + 16 + a tail of 8
    (1, 64, 65, 4, 5, (1, 1), (1, 1), (0, 0), (1, 1)),
    (1, 24, 1, 9, 6, (5, 3), (1, 2), (2, 1), (1, 1)),
]


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", BLOCK_CASES)
def test_weight_grad_direct_float32_blocks_equal_float64_aten(case, threads):
    x, weight, grad = _tensors(case, channels_last=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = weight_grad_direct(x.float(), grad.float(), *case[5:])
    finally:
        torch.set_num_threads(previous)
    assert got.dtype == torch.float32
    want = _aten_weight_grad(x, grad, weight, *case[6:])
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max())


@needs_kernel
@pytest.mark.parametrize("case", [CASES[0], CASES[4], CASES[10]])
def test_weight_grad_direct_counts_the_flops_aten_counts(case):
    x, weight, grad = _tensors(case, channels_last=True)
    counts = []
    for run in (lambda: weight_grad_direct(x, grad, *case[5:]),
                lambda: _aten_weight_grad(x, grad, weight, *case[6:])):
        with FlopCounterMode(display=False) as counter:
            run()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


@needs_kernel
def test_weight_grad_direct_rejects_bad_input():
    x, _, grad = _tensors(CASES[0], False)
    with pytest.raises(RuntimeError, match="is not the output of x"):
        weight_grad_direct(x, grad[:, :, 1:], (3, 3), (1, 1), (1, 1), (1, 1))
    with pytest.raises(RuntimeError, match="one dtype"):
        weight_grad_direct(x, grad.float(), (3, 3), (1, 1), (1, 1), (1, 1))


def test_baseline_isa_direct_kernel_equals_aten():
    """ATEN_CPU_CAPABILITY=default runs the non-AVX2 copy of the kernel's loops."""
    run_at_baseline_isa(
        "import torch\n"
        "from fad.ops.build import load; load('conv_wgrad_cpu')\n"
        "from fad.ops.conv_wgrad import weight_grad_direct\n"
        "cb = torch.ops.aten.convolution_backward\n"
        "for c, o, d in ((40, 13, 1), (16, 8, 2)):\n"
        "    x = torch.randn(2, c, 7, 9).to(memory_format=torch.channels_last)\n"
        "    w = torch.randn(o, c, 3, 3)\n"
        "    g = torch.randn(2, o, 7, 9).to(memory_format=torch.channels_last)\n"
        "    got = weight_grad_direct(x, g, (3, 3), (1, 1), (d, d), (d, d))\n"
        "    want = cb(g, x, w, None, [1, 1], [d, d], [d, d], False, [0, 0], 1,\n"
        "              [False, True, False])[1]\n"
        "    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)",
        {"OMP_NUM_THREADS": "1"}, timeout=900)


def test_weight_grad_gemm_equals_the_sum_over_positions_by_hand():
    """grad_w[o, c, i, j] = sum over n, y, x of
    grad[n, o, y, x] * x_padded[n, c, y sh + i dh, x sw + j dw]."""
    case = (2, 2, 3, 5, 7, (3, 2), (2, 1), (1, 1), (2, 1))
    x, _, grad = _tensors(case, False)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = case[5:]
    padded = torch.nn.functional.pad(x, (pw, pw, ph, ph))
    ho, wo = grad.shape[2:]
    want = torch.zeros(3, 2, kh, kw, dtype=torch.float64)
    for i in range(kh):
        for j in range(kw):
            window = padded[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                            j * dw:j * dw + sw * (wo - 1) + 1:sw]  # [N, C, Ho, Wo]
            want[:, :, i, j] = torch.einsum("noyx,ncyx->oc", grad, window)
    torch.testing.assert_close(weight_grad_gemm(x, grad, *case[5:]), want,
                               rtol=1e-12, atol=1e-12)
    if load_error("conv_wgrad_cpu") is None:
        torch.testing.assert_close(weight_grad_direct(x, grad, *case[5:]), want,
                                   rtol=1e-12, atol=1e-12)


class _CountOps(TorchDispatchMode):
    """Counts the aten ops called under it by name (`copy_`, `addmm_`, ...)."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("blocks", ["whole", "rows"])
def test_a_1x1_stride_1_layer_takes_x_rows_without_a_copy(blocks, monkeypatch):
    """On a channels-last x the columns of a 1x1 stride-1 layer are x's NHWC rows: one GEMM over
    all images whatever COL_BYTES says, no copy; a strided 1x1 still copies its columns."""
    case = CASES[6]
    x, weight, grad = _tensors(case, channels_last=True)
    monkeypatch.setattr(gemm, "COL_BYTES", _col_budget(blocks, grad, weight))
    with _CountOps() as ops:
        got = weight_grad_gemm(x, grad, *case[5:])
    assert ops.counts["copy_"] == 0 and ops.counts["addmm_"] == 1
    torch.testing.assert_close(got, _aten_weight_grad(x, grad, weight, *case[6:]),
                               rtol=1e-12, atol=1e-12)
    strided = CASES[9]
    x, weight, grad = _tensors(strided, channels_last=True)
    with _CountOps() as ops:
        weight_grad_gemm(x, grad, *strided[5:])
    assert ops.counts["copy_"] >= 1


def test_weight_grad_gemm_rejects_a_grad_of_another_size():
    x, _, grad = _tensors(CASES[0], False)
    with pytest.raises(ValueError, match="not the output of x"):
        weight_grad_gemm(x, grad[:, :, 1:], (3, 3), (1, 1), (1, 1), (1, 1))


# backend -> (the name of the function in `layer` that computes the weight gradient, the path)
PATHS = {"gemm": ("weight_grad_gemm", "gemm"), "cpp": ("weight_grad_direct", "direct")}


FAST_BACKENDS = ["gemm", pytest.param("cpp", marks=needs_kernel)]


def _count_calls(monkeypatch, backend: str) -> list:
    """Record the calls of the weight-gradient function `backend` runs (it still computes)."""
    name = PATHS[backend][0]
    real, calls = getattr(layer, name), []
    monkeypatch.setattr(layer, name, lambda *a: calls.append(a) or real(*a))
    return calls


def _conv_pair(bias: bool = True, **kwargs) -> tuple[nn.Conv2d, nn.Conv2d]:
    """A float64 nn.Conv2d(4, 6, 3, ...) and a WgradConv2d copy of it."""
    torch.manual_seed(0)
    plain = nn.Conv2d(4, 6, 3, bias=bias, **kwargs).double()
    fast = nn.Conv2d(4, 6, 3, bias=bias, **kwargs).double()
    fast.load_state_dict(plain.state_dict())
    assert use_fast_weight_grad(fast) == 1 and type(fast) is WgradConv2d
    return plain, fast


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kwargs", [{"padding": 1}, {"padding": 2, "dilation": 2},
                                    {"padding": (0, 1)}, {"padding": 1, "stride": 2}])
def test_layer_output_and_gradients_equal_nn_conv2d(kwargs, bias, backend, monkeypatch):
    plain, fast = _conv_pair(bias, **kwargs)
    calls = _count_calls(monkeypatch, backend)
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64).to(memory_format=torch.channels_last)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    with using("conv_wgrad", backend):
        outs = [plain(xs[0]), fast(xs[1])]
    assert type(outs[1].grad_fn).__name__ == "_Conv2dWgradBackward"
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    grad = torch.randn_like(outs[0])
    for out in outs:
        out.backward(grad)
    assert len(calls) == 1
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-12, atol=1e-12)
    if bias:
        torch.testing.assert_close(fast.bias.grad, plain.bias.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", ["gemm", pytest.param("direct", marks=needs_kernel)])
def test_layer_gradcheck(path):
    _, fast = _conv_pair(padding=1)
    x = torch.randn(1, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: layer._Conv2dWgrad.apply(x, w, b, (2, 1), (1, 1), (1, 1), path),
        (x, fast.weight, fast.bias))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_frozen_weight_and_eval_take_the_plain_convolution(backend, monkeypatch):
    _, fast = _conv_pair(padding=1)
    monkeypatch.setattr(layer, PATHS[backend][0], lambda *a: pytest.fail(f"{backend} ran"))
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    with using("conv_wgrad", backend):
        with torch.no_grad():
            assert fast(x).grad_fn is None
        fast.weight.requires_grad_(False)
        fast(x).sum().backward()  # input gradient only: aten's convolution backward
    assert x.grad is not None and fast.weight.grad is None


def test_use_fast_weight_grad_changes_the_eligible_convs_only():
    class MyConv(nn.Conv2d):
        pass

    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 0: changed
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=2, dilation=2),  # 1.0: changed
                      nn.Conv2d(8, 8, 3, stride=2, padding=1)),  # 1.1: changed (strided)
        nn.Conv2d(8, 8, 1),  # 2: changed (1x1)
        nn.Conv2d(8, 8, 3, padding=1, groups=2),  # 3: grouped
        nn.Conv2d(8, 8, 3, padding="same"),  # 4: padding given as a string
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),  # 5: not zero padding
        MyConv(8, 8, 3, padding=1))  # 6: another class
    hooked = []
    net[0].register_forward_hook(lambda m, i, o: hooked.append(m))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modules = list(net.modules())
    assert use_fast_weight_grad(net) == 4
    assert [type(m) is WgradConv2d for m in net.modules()] == [
        m is net[0] or m is net[1][0] or m is net[1][1] or m is net[2] for m in modules]
    assert list(net.modules()) == modules  # the same objects
    after = net.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    net(torch.randn(1, 3, 8, 8))
    assert hooked == [net[0]]
    assert use_fast_weight_grad(net) == 0


def _path(x: torch.Tensor, out_channels: int, kernel: int = 3) -> str | None:
    weight = torch.zeros(out_channels, x.shape[1], kernel, kernel, dtype=x.dtype,
                         device=x.device, requires_grad=True)
    return weight_grad_path(x, weight)


@pytest.mark.parametrize("capability", ["AVX2", "AVX512", "DEFAULT"])
def test_auto_picks_gemm_direct_or_aten_by_layer_on_avx2_only(capability, monkeypatch):
    """auto on AVX2, channels-last: GEMMs from MIN_OUT_CHANNELS outputs (1x1:
    MIN_OUT_CHANNELS_1X1), the direct kernel for the smaller float32 layers with a kernel > 1x1
    and a multiple of 16 input channels, aten's for the rest; aten's on other CPUs and NCHW."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(dispatch, "use_cpu_kernel", lambda *a: True)
    o, o1 = dispatch.MIN_OUT_CHANNELS, dispatch.MIN_OUT_CHANNELS_1X1
    x = torch.zeros(2, 32, 2, 2).to(memory_format=torch.channels_last)
    avx2 = capability == "AVX2"
    with using("conv_wgrad", "auto"):
        assert _path(x, o) == ("gemm" if avx2 else None)
        assert _path(x, o1, kernel=1) == ("gemm" if avx2 else None)
        assert _path(x, o - 1) == ("direct" if avx2 else None)
        assert _path(x, o1 - 1, kernel=1) is None  # a small 1x1: aten's
        assert _path(x.contiguous(), o) is None  # NCHW
        assert _path(x.contiguous(), o - 1) is None
        assert _path(x[:, :24].contiguous(memory_format=torch.channels_last), o - 1) is None
        assert _path(x.double(), o - 1) is None  # the direct kernel pays in float32
        monkeypatch.setattr(dispatch, "use_cpu_kernel", lambda *a: False)  # did not build
        assert _path(x, o - 1) is None
        assert _path(x, o) == ("gemm" if avx2 else None)
    with using("conv_wgrad", "reference"):
        assert _path(x, o) is None and _path(x, o - 1) is None


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_a_named_backend_runs_every_eligible_call(backend):
    x = torch.zeros(1, 2, 3, 3)
    want = PATHS[backend][1]
    with using("conv_wgrad", backend):
        assert _path(x, 2) == want and _path(x.double(), 2) == want
        assert _path(x.bfloat16(), 2) is None
        assert _path(x.to("meta"), 2) is None
        with torch.no_grad():
            assert _path(x, 2) is None
        with torch.autocast("cpu", torch.bfloat16):
            assert _path(x, 2) is None
        assert weight_grad_path(x, torch.zeros(2, 2, 3, 3)) is None  # frozen weight


def test_cpp_backend_that_cannot_build_is_an_error(monkeypatch):
    def load(name):
        raise ExtensionUnavailable("no compiler (test)")

    monkeypatch.setattr("fad.ops.backends.load", load)
    with using("conv_wgrad", "cpp"), pytest.raises(ExtensionUnavailable, match="no compiler"):
        _path(torch.zeros(1, 2, 3, 3), 2)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_detector_step_with_a_fast_weight_grad_equals_the_reference(
        backend, synthetic_root, tmp_path, monkeypatch, float64_default):
    """A training step of the tiny FCOS (channels-last, as trained) in float64: the same losses
    and gradients with every eligible convolution's weight gradient from the GEMMs / the direct
    kernel."""
    calls = _count_calls(monkeypatch, backend)
    losses, grads, calls_in = {}, {}, {}
    for name in ("reference", backend):
        monkeypatch.setenv("FAD_CONV_WGRAD_BACKEND", name)
        cfg = tiny_fcos_cfg(synthetic_root, str(tmp_path / name))
        torch.manual_seed(0)
        model = build_detector(cfg, 3)
        step = trainer.DetectorStep(cfg, model, torch.device("cpu"))
        trainable = sum(type(m) is WgradConv2d and m.weight.requires_grad
                        for m in model.modules())
        calls.clear()
        losses[name] = step.run(two_image_batch()).losses
        calls_in[name] = len(calls)
        grads[name] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert calls_in["reference"] == 0 and calls_in[backend] >= trainable > 0
    for key, value in losses["reference"].items():
        torch.testing.assert_close(losses[backend][key], value, rtol=1e-6, atol=1e-7)
    assert list(grads[backend]) == list(grads["reference"])
    for key, value in grads["reference"].items():
        torch.testing.assert_close(grads[backend][key], value, rtol=1e-9, atol=1e-12, msg=key)
