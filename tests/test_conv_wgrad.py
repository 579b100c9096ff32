"""`fad.ops.conv_wgrad`: the weight gradient of a convolution as GEMMs over blocks of its im2col
against a hand-written sum and aten's convolution backward (float64; whole, in blocks of images
and in bands of rows), the layer's autograd
against nn.Conv2d, which layers `use_gemm_weight_grad` changes, when the GEMM path runs, and a
DetectorStep training step with it equal to one without."""
import collections

import pytest
import torch
from conftest import tiny_fcos_cfg, two_image_batch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from fad.engine import trainer
from fad.modeling import build_detector
from fad.ops.backends import using
from fad.ops.conv_wgrad import (
    GemmWgradConv2d,
    dispatch,
    gemm,
    gemm_weight_grad_runs,
    layer,
    use_gemm_weight_grad,
    weight_grad_gemm,
)

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


def _conv_pair(bias: bool = True, **kwargs) -> tuple[nn.Conv2d, nn.Conv2d]:
    """A float64 nn.Conv2d(4, 6, 3, ...) and a GemmWgradConv2d copy of it."""
    torch.manual_seed(0)
    plain = nn.Conv2d(4, 6, 3, bias=bias, **kwargs).double()
    gemm = nn.Conv2d(4, 6, 3, bias=bias, **kwargs).double()
    gemm.load_state_dict(plain.state_dict())
    assert use_gemm_weight_grad(gemm) == 1 and type(gemm) is GemmWgradConv2d
    return plain, gemm


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kwargs", [{"padding": 1}, {"padding": 2, "dilation": 2},
                                    {"padding": (0, 1)}, {"padding": 1, "stride": 2}])
def test_layer_output_and_gradients_equal_nn_conv2d(kwargs, bias, monkeypatch):
    plain, gemm = _conv_pair(bias, **kwargs)
    calls = []
    monkeypatch.setattr(layer, "weight_grad_gemm",
                        lambda *a: calls.append(a) or weight_grad_gemm(*a))
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64).to(memory_format=torch.channels_last)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    with using("conv_wgrad", "gemm"):
        outs = [plain(xs[0]), gemm(xs[1])]
    assert type(outs[1].grad_fn).__name__ == "_Conv2dGemmWgradBackward"
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    grad = torch.randn_like(outs[0])
    for out in outs:
        out.backward(grad)
    assert len(calls) == 1
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gemm.weight.grad, plain.weight.grad, rtol=1e-12, atol=1e-12)
    if bias:
        torch.testing.assert_close(gemm.bias.grad, plain.bias.grad, rtol=1e-12, atol=1e-12)


def test_layer_gradcheck():
    _, gemm = _conv_pair(padding=1)
    x = torch.randn(1, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: layer._Conv2dGemmWgrad.apply(x, w, b, (2, 1), (1, 1), (1, 1)),
        (x, gemm.weight, gemm.bias))


def test_frozen_weight_and_eval_take_the_plain_convolution(monkeypatch):
    _, gemm = _conv_pair(padding=1)
    monkeypatch.setattr(layer, "weight_grad_gemm", lambda *a: pytest.fail("GEMM path ran"))
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    with using("conv_wgrad", "gemm"):
        with torch.no_grad():
            assert gemm(x).grad_fn is None
        gemm.weight.requires_grad_(False)
        gemm(x).sum().backward()  # input gradient only: aten's convolution backward
    assert x.grad is not None and gemm.weight.grad is None


def test_use_gemm_weight_grad_changes_the_eligible_convs_only():
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
    assert use_gemm_weight_grad(net) == 4
    assert [type(m) is GemmWgradConv2d for m in net.modules()] == [
        m is net[0] or m is net[1][0] or m is net[1][1] or m is net[2] for m in modules]
    assert list(net.modules()) == modules  # the same objects
    after = net.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    net(torch.randn(1, 3, 8, 8))
    assert hooked == [net[0]]
    assert use_gemm_weight_grad(net) == 0


def _call_runs(x: torch.Tensor, out_channels: int, kernel: int = 3) -> bool:
    weight = torch.zeros(out_channels, x.shape[1], kernel, kernel, dtype=x.dtype,
                         device=x.device, requires_grad=True)
    return gemm_weight_grad_runs(x, weight)


@pytest.mark.parametrize("capability", ["AVX2", "AVX512", "DEFAULT"])
def test_auto_runs_on_avx2_with_enough_output_channels_only(capability, monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    o, o1 = dispatch.MIN_OUT_CHANNELS, dispatch.MIN_OUT_CHANNELS_1X1
    x = torch.zeros(2, 3, 2, 2).to(memory_format=torch.channels_last)
    with using("conv_wgrad", "auto"):
        assert _call_runs(x, o) == (capability == "AVX2")
        assert _call_runs(x, o1, kernel=1) == (capability == "AVX2")
        assert not _call_runs(x.contiguous(), o)  # NCHW
        assert not _call_runs(x, o - 1)  # too few output channels
        assert not _call_runs(x, o1 - 1, kernel=1)  # too few for a 1x1
    with using("conv_wgrad", "reference"):
        assert not _call_runs(x, o)
    with using("conv_wgrad", "gemm"):
        assert _call_runs(torch.zeros(1, 2, 3, 3), 2)  # any size


def test_gemm_backend_runs_only_eligible_calls():
    x = torch.zeros(1, 2, 3, 3)
    with using("conv_wgrad", "gemm"):
        assert _call_runs(x, 2) and _call_runs(x.double(), 2)
        assert not _call_runs(x.bfloat16(), 2)
        assert not _call_runs(x.to("meta"), 2)
        with torch.no_grad():
            assert not _call_runs(x, 2)
        with torch.autocast("cpu", torch.bfloat16):
            assert not _call_runs(x, 2)
        assert not gemm_weight_grad_runs(x, torch.zeros(2, 2, 3, 3))  # frozen weight


def test_detector_step_with_the_gemm_weight_grad_equals_the_reference(
        synthetic_root, tmp_path, monkeypatch, float64_default):
    """A training step of the tiny FCOS (channels-last, as trained) in float64: the same losses
    and gradients with every eligible convolution's weight gradient from the GEMMs."""
    calls = []
    monkeypatch.setattr(layer, "weight_grad_gemm",
                        lambda *a: calls.append(a) or weight_grad_gemm(*a))
    losses, grads, calls_in = {}, {}, {}
    for backend in ("reference", "gemm"):
        monkeypatch.setenv("FAD_CONV_WGRAD_BACKEND", backend)
        cfg = tiny_fcos_cfg(synthetic_root, str(tmp_path / backend))
        torch.manual_seed(0)
        model = build_detector(cfg, 3)
        step = trainer.DetectorStep(cfg, model, torch.device("cpu"))
        trainable = sum(type(m) is GemmWgradConv2d and m.weight.requires_grad
                        for m in model.modules())
        calls.clear()
        losses[backend] = step.run(two_image_batch()).losses
        calls_in[backend] = len(calls)
        grads[backend] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert calls_in["reference"] == 0 and calls_in["gemm"] >= trainable > 0
    for key, value in losses["reference"].items():
        torch.testing.assert_close(losses["gemm"][key], value, rtol=1e-6, atol=1e-7)
    assert list(grads["gemm"]) == list(grads["reference"])
    for key, value in grads["reference"].items():
        torch.testing.assert_close(grads["gemm"][key], value, rtol=1e-9, atol=1e-12, msg=key)
