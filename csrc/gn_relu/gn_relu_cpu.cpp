// GroupNorm + ReLU on the CPU for channels-last (NHWC) maps: y = relu(GN(x)), GN with G groups,
// biased variance, eps and the per-channel affine (weight, bias), and its backward.
//
// x: [N, C, H, W] in channels-last memory ([N, H*W, C]); weight, bias: [C]; float32 or float64.
// The forward returns y (channels-last) and mean, rstd: [N, G] (what the backward reads).
// One task per sample n: a pass over its H*W rows sums x and x * x per channel (vectorised over
// the contiguous C; element-type partial sums over blocks of rows, added in double), the group
// statistics give the per-channel affine a = weight * rstd, b = bias - mean * a, and a second
// pass writes y = max(x * a + b, 0).
// The backward, per sample, masks the incoming gradient by y > 0 (dy; ReLU's gradient at 0 is 0,
// as PyTorch's), sums dy and dy * x per channel, and writes
//   dx = dy * weight * rstd + x * q + r,   q = -rstd^3 (sum_g(dy w x) - mean sum_g(dy w)) / M,
//   r = -q * mean - rstd * sum_g(dy w) / M   (M = C / G * H * W; sums over the channels of g),
// and the per-sample channel sums of dy (grad of bias) and dy * xhat (grad of weight), added
// over the samples at the end. PyTorch's own CPU GroupNorm on channels-last input and the
// separate ReLU / threshold_backward passes are several times slower (docs/ops.md).
//
// Segments (`forward_segments` / `backward_segments`): the H*W rows of every sample split into
// runs [R, 3] (first row, row count, segment s >= 0, or -1 for rows outside every segment),
// covering the rows in order. Each segment is normalized on its own (statistics per sample,
// segment and group: mean, rstd [N, S, G]); rows of no segment give y = 0 and dx = 0. This is
// GroupNorm + ReLU of the FPN levels packed side by side in one map (fad/modeling/fcos/
// mosaic.py). The plain op is one segment of all rows.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/group_norm.h>
#include <ATen/ops/relu.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "../common/cpu_dispatch.h"

namespace fad_gn_relu {
namespace {

// Partial sums over rows run in the element type over blocks of kBlockRows rows (c scratch
// values each, so the loops vectorize over the channels) and are added into double sums after
// each block.
constexpr int64_t kBlockRows = 64;

// sum[c] += x[r, c], sumsq[c] += x[r, c]^2 over rows r < rows of width c.
template <typename T>
FAD_ALWAYS_INLINE void moments_body(const T* __restrict x, int64_t rows, int64_t c,
                                    T* __restrict acc_s, T* __restrict acc_q,
                                    double* __restrict sum, double* __restrict sumsq) {
  for (int64_t r0 = 0; r0 < rows; r0 += kBlockRows) {
    const int64_t r1 = std::min(rows, r0 + kBlockRows);
    for (int64_t j = 0; j < c; ++j) acc_s[j] = acc_q[j] = T(0);
    for (int64_t r = r0; r < r1; ++r) {
      const T* row = x + r * c;
      for (int64_t j = 0; j < c; ++j) {
        acc_s[j] += row[j];
        acc_q[j] += row[j] * row[j];
      }
    }
    for (int64_t j = 0; j < c; ++j) {
      sum[j] += static_cast<double>(acc_s[j]);
      sumsq[j] += static_cast<double>(acc_q[j]);
    }
  }
}

// y[r, c] = max(x[r, c] * a[c] + b[c], 0).
template <typename T>
FAD_ALWAYS_INLINE void apply_body(const T* x, const T* a, const T* b, T* y, int64_t rows,
                                  int64_t c) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * c;
    T* yr = y + r * c;
    for (int64_t j = 0; j < c; ++j) {
      const T v = xr[j] * a[j] + b[j];
      yr[j] = v > T(0) ? v : T(0);
    }
  }
}

// Over the rows, with dy = g where y > 0, else 0: sum_g[c] += dy, sum_gx[c] += dy * x.

template <typename T>
FAD_ALWAYS_INLINE void masked_sums_body(const T* __restrict x, const T* __restrict y,
                                        const T* __restrict g, int64_t rows, int64_t c,
                                        T* __restrict acc_g, T* __restrict acc_gx,
                                        double* __restrict sum_g, double* __restrict sum_gx) {
  for (int64_t r0 = 0; r0 < rows; r0 += kBlockRows) {
    const int64_t r1 = std::min(rows, r0 + kBlockRows);
    for (int64_t j = 0; j < c; ++j) acc_g[j] = acc_gx[j] = T(0);
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * c;
      const T* yr = y + r * c;
      const T* gr = g + r * c;
      for (int64_t j = 0; j < c; ++j) {
        const T dy = yr[j] > T(0) ? gr[j] : T(0);  // g loaded always: the select vectorizes
        acc_g[j] += dy;
        acc_gx[j] += dy * xr[j];
      }
    }
    for (int64_t j = 0; j < c; ++j) {
      sum_g[j] += static_cast<double>(acc_g[j]);
      sum_gx[j] += static_cast<double>(acc_gx[j]);
    }
  }
}

// dx[r, c] = dy * p[c] + x * q[c] + s[c], dy = g where y > 0, else 0.
template <typename T>
FAD_ALWAYS_INLINE void grad_x_body(const T* __restrict x, const T* __restrict y,
                                   const T* __restrict g, const T* __restrict p,
                                   const T* __restrict q, const T* __restrict s,
                                   T* __restrict dx, int64_t rows, int64_t c) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * c;
    const T* yr = y + r * c;
    const T* gr = g + r * c;
    T* dr = dx + r * c;
    for (int64_t j = 0; j < c; ++j) {
      const T dy = yr[j] > T(0) ? gr[j] : T(0);
      dr[j] = dy * p[j] + xr[j] * q[j] + s[j];
    }
  }
}

// The loops compiled for the baseline and for AVX2+FMA; fad::use_avx2 picks one.
template <typename T>
void moments_base(const T* x, int64_t rows, int64_t c, T* as, T* aq, double* s, double* q) {
  moments_body(x, rows, c, as, aq, s, q);
}
template <typename T>
void apply_base(const T* x, const T* a, const T* b, T* y, int64_t rows, int64_t c) {
  apply_body(x, a, b, y, rows, c);
}
template <typename T>
void masked_sums_base(const T* x, const T* y, const T* g, int64_t rows, int64_t c, T* ag,
                      T* agx, double* s, double* q) {
  masked_sums_body(x, y, g, rows, c, ag, agx, s, q);
}
template <typename T>
void grad_x_base(const T* x, const T* y, const T* g, const T* p, const T* q, const T* s, T* dx,
                 int64_t rows, int64_t c) {
  grad_x_body(x, y, g, p, q, s, dx, rows, c);
}
#if FAD_AVX2_BUILD
template <typename T>
FAD_TARGET_AVX2 void moments_avx2(const T* x, int64_t rows, int64_t c, T* as, T* aq, double* s,
                                  double* q) {
  moments_body(x, rows, c, as, aq, s, q);
}
template <typename T>
FAD_TARGET_AVX2 void apply_avx2(const T* x, const T* a, const T* b, T* y, int64_t rows,
                                int64_t c) {
  apply_body(x, a, b, y, rows, c);
}
template <typename T>
FAD_TARGET_AVX2 void masked_sums_avx2(const T* x, const T* y, const T* g, int64_t rows,
                                      int64_t c, T* ag, T* agx, double* s, double* q) {
  masked_sums_body(x, y, g, rows, c, ag, agx, s, q);
}
template <typename T>
FAD_TARGET_AVX2 void grad_x_avx2(const T* x, const T* y, const T* g, const T* p, const T* q,
                                 const T* s, T* dx, int64_t rows, int64_t c) {
  grad_x_body(x, y, g, p, q, s, dx, rows, c);
}
#endif

template <typename T>
void moments(const T* x, int64_t rows, int64_t c, T* as, T* aq, double* s, double* q) {
#if FAD_AVX2_BUILD
  if (fad::use_avx2()) return moments_avx2(x, rows, c, as, aq, s, q);
#endif
  moments_base(x, rows, c, as, aq, s, q);
}
template <typename T>
void apply(const T* x, const T* a, const T* b, T* y, int64_t rows, int64_t c) {
#if FAD_AVX2_BUILD
  if (fad::use_avx2()) return apply_avx2(x, a, b, y, rows, c);
#endif
  apply_base(x, a, b, y, rows, c);
}
template <typename T>
void masked_sums(const T* x, const T* y, const T* g, int64_t rows, int64_t c, T* ag, T* agx,
                 double* s, double* q) {
#if FAD_AVX2_BUILD
  if (fad::use_avx2()) return masked_sums_avx2(x, y, g, rows, c, ag, agx, s, q);
#endif
  masked_sums_base(x, y, g, rows, c, ag, agx, s, q);
}
template <typename T>
void grad_x(const T* x, const T* y, const T* g, const T* p, const T* q, const T* s, T* dx,
            int64_t rows, int64_t c) {
#if FAD_AVX2_BUILD
  if (fad::use_avx2()) return grad_x_avx2(x, y, g, p, q, s, dx, rows, c);
#endif
  grad_x_base(x, y, g, p, q, s, dx, rows, c);
}

// Elements per parallel task: small maps run in one task (no parallel region per call).
constexpr int64_t kGrainElements = 1 << 15;

// [N, C, H, W] sizes and the group layout.
struct Shape {
  int64_t n, c, groups, per_group, rows;
  int64_t grain() const {
    return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, rows * c));
  }
};

Shape check(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
            int64_t groups) {
  TORCH_CHECK(x.dim() == 4, "fad gn_relu: x must be [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "fad gn_relu: x must be channels-last contiguous");
  const int64_t c = x.size(1);
  TORCH_CHECK(groups > 0 && c % groups == 0, "fad gn_relu: ", c, " channels in ", groups,
              " groups");
  for (const at::Tensor& t : {weight, bias}) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == c && t.scalar_type() == x.scalar_type(),
                "fad gn_relu: weight and bias must be [", c, "] of x's dtype, got ", t.sizes());
  }
  return {x.size(0), c, groups, c / groups, x.size(2) * x.size(3)};
}

// A run of rows of one segment (segment -1: rows outside every segment).
struct Run {
  int64_t first, rows, segment;
};

// The runs of a [R, 3] int64 tensor; they must cover rows 0..rows-1 in order, and each of the
// `segments` segments must own at least one row. Also each segment's row count.
std::vector<Run> read_runs(const at::Tensor& runs, int64_t rows, int64_t segments,
                           std::vector<int64_t>& segment_rows) {
  TORCH_CHECK(runs.dim() == 2 && runs.size(1) == 3 && runs.scalar_type() == at::kLong &&
                  runs.device().is_cpu(),
              "fad gn_relu: runs must be a [R, 3] int64 CPU tensor, got ", runs.sizes());
  TORCH_CHECK(segments >= 1, "fad gn_relu: segments must be >= 1, got ", segments);
  const at::Tensor r = runs.contiguous();
  const int64_t* p = r.const_data_ptr<int64_t>();
  std::vector<Run> out(r.size(0));
  segment_rows.assign(segments, 0);
  int64_t next = 0;
  for (int64_t i = 0; i < r.size(0); ++i) {
    out[i] = {p[3 * i], p[3 * i + 1], p[3 * i + 2]};
    TORCH_CHECK(out[i].first == next && out[i].rows > 0 && out[i].segment >= -1 &&
                    out[i].segment < segments,
                "fad gn_relu: run ", i, " (", out[i].first, ", ", out[i].rows, ", ",
                out[i].segment, ") must start at row ", next, ", hold rows and name a segment "
                "in [-1, ", segments, ")");
    if (out[i].segment >= 0) segment_rows[out[i].segment] += out[i].rows;
    next += out[i].rows;
  }
  TORCH_CHECK(next == rows, "fad gn_relu: the runs cover ", next, " rows of ", rows);
  for (int64_t s = 0; s < segments; ++s) {
    TORCH_CHECK(segment_rows[s] > 0, "fad gn_relu: segment ", s, " has no rows");
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_impl(
    const at::Tensor& x, const at::Tensor& weight_in, const at::Tensor& bias_in, int64_t groups,
    double eps, const std::vector<Run>& runs, const std::vector<int64_t>& segment_rows) {
  const Shape s = check(x, weight_in, bias_in, groups);
  const int64_t segments = static_cast<int64_t>(segment_rows.size());
  const at::Tensor weight = weight_in.contiguous(), bias = bias_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor mean = at::empty({s.n, segments, s.groups}, x.options());
  at::Tensor rstd = at::empty({s.n, segments, s.groups}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fad_gn_relu_forward", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    scalar_t* mp = mean.mutable_data_ptr<scalar_t>();
    scalar_t* rp = rstd.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, s.n, s.grain(), [&](int64_t begin, int64_t end) {
      std::vector<double> sum(segments * s.c), sumsq(segments * s.c);
      // scratch of the sums, then the affine of each segment
      std::vector<scalar_t> a(segments * s.c), b(segments * s.c);
      for (int64_t n = begin; n < end; ++n) {
        const int64_t offset = n * s.rows * s.c;
        std::fill(sum.begin(), sum.end(), 0.0);
        std::fill(sumsq.begin(), sumsq.end(), 0.0);
        for (const Run& run : runs) {
          if (run.segment < 0) continue;
          const int64_t k = run.segment * s.c;
          moments(xp + offset + run.first * s.c, run.rows, s.c, a.data(), b.data(),
                  sum.data() + k, sumsq.data() + k);
        }
        for (int64_t seg = 0; seg < segments; ++seg) {
          const double count = static_cast<double>(s.per_group * segment_rows[seg]);
          const int64_t k = seg * s.c, stat = (n * segments + seg) * s.groups;
          for (int64_t g = 0; g < s.groups; ++g) {
            double gs = 0, gq = 0;
            for (int64_t j = g * s.per_group; j < (g + 1) * s.per_group; ++j) {
              gs += sum[k + j];
              gq += sumsq[k + j];
            }
            const double mu = gs / count;
            const double var = std::max(gq / count - mu * mu, 0.0);
            const scalar_t m = static_cast<scalar_t>(mu);
            const scalar_t r = static_cast<scalar_t>(1.0 / std::sqrt(var + eps));
            mp[stat + g] = m;
            rp[stat + g] = r;
            for (int64_t j = g * s.per_group; j < (g + 1) * s.per_group; ++j) {
              a[k + j] = wp[j] * r;
              b[k + j] = bp[j] - m * a[k + j];
            }
          }
        }
        for (const Run& run : runs) {
          scalar_t* out = yp + offset + run.first * s.c;
          if (run.segment < 0) {
            std::fill(out, out + run.rows * s.c, scalar_t(0));
          } else {
            const int64_t k = run.segment * s.c;
            apply(xp + offset + run.first * s.c, a.data() + k, b.data() + k, out, run.rows, s.c);
          }
        }
      }
    });
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(
    const at::Tensor& grad_in, const at::Tensor& y, const at::Tensor& x,
    const at::Tensor& weight_in, const at::Tensor& mean_in, const at::Tensor& rstd_in,
    int64_t groups, const std::vector<Run>& runs, const std::vector<int64_t>& segment_rows) {
  const Shape s = check(x, weight_in, weight_in, groups);
  const int64_t segments = static_cast<int64_t>(segment_rows.size());
  TORCH_CHECK(grad_in.sizes() == x.sizes() && y.sizes() == x.sizes() &&
                  y.is_contiguous(at::MemoryFormat::ChannelsLast),
              "fad gn_relu: grad ", grad_in.sizes(), " and y ", y.sizes(),
              " must match x ", x.sizes(), " (y channels-last)");
  TORCH_CHECK(mean_in.numel() == s.n * segments * s.groups &&
                  rstd_in.numel() == s.n * segments * s.groups,
              "fad gn_relu: mean and rstd must be [N, G] ([N, S, G] with S segments)");
  const at::Tensor grad = grad_in.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor weight = weight_in.contiguous(), mean = mean_in.contiguous(),
                   rstd = rstd_in.contiguous();
  at::Tensor grad_x_out =
      at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor grad_weight = at::empty({s.c}, x.options());
  at::Tensor grad_bias = at::empty({s.c}, x.options());
  // Per-sample channel sums of dy * xhat and dy, added over the samples after the tasks.
  std::vector<double> part_w(s.n * s.c), part_b(s.n * s.c);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fad_gn_relu_backward", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    const scalar_t* mp = mean.const_data_ptr<scalar_t>();
    const scalar_t* rp = rstd.const_data_ptr<scalar_t>();
    scalar_t* dxp = grad_x_out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, s.n, s.grain(), [&](int64_t begin, int64_t end) {
      std::vector<double> sum_g(segments * s.c), sum_gx(segments * s.c);
      std::vector<scalar_t> p(segments * s.c), q(segments * s.c), r(segments * s.c);
      std::vector<scalar_t> acc_g(s.c), acc_gx(s.c);
      for (int64_t n = begin; n < end; ++n) {
        const int64_t offset = n * s.rows * s.c;
        std::fill(sum_g.begin(), sum_g.end(), 0.0);
        std::fill(sum_gx.begin(), sum_gx.end(), 0.0);
        std::fill(part_w.begin() + n * s.c, part_w.begin() + (n + 1) * s.c, 0.0);
        std::fill(part_b.begin() + n * s.c, part_b.begin() + (n + 1) * s.c, 0.0);
        for (const Run& run : runs) {
          if (run.segment < 0) continue;
          const int64_t k = run.segment * s.c, o = offset + run.first * s.c;
          masked_sums(xp + o, yp + o, gp + o, run.rows, s.c, acc_g.data(), acc_gx.data(),
                      sum_g.data() + k, sum_gx.data() + k);
        }
        for (int64_t seg = 0; seg < segments; ++seg) {
          const double count = static_cast<double>(s.per_group * segment_rows[seg]);
          const int64_t k = seg * s.c, stat = (n * segments + seg) * s.groups;
          for (int64_t g = 0; g < s.groups; ++g) {
            const double md = mp[stat + g], rd = rp[stat + g];
            double ma = 0, mb = 0;  // sum_g(dy * w), sum_g(dy * w * xhat), then / M
            for (int64_t j = g * s.per_group; j < (g + 1) * s.per_group; ++j) {
              const double dy_xhat = rd * (sum_gx[k + j] - md * sum_g[k + j]);
              part_w[n * s.c + j] += dy_xhat;
              part_b[n * s.c + j] += sum_g[k + j];
              ma += static_cast<double>(wp[j]) * sum_g[k + j];
              mb += static_cast<double>(wp[j]) * dy_xhat;
            }
            ma /= count;
            mb /= count;
            const scalar_t qg = static_cast<scalar_t>(-rd * rd * mb);
            const scalar_t rg = static_cast<scalar_t>(rd * (md * rd * mb - ma));
            for (int64_t j = g * s.per_group; j < (g + 1) * s.per_group; ++j) {
              p[k + j] = static_cast<scalar_t>(static_cast<double>(wp[j]) * rd);
              q[k + j] = qg;
              r[k + j] = rg;
            }
          }
        }
        for (const Run& run : runs) {
          const int64_t o = offset + run.first * s.c;
          if (run.segment < 0) {
            std::fill(dxp + o, dxp + o + run.rows * s.c, scalar_t(0));
          } else {
            const int64_t k = run.segment * s.c;
            grad_x(xp + o, yp + o, gp + o, p.data() + k, q.data() + k, r.data() + k, dxp + o,
                   run.rows, s.c);
          }
        }
      }
    });
    scalar_t* gwp = grad_weight.mutable_data_ptr<scalar_t>();
    scalar_t* gbp = grad_bias.mutable_data_ptr<scalar_t>();
    for (int64_t j = 0; j < s.c; ++j) {
      double tw = 0, tb = 0;
      for (int64_t n = 0; n < s.n; ++n) {
        tw += part_w[n * s.c + j];
        tb += part_b[n * s.c + j];
      }
      gwp[j] = static_cast<scalar_t>(tw);
      gbp[j] = static_cast<scalar_t>(tb);
    }
  });
  return {grad_x_out, grad_weight, grad_bias};
}

// The plain op: one segment of all rows.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const at::Tensor& x,
                                                           const at::Tensor& weight,
                                                           const at::Tensor& bias,
                                                           int64_t groups, double eps) {
  const int64_t rows = x.dim() == 4 ? x.size(2) * x.size(3) : 0;
  auto [y, mean, rstd] = forward_impl(x, weight, bias, groups, eps, {{0, rows, 0}}, {rows});
  return {y, mean.view({x.size(0), groups}), rstd.view({x.size(0), groups})};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad, const at::Tensor& y, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& mean, const at::Tensor& rstd, int64_t groups) {
  const int64_t rows = x.dim() == 4 ? x.size(2) * x.size(3) : 0;
  return backward_impl(grad, y, x, weight, mean, rstd, groups, {{0, rows, 0}}, {rows});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_segments_cpu(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t groups,
    double eps, const at::Tensor& runs, int64_t segments) {
  TORCH_CHECK(x.dim() == 4, "fad gn_relu: x must be [N, C, H, W], got ", x.sizes());
  std::vector<int64_t> segment_rows;
  const std::vector<Run> parsed = read_runs(runs, x.size(2) * x.size(3), segments, segment_rows);
  return forward_impl(x, weight, bias, groups, eps, parsed, segment_rows);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_segments_cpu(
    const at::Tensor& grad, const at::Tensor& y, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& mean, const at::Tensor& rstd, int64_t groups, const at::Tensor& runs) {
  TORCH_CHECK(x.dim() == 4 && mean.dim() == 3, "fad gn_relu: x must be [N, C, H, W] and mean "
              "[N, S, G], got ", x.sizes(), " and ", mean.sizes());
  std::vector<int64_t> segment_rows;
  const std::vector<Run> parsed =
      read_runs(runs, x.size(2) * x.size(3), mean.size(1), segment_rows);
  return backward_impl(grad, y, x, weight, mean, rstd, groups, parsed, segment_rows);
}

at::Tensor gn_relu_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                       int64_t groups, double eps) {
  return std::get<0>(forward_cpu(x, weight, bias, groups, eps));
}

// The autograd of `gn_relu`, in C++ (a Python autograd.Function costs ~20 us a call each way,
// and the demo's searched FCOS head makes 310 calls a step). The kernels are called through the
// dispatcher, so fake tensors and the profiler see `forward` / `backward`.
using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Triple call_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                    int64_t groups, double eps) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fad_gn_relu::forward", "")
          .typed<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                        double)>();
  return op.call(x, weight, bias, groups, eps);
}

Triple call_backward(const at::Tensor& grad, const at::Tensor& y, const at::Tensor& x,
                     const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& rstd,
                     int64_t groups) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fad_gn_relu::backward", "")
          .typed<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(grad, y, x, weight, mean, rstd, groups);
}

class GroupNormRelu : public torch::autograd::Function<GroupNormRelu> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& weight, const at::Tensor& bias, int64_t groups,
                            double eps) {
    auto [y, mean, rstd] = call_forward(x, weight, bias, groups, eps);
    ctx->save_for_backward({x, weight, bias, y, mean, rstd});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["eps"] = eps;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bias = saved[2];
    const int64_t groups = ctx->saved_data["groups"].toInt();
    if (at::GradMode::is_enabled()) {  // create_graph: differentiate PyTorch's own ops
      const double eps = ctx->saved_data["eps"].toDouble();
      const at::Tensor out = at::relu(at::group_norm(x, groups, weight, bias, eps));
      torch::autograd::variable_list wanted;
      const at::Tensor* inputs[3] = {&x, &weight, &bias};
      for (int i = 0; i < 3; ++i) {
        if (ctx->needs_input_grad(i)) wanted.push_back(*inputs[i]);
      }
      const torch::autograd::variable_list g =
          torch::autograd::grad({out}, wanted, {grads[0]}, true, true);
      torch::autograd::variable_list result(5);
      for (size_t i = 0, k = 0; i < 3; ++i) {
        if (ctx->needs_input_grad(i)) result[i] = g[k++];
      }
      return result;
    }
    auto [grad_x, grad_weight, grad_bias] =
        call_backward(grads[0], saved[3], x, weight, saved[4], saved[5], groups);
    return {grad_x, grad_weight, grad_bias, at::Tensor(), at::Tensor()};
  }
};

at::Tensor gn_relu_autograd(const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, int64_t groups, double eps) {
  return GroupNormRelu::apply(x, weight, bias, groups, eps);
}

}  // namespace
}  // namespace fad_gn_relu

// Schemas: fad/ops/gn_relu/schema.py.
TORCH_LIBRARY_IMPL(fad_gn_relu, CPU, m) {
  m.impl("forward", &fad_gn_relu::forward_cpu);
  m.impl("backward", &fad_gn_relu::backward_cpu);
  m.impl("gn_relu", &fad_gn_relu::gn_relu_cpu);
  m.impl("forward_segments", &fad_gn_relu::forward_segments_cpu);
  m.impl("backward_segments", &fad_gn_relu::backward_segments_cpu);
}

TORCH_LIBRARY_IMPL(fad_gn_relu, Autograd, m) { m.impl("gn_relu", &fad_gn_relu::gn_relu_autograd); }

FAD_EMPTY_PYTHON_MODULE(_gn_relu_cpu)
