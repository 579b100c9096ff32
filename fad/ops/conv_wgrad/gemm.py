"""The weight gradient of a convolution as GEMMs over column blocks of its input (im2col).

For y = conv2d(x, w) with groups 1, stride (sh, sw), zero padding (ph, pw) and dilation
(dh, dw), the weight gradient is grad_w[o, (i, j, c)] = sum over the output positions p of
grad_y[p, o] * col[p, (i, j, c)], where col[p, (i, j, c)] = x_padded[sh * py + i * dh,
sw * px + j * dw, c]: one GEMM grad_rows.T @ col, grad_rows = grad_y as rows of channels
(NHWC). x is padded once as NHWC rows; col is a strided view of it (one `as_strided`), copied
block by block into a buffer of at most `COL_BYTES` (whole images while one image's columns
fit, else bands of output rows of one image), each block one GEMM accumulated into grad_w. The
bounded buffer stays in cache; the whole col (kh * kw times the input) would not. A 1x1
stride-1 layer's col is x's own NHWC rows: one GEMM, no copy.

On AVX2 CPUs oneDNN computes this gradient with its older direct kernels (`jit:avx2`,
`jit_1x1:avx2`) at about half the rate of its forward convolution; the GEMMs (MKL) run near it
(docs/ops.md).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

COL_BYTES = 16 << 20

Pair = tuple[int, int]


def conv_output_size(size: Pair, kernel_size: Pair, stride: Pair, padding: Pair,
                     dilation: Pair) -> Pair:
    """(Ho, Wo) of a convolution of a (H, W) map."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1  # type: ignore[return-value]
                 for n, k, s, p, d in zip(size, kernel_size, stride, padding, dilation))


def weight_grad_gemm(x: Tensor, grad_out: Tensor, kernel_size: Pair, stride: Pair,
                     padding: Pair, dilation: Pair) -> Tensor:
    """The weight gradient of `conv2d(x, w, stride, padding, dilation, groups=1)`.

    x Tensor[N, C, H, W], grad_out Tensor[N, O, Ho, Wo] (any memory layouts) ->
    Tensor[O, C, kh, kw] of x's dtype (channels-last strides: the [O, kh, kw, C] buffer it is
    built in).
    """
    n, c, h, w = x.shape
    o, ho, wo = grad_out.shape[1:]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    if (ho, wo) != conv_output_size((h, w), kernel_size, stride, padding, dilation):
        raise ValueError(f"grad_out {tuple(grad_out.shape)} is not the output of x "
                         f"{tuple(x.shape)} with kernel {kernel_size}, stride {stride}, "
                         f"padding {padding}, dilation {dilation}")
    xp = x.permute(0, 2, 3, 1)  # a view when x is channels-last
    if ph or pw:
        xp = F.pad(xp, (0, 0, pw, pw, ph, ph))
    xp = xp.contiguous()
    hp, wp = xp.shape[1:3]
    g_rows = grad_out.permute(0, 2, 3, 1).contiguous()  # [N, Ho, Wo, O]
    k = kh * kw * c
    strides = (hp * wp * c, sh * wp * c, sw * c, dh * wp * c, dw * c, 1)
    whole = xp.as_strided((n, ho, wo, kh, kw, c), strides, xp.storage_offset())
    row_bytes = wo * k * x.element_size()  # one output row's columns
    rows_are_columns = whole.is_contiguous()  # 1x1, stride 1: x's rows, one block, no copy
    if rows_are_columns:
        images, band = n, ho
    elif ho * row_bytes <= COL_BYTES:  # blocks of whole images
        images, band = COL_BYTES // (ho * row_bytes), ho
    else:  # bands of rows of one image
        images, band = 1, max(1, COL_BYTES // row_bytes)
    if not rows_are_columns:
        buf = x.new_empty(min(images, n) * band * wo * k)
    grad_w = x.new_empty(o, k)
    first = True
    for n0 in range(0, n, images):
        nb = min(images, n - n0)
        for y0 in range(0, ho, band):
            yb = min(band, ho - y0)
            col = whole[n0:n0 + nb, y0:y0 + yb]
            if not col.is_contiguous():
                col = buf[:nb * yb * wo * k].view(nb, yb, wo, kh, kw, c).copy_(col)
            g_t = g_rows[n0:n0 + nb, y0:y0 + yb].reshape(-1, o).t()
            grad_w.addmm_(g_t, col.view(-1, k), beta=0 if first else 1)
            first = False
    return grad_w.view(o, kh, kw, c).permute(0, 3, 1, 2)
