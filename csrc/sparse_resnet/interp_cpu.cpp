// CPU kernel of SparseResNet's Gaussian interpolation over sparsely computed features.
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
// mask exactly 1 skip the window. `extra_rows` all-zero rows follow the N*H*W output rows (an
// im2col gather points padding taps at them). Float32 only; the Python side falls back to the
// PyTorch reference for other dtypes.
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
FAD_MULTIVERSION
void interpolate_range(const Inputs in, const Grid g, int64_t begin, int64_t end,
                       float* __restrict__ acc, float* __restrict__ out) {
  const int64_t c_dim = g.c, r = g.radius;
  for (int64_t p = begin; p < end; ++p) {
    const int64_t x = p % g.w, y = (p / g.w) % g.h;
    const int64_t image_start = p - y * g.w - x;
    const float mp = in.mask[p];
    float* __restrict__ o = out + p * c_dim;
    if (mp != 0.f) {
      const float* __restrict__ v = in.rows + in.index[p] * c_dim;
      for (int64_t c = 0; c < c_dim; ++c) o[c] = mp * v[c];
    } else {
      std::fill(o, o + c_dim, 0.f);
    }
    if (mp != 1.f) {
      std::fill(acc, acc + c_dim, 0.f);
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
      const float s = (1.f - mp) / (den + in.eps);
      for (int64_t c = 0; c < c_dim; ++c) o[c] += s * acc[c];
    }
    if (in.bias != nullptr) {
      for (int64_t c = 0; c < c_dim; ++c) o[c] += in.bias[c];
    }
    if (in.residual != nullptr) {
      const float* __restrict__ res = in.residual + p * c_dim;
      for (int64_t c = 0; c < c_dim; ++c) o[c] += res[c];
    }
    if (in.relu) {
      for (int64_t c = 0; c < c_dim; ++c) o[c] = o[c] > 0.f ? o[c] : 0.f;
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
                           int64_t h, int64_t w, int64_t extra_rows) {
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
  TORCH_CHECK(extra_rows >= 0, "fad_sparse.interpolate: extra_rows must be >= 0");
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
  at::Tensor out = at::empty({positions + extra_rows, c_dim}, rows.options());
  float* out_p = out.data_ptr<float>();
  std::fill(out_p + positions * c_dim, out_p + (positions + extra_rows) * c_dim, 0.f);
  const Grid g{h, w, c_dim, taps.numel() / 2};
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(c_dim, 1));
  at::parallel_for(0, positions, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(c_dim);
    interpolate_range(in, g, begin, end, acc.data(), out_p);
  });
  return out;
}

}  // namespace fad_sparse

TORCH_LIBRARY(fad_sparse, m) {
  m.def(
      "interpolate(Tensor rows, Tensor index, Tensor mask, Tensor taps, float eps, Tensor? bias, "
      "Tensor? residual, bool relu, int n, int h, int w, int extra_rows) -> Tensor");
}

TORCH_LIBRARY_IMPL(fad_sparse, CPU, m) { m.impl("interpolate", &fad_sparse::interpolate_cpu); }

extern "C" PyObject* PyInit__sparse_cpu(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sparse_cpu", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
