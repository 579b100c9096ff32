"""`fad.ops.sparse.stem` (the stem's conv, max pool and ReLU in one kernel) against PyTorch."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fad.ops.sparse import kernel_available, stem

BACKENDS = ["auto", "reference"]

# (N, H, W, kernel, stride, padding): the ResNet stem on odd sizes, several chunks with image
# boundaries inside a chunk at 2 threads (N = 3, 15 pooled lines per image), a map smaller than
# the kernel's window, a 3x3 stride-1 conv
SHAPES = [(2, 37, 50, 7, 2, 3), (3, 60, 45, 7, 2, 3), (1, 5, 4, 7, 2, 3), (2, 9, 11, 3, 1, 1)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n, h, w, k, s, p", SHAPES)
def test_stem_equals_conv_pool_relu(monkeypatch, threads, backend, n, h, w, k, s, p):
    monkeypatch.setenv("FAD_SPARSE_BACKEND", backend)
    torch.manual_seed(0)
    cin, c = 3, 16
    x = torch.randn(n, cin, h, w)
    weight, bias = torch.randn(c, cin, k, k), torch.randn(c)
    want = F.max_pool2d(F.conv2d(x, weight, bias, s, p), 3, 2, 1).relu()
    assert (want == 0).any() and (want > 0).any()  # the ReLU cut some outputs, not all
    with torch.no_grad():
        got = stem(x.permute(0, 2, 3, 1).reshape(-1, cin), n, h, w,
                   weight.permute(2, 3, 1, 0).reshape(-1, c).contiguous(), bias, k, s, p)
    torch.testing.assert_close(got, want.permute(0, 2, 3, 1).reshape(-1, c), atol=1e-5,
                               rtol=1e-5)


def test_stem_runs_the_kernel_on_the_cpu():
    assert kernel_available("cpu")  # else the test above compares the reference with itself


def test_stem_flop_count_is_the_same_on_both_backends(monkeypatch):
    torch.manual_seed(0)
    n, h, w, cin, c = 2, 19, 24, 3, 8
    rows, weight, bias = torch.randn(n * h * w, cin), torch.randn(49 * cin, c), torch.randn(c)
    counts = []
    for backend in BACKENDS:
        monkeypatch.setenv("FAD_SPARSE_BACKEND", backend)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            stem(rows, n, h, w, weight, bias, 7, 2, 3)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 2 * n * 10 * 12 * 49 * cin * c
