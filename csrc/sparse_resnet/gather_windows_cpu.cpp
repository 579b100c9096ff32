// im2col of a 3x3 pad-1 conv at the sampled positions of SparseResNet's sparse execution
// (`fad_sparse::gather_windows`).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>

#include "../common/macros.h"
#include "sparse_cpu.h"

namespace fad_sparse {
namespace {

// im2col of a 3x3 pad-1 conv with stride `stride` at P output positions: row i of `cols` is
// the nine neighbour rows of src (ordered ky, kx; zeros outside the grid) of output position
// positions[i] = n*out_h*out_w + oy*out_w + ox, reading the input grid [N, in_h, in_w].
void gather_range(const float* __restrict__ src, const int64_t* __restrict__ positions,
                  int64_t c_dim, int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                  int64_t stride, int64_t begin, int64_t end, float* __restrict__ cols) {
  for (int64_t i = begin; i < end; ++i) {
    const int64_t p = positions[i];
    const int64_t n = p / (out_h * out_w), rem = p % (out_h * out_w);
    const int64_t cy = rem / out_w * stride, cx = rem % out_w * stride;
    float* __restrict__ dst = cols + i * 9 * c_dim;
    for (int64_t ky = 0; ky < 3; ++ky) {
      const int64_t iy = cy + ky - 1;
      for (int64_t kx = 0; kx < 3; ++kx, dst += c_dim) {
        const int64_t ix = cx + kx - 1;
        if (!fad::inside(iy, ix, in_h, in_w)) {
          std::fill(dst, dst + c_dim, 0.f);
        } else {
          const float* __restrict__ v = src + ((n * in_h + iy) * in_w + ix) * c_dim;
          std::copy(v, v + c_dim, dst);
        }
      }
    }
  }
}

}  // namespace

at::Tensor gather_windows_cpu(const at::Tensor& src, const at::Tensor& positions, int64_t n,
                              int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                              int64_t stride) {
  check_float_cpu(src, "fad_sparse.gather_windows", "src");
  TORCH_CHECK(positions.device().is_cpu() && positions.scalar_type() == at::kLong &&
                  positions.is_contiguous(),
              "fad_sparse.gather_windows: positions must be a contiguous int64 CPU tensor");
  TORCH_CHECK(src.dim() == 2 && src.size(0) >= n * in_h * in_w,
              "fad_sparse.gather_windows: src must be [N*H*W, C] rows of the input grid");
  TORCH_CHECK(stride >= 1 && (out_h - 1) * stride < in_h + 1 && (out_w - 1) * stride < in_w + 1,
              "fad_sparse.gather_windows: output grid does not fit the input grid");
  const int64_t c_dim = src.size(1), num = positions.numel();
  const int64_t* pos = positions.data_ptr<int64_t>();
  for (int64_t i = 0; i < num; ++i) {
    TORCH_CHECK(pos[i] >= 0 && pos[i] < n * out_h * out_w,
                "fad_sparse.gather_windows: position ", pos[i], " outside the output grid");
  }
  at::Tensor cols = at::empty({num, 9 * c_dim}, src.options());
  const float* src_p = src.data_ptr<float>();
  float* cols_p = cols.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(c_dim, 1));
  at::parallel_for(0, num, grain, [&](int64_t begin, int64_t end) {
    gather_range(src_p, pos, c_dim, in_h, in_w, out_h, out_w, stride, begin, end, cols_p);
  });
  return cols;
}

}  // namespace fad_sparse
