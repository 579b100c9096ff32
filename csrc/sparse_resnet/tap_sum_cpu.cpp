// Tap sums of the SparseResNet mask convs from per-pixel tap contributions
// (`fad_sparse::tap_sum`).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>

#include "../common/macros.h"
#include "sparse_cpu.h"

namespace fad_sparse {
namespace {

// Tap sums of 3x3 pad-1 convs given per-pixel tap contributions: y row q (a position of the
// input grid [N, in_h, in_w]) holds 9 * k values ordered (ky, kx, output). Output i of the conv
// whose outputs are y's outputs [start, start + o) at stride `stride` is
//   out[(n, oy, ox), i] = bias[i] + sum_{ky, kx} y[(n, oy*s + ky - 1, ox*s + kx - 1), (3ky + kx)k
//                                                  + start + i]   (zero outside the grid).
void tap_sum_range(const float* __restrict__ y, const float* __restrict__ bias, int64_t k,
                   int64_t start, int64_t o, int64_t in_h, int64_t in_w, int64_t out_h,
                   int64_t out_w, int64_t stride, int64_t begin, int64_t end,
                   float* __restrict__ out) {
  const int64_t row = 9 * k;
  for (int64_t line = begin; line < end; ++line) {
    const int64_t n = line / out_h, oy = line % out_h;
    // the window's rows inside the grid: ky in [ky_begin, ky_end)
    const int64_t ky_begin = oy * stride - 1 < 0 ? 1 : 0;
    const int64_t ky_end = std::min<int64_t>(3, in_h - (oy * stride - 1));
    for (int64_t ox = 0; ox < out_w; ++ox) {
      float* __restrict__ dst = out + (line * out_w + ox) * o;
      const int64_t ix0 = ox * stride - 1;
      const bool inner = ix0 >= 0 && ix0 + 2 < in_w;  // no column of the window outside
      if (o == 1) {  // one mask conv: a scalar sum (the loop over outputs would cost more)
        float acc = bias[0];
        for (int64_t ky = ky_begin; ky < ky_end; ++ky) {
          const float* src = y + ((n * in_h + oy * stride + ky - 1) * in_w + ix0) * row +
                             3 * ky * k + start;
          for (int64_t kx = 0; kx < 3; ++kx) {
            if (inner || fad::inside(ix0 + kx, in_w)) acc += src[kx * (row + k)];
          }
        }
        dst[0] = acc;
        continue;
      }
      std::copy(bias, bias + o, dst);
      for (int64_t ky = ky_begin; ky < ky_end; ++ky) {
        const float* src =
            y + ((n * in_h + oy * stride + ky - 1) * in_w + ix0) * row + 3 * ky * k + start;
        for (int64_t kx = 0; kx < 3; ++kx) {
          if (!inner && !fad::inside(ix0 + kx, in_w)) continue;
          const float* __restrict__ tap = src + kx * (row + k);
          for (int64_t i = 0; i < o; ++i) dst[i] += tap[i];
        }
      }
    }
  }
}

}  // namespace

at::Tensor tap_sum_cpu(const at::Tensor& y, const at::Tensor& bias, int64_t n, int64_t in_h,
                       int64_t in_w, int64_t start, int64_t stride) {
  check_float_cpu(y, "fad_sparse.tap_sum", "y");
  check_float_cpu(bias, "fad_sparse.tap_sum", "bias");
  const int64_t o = bias.numel();
  TORCH_CHECK(y.dim() == 2 && y.size(1) % 9 == 0 && y.size(0) == n * in_h * in_w,
              "fad_sparse.tap_sum: y must be [N*H*W, 9*k]");
  const int64_t k = y.size(1) / 9;
  TORCH_CHECK(start >= 0 && start + o <= k && stride >= 1,
              "fad_sparse.tap_sum: outputs [start, start + o) must lie within the k = ", k,
              " outputs of y");
  const int64_t out_h = (in_h - 1) / stride + 1, out_w = (in_w - 1) / stride + 1;
  at::Tensor out = at::empty({n * out_h * out_w, o}, y.options());
  const float* y_p = y.data_ptr<float>();
  const float* b_p = bias.data_ptr<float>();
  float* out_p = out.data_ptr<float>();
  // about 2^21 additions (~1 ms) per task: smaller maps, the one image of R-101 inference at
  // 800x1344 included, run serially (a parallel region costs more there than it saves when
  // the second core is busy with another job)
  const int64_t grain = std::max<int64_t>(1, 262144 / std::max<int64_t>(out_w * o, 1));
  at::parallel_for(0, n * out_h, grain, [&](int64_t begin, int64_t end) {
    tap_sum_range(y_p, b_p, k, start, o, in_h, in_w, out_h, out_w, stride, begin, end, out_p);
  });
  return out;
}

}  // namespace fad_sparse
