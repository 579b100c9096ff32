// Gaussian interpolation of sparsely computed SparseResNet features (`fad_sparse::interpolate`).
//
// A grid of N x H x W positions p carries a mask value mask[p] >= 0 (0 = not sampled) and a row
// index[p] in [0, P) (read only where mask[p] > 0) into the P x C feature rows. For every
// position the kernel writes
//
//   out[p] = mask[p] * v[p]        (v = rows, or ReLU(rows) with relu_rows)
//          + (1 - mask[p]) * sum_q K(p - q) mask[q] v[q] / (sum_q K(p - q) mask[q] + eps)
//          (+ bias) (+ residual[p]), then ReLU when asked,
//
// q running over the (2r+1) x (2r+1) window around p (outside the grid counts as mask 0) and
// K(dy, dx) = taps[dy + r] * taps[dx + r] (a separable Gaussian; taps with K < 1e-13, which
// cannot move a result at float32 precision, are skipped). Only sampled neighbours are visited,
// so the work per position is about window * density * C multiply-adds; positions with mask
// exactly 1 skip the window. Float32 only; the Python side falls back to the PyTorch
// reference for other dtypes and devices.
//
// `interpolate_into` can also project its output rows: projected = out @ project ([C, K]), the
// per-pixel tap contributions of the next block's mask convs (`small_conv3x3`). Each group of
// lines is multiplied right after it is written, while its rows are still in L2, so the
// projection does not read the whole map from memory again.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <cstdlib>
#include <cstdint>
#include <optional>
#include <vector>

#include "../common/cpu_dispatch.h"
#include "sparse_cpu.h"

namespace fad_sparse {
namespace {

constexpr const char* kOp = "fad_sparse.interpolate";

// The interpolation loop is compiled twice, generic and with AVX2 + FMA; fad::use_avx2 picks.

// Window taps kept by the kernel: K(dy, dx) = taps[dy + r] * taps[dx + r] >= kMinTapWeight.
// A dropped tap changes an output by at most 49 * kMinTapWeight / eps ~ 5e-7 of the largest
// feature, far below float32 tolerance of the comparisons against the dense reference.
constexpr float kMinTapWeight = 1e-13f;
// Output channels are accumulated in blocks of kBlock floats held in registers.
constexpr int64_t kBlock = 32;
// Lines are projected in groups of about this many output floats (512 KB, a quarter of L2).
constexpr int64_t kProjectGroupFloats = 1 << 17;

struct WindowTap {
  int64_t dy, dx;
  int64_t offset;  // dy * W + dx: the tap's distance in flat positions
  float weight;
};

struct Grid {
  int64_t h, w, c;
};

struct Inputs {
  const float* rows;
  const int64_t* index;
  const float* mask;
  const WindowTap* taps;
  int64_t num_taps;
  int64_t radius;  // the largest |dy| or |dx| of the taps
  const float* bias;      // nullptr when absent
  const float* residual;  // nullptr when absent
  float eps;
  bool relu;
  bool relu_rows;  // read the feature rows through a ReLU
};

struct Neighbour {
  float weight;
  const float* row;
};

// Adds the epilogue to `len` accumulated channels starting at c0 of position p and stores them:
// scale * acc + mask * own row (+ bias) (+ residual), ReLU.
FAD_ALWAYS_INLINE void finish_channels(const Inputs& in, float* acc, float scale, float mp,
                                       const float* self, int64_t p, int64_t c_dim, int64_t c0,
                                       int64_t len, float* out) {
  for (int64_t i = 0; i < len; ++i) acc[i] *= scale;
  if (self != nullptr) {
    for (int64_t i = 0; i < len; ++i) {
      const float v = self[c0 + i];
      acc[i] += mp * (in.relu_rows && v < 0.f ? 0.f : v);
    }
  }
  if (in.bias != nullptr) {
    for (int64_t i = 0; i < len; ++i) acc[i] += in.bias[c0 + i];
  }
  if (in.residual != nullptr) {
    const float* res = in.residual + p * c_dim + c0;  // may be `out` (interpolate_into)
    for (int64_t i = 0; i < len; ++i) acc[i] += res[i];
  }
  float* o = out + p * c_dim + c0;
  if (in.relu) {
    for (int64_t i = 0; i < len; ++i) o[i] = acc[i] > 0.f ? acc[i] : 0.f;
  } else {
    for (int64_t i = 0; i < len; ++i) o[i] = acc[i];
  }
}

#if defined(__GNUC__) || defined(__clang__)
// Eight floats in a GNU vector: four of them accumulate kBlock = 32 channels in registers
// (AVX2 registers in the AVX2 build, SSE pairs otherwise).
typedef float Vec8 __attribute__((vector_size(32)));

FAD_ALWAYS_INLINE Vec8 load8(const float* p) {
  Vec8 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

FAD_ALWAYS_INLINE Vec8 relu8(Vec8 v) {
  const Vec8 zero = {};
  return v > zero ? v : zero;
}

template <bool kReluRows>
FAD_ALWAYS_INLINE void accumulate_block(const Neighbour* nb, int64_t count, int64_t c0,
                                        float* acc) {
  Vec8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
  for (int64_t t = 0; t < count; ++t) {
    const Vec8 w = Vec8{} + nb[t].weight;
    const float* v = nb[t].row + c0;
    if (kReluRows) {
      a0 += w * relu8(load8(v));
      a1 += w * relu8(load8(v + 8));
      a2 += w * relu8(load8(v + 16));
      a3 += w * relu8(load8(v + 24));
    } else {
      a0 += w * load8(v);
      a1 += w * load8(v + 8);
      a2 += w * load8(v + 16);
      a3 += w * load8(v + 24);
    }
  }
  __builtin_memcpy(acc, &a0, sizeof(a0));
  __builtin_memcpy(acc + 8, &a1, sizeof(a1));
  __builtin_memcpy(acc + 16, &a2, sizeof(a2));
  __builtin_memcpy(acc + 24, &a3, sizeof(a3));
}
#else
template <bool kReluRows>
FAD_ALWAYS_INLINE void accumulate_block(const Neighbour* nb, int64_t count, int64_t c0,
                                        float* acc) {
  std::fill(acc, acc + kBlock, 0.f);
  for (int64_t t = 0; t < count; ++t) {
    for (int64_t i = 0; i < kBlock; ++i) {
      const float v = nb[t].row[c0 + i];
      acc[i] += nb[t].weight * (kReluRows && v < 0.f ? 0.f : v);
    }
  }
}
#endif

// Lists the sampled neighbours of position p = (y, x) in nb (weight K * m and row) and returns
// their number; `den` gets the sum of the weights. kChecked: skip taps outside the grid (not
// needed where the whole window lies inside, which saves the bounds checks).
template <bool kChecked>
FAD_ALWAYS_INLINE int64_t sampled_window(const Inputs& in, const Grid& g, int64_t y, int64_t x,
                                         int64_t p, Neighbour* nb, float& den) {
  int64_t count = 0;
  float sum = 0.f;
  for (int64_t t = 0; t < in.num_taps; ++t) {
    int64_t q = p + in.taps[t].offset;
    if (kChecked) {
      const int64_t yy = y + in.taps[t].dy, xx = x + in.taps[t].dx;
      if (!fad::inside(yy, xx, g.h, g.w)) continue;
      q = p - y * g.w - x + yy * g.w + xx;
    }
    // branch-free compaction: unsampled neighbours (weight 0) are overwritten next
    const float mq = in.mask[q];
    const float wq = in.taps[t].weight * mq;
    sum += wq;
    nb[count] = {wq, in.rows + in.index[q] * g.c};
    count += mq != 0.f;
  }
  den = sum;
  return count;
}

// Interpolates the grid lines (n * H + y) in [begin, end); `nb` is scratch for the window.
FAD_ALWAYS_INLINE void interpolate_lines_body(const Inputs in, const Grid g, int64_t begin,
                                              int64_t end, Neighbour* nb, float* out) {
  const int64_t c_dim = g.c, r = in.radius;
  for (int64_t line = begin; line < end; ++line) {
    const int64_t y = line % g.h;
    // the columns whose window lies inside the grid (none when the line is too close to an edge)
    const bool inner_line = y >= r && y < g.h - r;
    const int64_t inner_begin = inner_line ? std::min(r, g.w) : g.w;
    const int64_t inner_end = inner_line ? std::max(inner_begin, g.w - r) : g.w;
    for (int64_t x = 0; x < g.w; ++x) {
      const int64_t p = line * g.w + x;
      const float mp = in.mask[p];
      int64_t count = 0;
      float scale = 0.f;
      if (mp != 1.f) {
        float den = 0.f;
        if (x >= inner_begin && x < inner_end) {
          count = sampled_window<false>(in, g, y, x, p, nb, den);
        } else {
          count = sampled_window<true>(in, g, y, x, p, nb, den);
        }
        scale = (1.f - mp) / (den + in.eps);
      }
      const float* self = mp != 0.f ? in.rows + in.index[p] * c_dim : nullptr;
      float acc[kBlock];
      int64_t c0 = 0;
      for (; c0 + kBlock <= c_dim; c0 += kBlock) {
        if (in.relu_rows) {
          accumulate_block<true>(nb, count, c0, acc);
        } else {
          accumulate_block<false>(nb, count, c0, acc);
        }
        finish_channels(in, acc, scale, mp, self, p, c_dim, c0, kBlock, out);
      }
      const int64_t rest = c_dim - c0;
      if (rest > 0) {
        std::fill(acc, acc + rest, 0.f);
        for (int64_t t = 0; t < count; ++t) {
          for (int64_t i = 0; i < rest; ++i) {
            const float v = nb[t].row[c0 + i];
            acc[i] += nb[t].weight * (in.relu_rows && v < 0.f ? 0.f : v);
          }
        }
        finish_channels(in, acc, scale, mp, self, p, c_dim, c0, rest, out);
      }
    }
  }
}

void interpolate_lines_generic(const Inputs in, const Grid g, int64_t begin, int64_t end,
                               Neighbour* nb, float* out) {
  interpolate_lines_body(in, g, begin, end, nb, out);
}

#if FAD_AVX2_BUILD
FAD_TARGET_AVX2 void interpolate_lines_avx2(const Inputs in, const Grid g, int64_t begin,
                                            int64_t end, Neighbour* nb, float* out) {
  interpolate_lines_body(in, g, begin, end, nb, out);
}
#endif

void interpolate_lines(const Inputs in, const Grid g, int64_t begin, int64_t end, Neighbour* nb,
                       float* out) {
#if FAD_AVX2_BUILD
  if (fad::use_avx2()) {
    interpolate_lines_avx2(in, g, begin, end, nb, out);
    return;
  }
#endif
  interpolate_lines_generic(in, g, begin, end, nb, out);
}

at::Tensor matrix(float* data, int64_t rows, int64_t cols) {
  return at::from_blob(data, {rows, cols}, at::TensorOptions().dtype(at::kFloat));
}

// The optional projection of the output rows: out [M, K] = rows @ weight [C, K].
struct Projection {
  const at::Tensor* weight;  // nullptr: no projection
  float* out;
};

// Checks the inputs, builds the window and interpolates into out_p ([N*H*W, C]; may be the
// residual, whose row p is read before row p of the output is written), projecting each group
// of lines after it is written when `proj.weight` is set.
void interpolate_checked(const at::Tensor& rows, const at::Tensor& index, const at::Tensor& mask,
                         const at::Tensor& taps, double eps, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& residual, bool relu, bool relu_rows,
                         int64_t n, int64_t h, int64_t w, float* out_p,
                         Projection proj = {nullptr, nullptr}) {
  check_float_cpu(rows, kOp, "rows");
  check_float_cpu(mask, kOp, "mask");
  check_float_cpu(taps, kOp, "taps");
  TORCH_CHECK(rows.dim() == 2, "fad_sparse.interpolate: rows must be [P, C]");
  TORCH_CHECK(index.device().is_cpu() && index.scalar_type() == at::kLong && index.is_contiguous(),
              "fad_sparse.interpolate: index must be a contiguous int64 CPU tensor");
  const int64_t positions = n * h * w, c_dim = rows.size(1), num_rows = rows.size(0);
  TORCH_CHECK(index.numel() == positions && mask.numel() == positions,
              "fad_sparse.interpolate: index and mask must have N*H*W = ", positions, " entries");
  TORCH_CHECK(taps.numel() % 2 == 1, "fad_sparse.interpolate: taps must have an odd length");
  const float* mask_p = mask.data_ptr<float>();
  const int64_t* index_p = index.data_ptr<int64_t>();
  const int64_t row_limit = std::max<int64_t>(num_rows, 1);
  for (int64_t p = 0; p < positions; ++p) {
    TORCH_CHECK(mask_p[p] >= 0.f && index_p[p] >= 0 && index_p[p] < row_limit &&
                    (mask_p[p] == 0.f || num_rows > 0),
                "fad_sparse.interpolate: position ", p, " has mask ", mask_p[p], " and row ",
                index_p[p], " but rows has ", num_rows);
  }
  const float* t = taps.data_ptr<float>();
  const int64_t r = taps.numel() / 2;
  std::vector<WindowTap> window;
  int64_t radius = 0;
  for (int64_t dy = -r; dy <= r; ++dy) {
    for (int64_t dx = -r; dx <= r; ++dx) {
      const float weight = t[dy + r] * t[dx + r];
      if (weight >= kMinTapWeight || (dy == 0 && dx == 0)) {
        window.push_back({dy, dx, dy * w + dx, weight});
        radius = std::max({radius, std::abs(dy), std::abs(dx)});
      }
    }
  }
  Inputs in{rows.data_ptr<float>(), index_p, mask_p, window.data(),
            static_cast<int64_t>(window.size()), radius, nullptr, nullptr,
            static_cast<float>(eps), relu, relu_rows};
  if (bias.has_value()) {
    check_float_cpu(*bias, kOp, "bias");
    TORCH_CHECK(bias->numel() == c_dim, "fad_sparse.interpolate: bias must have C entries");
    in.bias = bias->data_ptr<float>();
  }
  if (residual.has_value()) {
    check_float_cpu(*residual, kOp, "residual");
    TORCH_CHECK(residual->numel() == positions * c_dim,
                "fad_sparse.interpolate: residual must be [N*H*W, C]");
    in.residual = residual->data_ptr<float>();
  }
  const Grid g{h, w, c_dim};
  // chunks of >= 2^16 outputs, about eight per thread
  const int64_t lines = n * h;
  const int64_t min_lines = std::max<int64_t>(1, 65536 / std::max<int64_t>(w * c_dim, 1));
  const int64_t chunk = std::max(min_lines, lines / (8 * at::get_num_threads()));
  const int64_t group =
      std::max<int64_t>(1, kProjectGroupFloats / std::max<int64_t>(w * c_dim, 1));
  parallel_chunks(lines, chunk, [&](int64_t begin, int64_t end) {
    std::vector<Neighbour> nb(window.size());
    if (proj.weight == nullptr) {
      interpolate_lines(in, g, begin, end, nb.data(), out_p);
      return;
    }
    const int64_t k = proj.weight->size(1);
    for (int64_t first = begin; first < end; first += group) {
      const int64_t last = std::min(end, first + group), m = (last - first) * w;
      interpolate_lines(in, g, first, last, nb.data(), out_p);
      at::Tensor dst = matrix(proj.out + first * w * k, m, k);
      at::mm_out(dst, matrix(out_p + first * w * c_dim, m, c_dim), *proj.weight);
    }
  });
}

}  // namespace

at::Tensor interpolate_cpu(const at::Tensor& rows, const at::Tensor& index,
                           const at::Tensor& mask, const at::Tensor& taps, double eps,
                           const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& residual, bool relu,
                           bool relu_rows, int64_t n, int64_t h, int64_t w) {
  check_float_cpu(rows, kOp, "rows");
  at::Tensor out = at::empty({n * h * w, rows.dim() == 2 ? rows.size(1) : 0}, rows.options());
  interpolate_checked(rows, index, mask, taps, eps, bias, residual, relu, relu_rows, n, h, w,
                      out.data_ptr<float>());
  return out;
}

void interpolate_into_cpu(const at::Tensor& residual, const at::Tensor& rows,
                          const at::Tensor& index, const at::Tensor& mask, const at::Tensor& taps,
                          double eps, const std::optional<at::Tensor>& bias, bool relu,
                          int64_t n, int64_t h, int64_t w,
                          const std::optional<at::Tensor>& project,
                          const std::optional<at::Tensor>& projected) {
  check_float_cpu(residual, kOp, "residual");
  Projection proj{nullptr, nullptr};
  TORCH_CHECK(project.has_value() == projected.has_value(),
              "fad_sparse.interpolate_into: give both project and projected, or neither");
  if (project.has_value()) {
    check_float_cpu(*project, kOp, "project");
    check_float_cpu(*projected, kOp, "projected");
    TORCH_CHECK(rows.dim() == 2 && project->dim() == 2 && project->size(0) == rows.size(1),
                "fad_sparse.interpolate_into: project must be [C, K]");
    TORCH_CHECK(projected->dim() == 2 && projected->size(0) == n * h * w &&
                    projected->size(1) == project->size(1),
                "fad_sparse.interpolate_into: projected must be [N*H*W, K]");
    proj = {&*project, projected->data_ptr<float>()};
  }
  interpolate_checked(rows, index, mask, taps, eps, bias, residual, relu, false, n, h, w,
                      residual.data_ptr<float>(), proj);
}

}  // namespace fad_sparse
