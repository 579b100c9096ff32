// CPU kernels of SparseResNet's sparse execution: Gaussian interpolation of sparsely computed
// features (`interpolate`) and the im2col gather of a 3x3 conv at sampled positions
// (`gather_windows`).
//
// A grid of N x H x W positions p carries a mask value mask[p] >= 0 (0 = not sampled) and, where
// mask[p] > 0, a feature row rows[index[p]] of C floats. For every position the kernel writes
//
//   out[p] = mask[p] * v[p]
//          + (1 - mask[p]) * sum_q K(p - q) mask[q] v[q] / (sum_q K(p - q) mask[q] + eps)
//          (+ bias) (+ residual[p]), then ReLU when asked,
//
// q running over the (2r+1) x (2r+1) window around p (outside the grid counts as mask 0) and
// K(dy, dx) = taps[dy + r] * taps[dx + r] (a separable Gaussian). Only sampled neighbours are
// visited, so the work per position is about window * density * C multiply-adds; positions with
// mask exactly 1 skip the window. Float32 only; the Python side falls back to the PyTorch
// reference for other dtypes and devices.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

namespace fad_sparse {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FAD_MULTIVERSION __attribute__((target_clones("arch=haswell", "default")))
#else
#define FAD_MULTIVERSION
#endif

struct Grid {
  int64_t h, w, c, radius;
};

struct Inputs {
  const float* rows;
  const int64_t* index;
  const float* mask;
  const float* taps;
  const float* bias;      // nullptr when absent
  const float* residual;  // nullptr when absent
  float eps;
  bool relu;
};

// Interpolates positions [begin, end); `acc` is a C-float scratch row owned by the caller.
// Each output element is written once: mask * v + scale * acc (+ bias) (+ residual), ReLU.
FAD_MULTIVERSION
void interpolate_range(const Inputs in, const Grid g, int64_t begin, int64_t end,
                       float* __restrict__ acc, float* __restrict__ out) {
  const int64_t c_dim = g.c, r = g.radius;
  for (int64_t p = begin; p < end; ++p) {
    const int64_t x = p % g.w, y = (p / g.w) % g.h;
    const int64_t image_start = p - y * g.w - x;
    const float mp = in.mask[p];
    float s = 0.f;
    std::fill(acc, acc + c_dim, 0.f);
    if (mp != 1.f) {
      float den = 0.f;
      const int64_t y0 = std::max<int64_t>(y - r, 0), y1 = std::min<int64_t>(y + r, g.h - 1);
      const int64_t x0 = std::max<int64_t>(x - r, 0), x1 = std::min<int64_t>(x + r, g.w - 1);
      for (int64_t yy = y0; yy <= y1; ++yy) {
        const float wy = in.taps[yy - y + r];
        const int64_t line = image_start + yy * g.w;
        for (int64_t xx = x0; xx <= x1; ++xx) {
          const float mq = in.mask[line + xx];
          if (mq == 0.f) continue;
          const float wq = wy * in.taps[xx - x + r] * mq;
          den += wq;
          const float* __restrict__ v = in.rows + in.index[line + xx] * c_dim;
          for (int64_t c = 0; c < c_dim; ++c) acc[c] += wq * v[c];
        }
      }
      s = (1.f - mp) / (den + in.eps);
    }
    for (int64_t c = 0; c < c_dim; ++c) acc[c] *= s;
    if (mp != 0.f) {
      const float* __restrict__ v = in.rows + in.index[p] * c_dim;
      for (int64_t c = 0; c < c_dim; ++c) acc[c] += mp * v[c];
    }
    if (in.bias != nullptr) {
      for (int64_t c = 0; c < c_dim; ++c) acc[c] += in.bias[c];
    }
    if (in.residual != nullptr) {
      const float* __restrict__ res = in.residual + p * c_dim;
      for (int64_t c = 0; c < c_dim; ++c) acc[c] += res[c];
    }
    float* __restrict__ o = out + p * c_dim;
    if (in.relu) {
      for (int64_t c = 0; c < c_dim; ++c) o[c] = acc[c] > 0.f ? acc[c] : 0.f;
    } else {
      std::copy(acc, acc + c_dim, o);
    }
  }
}

// im2col of a 3x3 pad-1 conv with stride `stride` at P output positions: row i of `cols` is
// the nine neighbour rows of src (ordered ky, kx; zeros outside the grid) of output position
// positions[i] = n*out_h*out_w + oy*out_w + ox, reading the input grid [N, in_h, in_w].
FAD_MULTIVERSION
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
        if (iy < 0 || iy >= in_h || ix < 0 || ix >= in_w) {
          std::fill(dst, dst + c_dim, 0.f);
        } else {
          const float* __restrict__ v = src + ((n * in_h + iy) * in_w + ix) * c_dim;
          std::copy(v, v + c_dim, dst);
        }
      }
    }
  }
}

void check_float_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              "fad_sparse.interpolate: ", name, " must be a contiguous float32 CPU tensor");
}

}  // namespace

at::Tensor interpolate_cpu(const at::Tensor& rows, const at::Tensor& index, const at::Tensor& mask,
                           const at::Tensor& taps, double eps, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& residual, bool relu, int64_t n,
                           int64_t h, int64_t w) {
  check_float_cpu(rows, "rows");
  check_float_cpu(mask, "mask");
  check_float_cpu(taps, "taps");
  TORCH_CHECK(rows.dim() == 2, "fad_sparse.interpolate: rows must be [P, C]");
  TORCH_CHECK(index.device().is_cpu() && index.scalar_type() == at::kLong && index.is_contiguous(),
              "fad_sparse.interpolate: index must be a contiguous int64 CPU tensor");
  const int64_t positions = n * h * w, c_dim = rows.size(1), num_rows = rows.size(0);
  TORCH_CHECK(index.numel() == positions && mask.numel() == positions,
              "fad_sparse.interpolate: index and mask must have N*H*W = ", positions, " entries");
  TORCH_CHECK(taps.numel() % 2 == 1, "fad_sparse.interpolate: taps must have an odd length");
  const float* mask_p = mask.data_ptr<float>();
  const int64_t* index_p = index.data_ptr<int64_t>();
  for (int64_t p = 0; p < positions; ++p) {
    TORCH_CHECK(mask_p[p] >= 0.f && (mask_p[p] == 0.f || (index_p[p] >= 0 && index_p[p] < num_rows)),
                "fad_sparse.interpolate: position ", p, " has mask ", mask_p[p], " but row ",
                index_p[p], " of ", num_rows);
  }
  Inputs in{rows.data_ptr<float>(), index_p, mask_p, taps.data_ptr<float>(), nullptr, nullptr,
            static_cast<float>(eps), relu};
  if (bias.has_value()) {
    check_float_cpu(*bias, "bias");
    TORCH_CHECK(bias->numel() == c_dim, "fad_sparse.interpolate: bias must have C entries");
    in.bias = bias->data_ptr<float>();
  }
  if (residual.has_value()) {
    check_float_cpu(*residual, "residual");
    TORCH_CHECK(residual->numel() == positions * c_dim,
                "fad_sparse.interpolate: residual must be [N*H*W, C]");
    in.residual = residual->data_ptr<float>();
  }
  at::Tensor out = at::empty({positions, c_dim}, rows.options());
  float* out_p = out.data_ptr<float>();
  const Grid g{h, w, c_dim, taps.numel() / 2};
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(c_dim, 1));
  at::parallel_for(0, positions, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(c_dim);
    interpolate_range(in, g, begin, end, acc.data(), out_p);
  });
  return out;
}

at::Tensor gather_windows_cpu(const at::Tensor& src, const at::Tensor& positions, int64_t n,
                              int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                              int64_t stride) {
  check_float_cpu(src, "src");
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

TORCH_LIBRARY(fad_sparse, m) {
  m.def(
      "interpolate(Tensor rows, Tensor index, Tensor mask, Tensor taps, float eps, Tensor? bias, "
      "Tensor? residual, bool relu, int n, int h, int w) -> Tensor");
  m.def(
      "gather_windows(Tensor src, Tensor positions, int n, int in_h, int in_w, int out_h, "
      "int out_w, int stride) -> Tensor");
}

TORCH_LIBRARY_IMPL(fad_sparse, CPU, m) {
  m.impl("interpolate", &fad_sparse::interpolate_cpu);
  m.impl("gather_windows", &fad_sparse::gather_windows_cpu);
}

extern "C" PyObject* PyInit__sparse_cpu(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sparse_cpu", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
