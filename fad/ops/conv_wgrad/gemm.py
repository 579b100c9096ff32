"""The weight gradient of a stride-1 convolution as one matrix product per kernel tap.

For a convolution y = conv2d(x, w) with stride 1, groups 1, zero padding (ph, pw) and dilation
(dh, dw), the gradient of w at tap (i, j) is a sum over the output positions p of
grad_y[p] (outer) x_padded[p + (i * dh, j * dw)]. With x padded once to its grid
(Hp, Wp) = (H + 2 ph, W + 2 pw), laid out as rows of channels (NHWC), and grad_y placed at the
top-left of the same grid (zeros elsewhere), the shift of tap (i, j) is the same row offset
s = i * dh * Wp + j * dw for every position, so each tap is one GEMM of two contiguous
row blocks: grad_w[:, :, i, j] = grad_rows[:Q].T @ x_rows[s : s + Q]. A shifted row that
crosses into the padding or the next image meets a zero row of grad_y. A 1x1 convolution
without padding is one GEMM of the two maps' own rows (no copy of channels-last maps).

On AVX2 CPUs oneDNN computes this gradient with its older direct kernel (`jit:avx2`), at about
half the rate of its forward convolution; the GEMMs (MKL) run near it (docs/ops.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def weight_grad_gemm(x: Tensor, grad_out: Tensor, kernel_size: tuple[int, int],
                     padding: tuple[int, int], dilation: tuple[int, int]) -> Tensor:
    """The weight gradient of `conv2d(x, w, stride=1, padding, dilation, groups=1)`.

    x Tensor[N, C, H, W], grad_out Tensor[N, O, Ho, Wo] (any memory layouts) ->
    Tensor[O, C, kh, kw] of x's dtype (strides of the [kh, kw, O, C] buffer it is built in).
    """
    n, c, h, w = x.shape
    o, ho, wo = grad_out.shape[1:]
    (kh, kw), (ph, pw), (dh, dw) = kernel_size, padding, dilation
    hp, wp = h + 2 * ph, w + 2 * pw
    if (ho, wo) != (hp - (kh - 1) * dh, wp - (kw - 1) * dw):
        raise ValueError(f"grad_out {tuple(grad_out.shape)} is not the stride-1 output of x "
                         f"{tuple(x.shape)} with kernel {kernel_size}, padding {padding}, "
                         f"dilation {dilation}")
    x_rows, g_rows = x.permute(0, 2, 3, 1), grad_out.permute(0, 2, 3, 1)  # views when NHWC
    if ph or pw:
        x_rows = F.pad(x_rows, (0, 0, pw, pw, ph, ph))
    if (ho, wo) != (hp, wp):
        g_rows = F.pad(g_rows, (0, 0, 0, wp - wo, 0, hp - ho))
    x_rows, g_rows = x_rows.reshape(-1, c), g_rows.reshape(-1, o)
    rows = x_rows.shape[0] - ((kh - 1) * dh * wp + (kw - 1) * dw)
    g_t = g_rows[:rows].t()
    taps = x.new_empty(kh, kw, o, c)
    for i in range(kh):
        for j in range(kw):
            shift = i * dh * wp + j * dw
            torch.mm(g_t, x_rows[shift:shift + rows], out=taps[i, j])
    return taps.permute(2, 3, 0, 1)
