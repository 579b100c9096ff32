// The mixing of a FAD supernet edge on the CPU: out = base + sum_k relu(GN_k(x_k)), where GN_k
// is a GroupNorm (G groups, biased variance, eps) with the per-channel affine (scale[k], shift[k])
// (the candidate's gamma, beta already multiplied by its mixing weight), and its backward.
//
// xs: K tensors [N, C, H, W] contiguous; scale, shift: [K, C]; base: [N, C, H, W] or absent;
// float32 or float64. The forward also returns mean, rstd: [K, N, G] (what the backward reads).
// The forward walks the output one (sample, group) chunk at a time (C / G planes, in cache):
// per candidate one pass for the statistics (sum and sum of squares in double lanes) and one that
// adds relu(x * a + b) into the chunk, a = scale * rstd, b = shift - mean * a (PyTorch's
// reference runs a GroupNorm, a ReLU and an add per candidate, each over the whole map).
// The backward, per (candidate, group) task over the samples, recomputes the ReLU mask from x
// with the same a, b, sums dy and dy * x per channel (grad of shift and scale), then writes
//   dx = rstd * (dy * scale - mean_g(dy * scale) - xhat * mean_g(dy * scale * xhat)),
// xhat = (x - mean) * rstd, dy = grad where the output of the ReLU is > 0, else 0.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "../common/cpu_dispatch.h"

namespace fad_mix {
namespace {

constexpr int kLanes = 8;  // independent partial sums, so the reductions vectorize

// The affine of candidate channel c after normalization: y = x * a + b.
template <typename T>
FAD_ALWAYS_INLINE void affine(T scale, T shift, T mean, T rstd, T* a, T* b) {
  *a = scale * rstd;
  *b = shift - mean * *a;
}

// sum(x), sum(x * x) over m elements.
template <typename T>
FAD_ALWAYS_INLINE void moments_body(const T* x, int64_t m, double* sum, double* sumsq) {
  double s[kLanes] = {}, q[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= m; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const double v = static_cast<double>(x[i + l]);
      s[l] += v;
      q[l] += v * v;
    }
  }
  for (; i < m; ++i) {
    const double v = static_cast<double>(x[i]);
    s[0] += v;
    q[0] += v * v;
  }
  double ts = 0, tq = 0;
  for (int l = 0; l < kLanes; ++l) {
    ts += s[l];
    tq += q[l];
  }
  *sum = ts;
  *sumsq = tq;
}

// out[i] += relu(x[i] * a + b), i < m.
template <typename T>
FAD_ALWAYS_INLINE void add_relu_body(const T* x, T a, T b, T* out, int64_t m) {
  for (int64_t i = 0; i < m; ++i) {
    const T y = x[i] * a + b;
    out[i] += y > T(0) ? y : T(0);
  }
}

// Over m elements where relu(x * a + b) > 0: sum(g) and sum(g * x) (kLanes partial sums of
// the element type: the chunk's planes are short, and double lanes here stay scalar).
template <typename T>
FAD_ALWAYS_INLINE void masked_sums_body(const T* x, const T* g, T a, T b, int64_t m,
                                        double* sum_g, double* sum_gx) {
  T s[kLanes] = {}, q[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= m; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const T xi = x[i + l], gi = g[i + l];  // loaded unconditionally, so the select vectorizes
      const T dy = xi * a + b > T(0) ? gi : T(0);
      s[l] += dy;
      q[l] += dy * xi;
    }
  }
  double ts = 0, tq = 0;
  for (; i < m; ++i) {
    const T xi = x[i], gi = g[i];
    const T dy = xi * a + b > T(0) ? gi : T(0);
    ts += dy;
    tq += static_cast<double>(dy) * xi;
  }
  for (int l = 0; l < kLanes; ++l) {
    ts += s[l];
    tq += q[l];
  }
  *sum_g = ts;
  *sum_gx = tq;
}

// dx[i] = dy[i] * p + x[i] * q + r, dy = g where relu(x * a + b) > 0, else 0.
template <typename T>
FAD_ALWAYS_INLINE void grad_x_body(const T* x, const T* g, T a, T b, T p, T q, T r, T* dx,
                                   int64_t m) {
  for (int64_t i = 0; i < m; ++i) {
    const T gi = g[i];
    const T dy = x[i] * a + b > T(0) ? gi : T(0);
    dx[i] = dy * p + x[i] * q + r;
  }
}

// The loops compiled for the baseline and for AVX2+FMA; fad::use_avx2 picks one.
template <typename T>
void moments_base(const T* x, int64_t m, double* s, double* q) { moments_body(x, m, s, q); }
template <typename T>
void add_relu_base(const T* x, T a, T b, T* out, int64_t m) { add_relu_body(x, a, b, out, m); }
template <typename T>
void masked_sums_base(const T* x, const T* g, T a, T b, int64_t m, double* s, double* q) {
  masked_sums_body(x, g, a, b, m, s, q);
}
template <typename T>
void grad_x_base(const T* x, const T* g, T a, T b, T p, T q, T r, T* dx, int64_t m) {
  grad_x_body(x, g, a, b, p, q, r, dx, m);
}
#if FAD_AVX2_BUILD
template <typename T>
FAD_TARGET_AVX2 void moments_avx2(const T* x, int64_t m, double* s, double* q) {
  moments_body(x, m, s, q);
}
template <typename T>
FAD_TARGET_AVX2 void add_relu_avx2(const T* x, T a, T b, T* out, int64_t m) {
  add_relu_body(x, a, b, out, m);
}
template <typename T>
FAD_TARGET_AVX2 void masked_sums_avx2(const T* x, const T* g, T a, T b, int64_t m, double* s,
                                      double* q) {
  masked_sums_body(x, g, a, b, m, s, q);
}
template <typename T>
FAD_TARGET_AVX2 void grad_x_avx2(const T* x, const T* g, T a, T b, T p, T q, T r, T* dx,
                                 int64_t m) {
  grad_x_body(x, g, a, b, p, q, r, dx, m);
}
#endif

template <typename T>
void moments(const T* x, int64_t m, double* s, double* q) {
#if FAD_AVX2_BUILD
  if (fad::use_avx2()) return moments_avx2(x, m, s, q);
#endif
  moments_base(x, m, s, q);
}
template <typename T>
void add_relu(const T* x, T a, T b, T* out, int64_t m) {
#if FAD_AVX2_BUILD
  if (fad::use_avx2()) return add_relu_avx2(x, a, b, out, m);
#endif
  add_relu_base(x, a, b, out, m);
}
template <typename T>
void masked_sums(const T* x, const T* g, T a, T b, int64_t m, double* s, double* q) {
#if FAD_AVX2_BUILD
  if (fad::use_avx2()) return masked_sums_avx2(x, g, a, b, m, s, q);
#endif
  masked_sums_base(x, g, a, b, m, s, q);
}
template <typename T>
void grad_x(const T* x, const T* g, T a, T b, T p, T q, T r, T* dx, int64_t m) {
#if FAD_AVX2_BUILD
  if (fad::use_avx2()) return grad_x_avx2(x, g, a, b, p, q, r, dx, m);
#endif
  grad_x_base(x, g, a, b, p, q, r, dx, m);
}

// Elements per parallel task: small maps run in one task (no parallel region per call).
constexpr int64_t kGrainElements = 1 << 15;

inline int64_t grain(int64_t per_item) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, per_item));
}

// [N, C, H, W] sizes and the group layout shared by all inputs.
struct Shape {
  int64_t n, c, groups, per_group, plane;
};

Shape check(at::TensorList xs, const at::Tensor& scale, const at::Tensor& shift, int64_t groups) {
  TORCH_CHECK(!xs.empty(), "fad mix: no inputs");
  const at::Tensor& x0 = xs[0];
  TORCH_CHECK(x0.dim() == 4, "fad mix: inputs must be [N, C, H, W], got ", x0.sizes());
  for (const at::Tensor& x : xs) {
    TORCH_CHECK(x.sizes() == x0.sizes() && x.scalar_type() == x0.scalar_type(),
                "fad mix: inputs differ in shape or dtype");
  }
  const int64_t k = static_cast<int64_t>(xs.size()), c = x0.size(1);
  TORCH_CHECK(groups > 0 && c % groups == 0, "fad mix: ", c, " channels in ", groups, " groups");
  for (const at::Tensor& t : {scale, shift}) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == k && t.size(1) == c &&
                    t.scalar_type() == x0.scalar_type(),
                "fad mix: scale and shift must be [", k, ", ", c, "] of the inputs' dtype, got ",
                t.sizes());
  }
  return {x0.size(0), c, groups, c / groups, x0.size(2) * x0.size(3)};
}

std::vector<at::Tensor> contiguous(at::TensorList xs) {
  std::vector<at::Tensor> out;
  out.reserve(xs.size());
  for (const at::Tensor& x : xs) out.push_back(x.contiguous());
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(
    at::TensorList xs_in, const at::Tensor& scale_in, const at::Tensor& shift_in,
    const std::optional<at::Tensor>& base_in, int64_t groups, double eps) {
  const Shape s = check(xs_in, scale_in, shift_in, groups);
  const std::vector<at::Tensor> xs = contiguous(xs_in);
  const at::Tensor scale = scale_in.contiguous(), shift = shift_in.contiguous();
  const int64_t k = static_cast<int64_t>(xs.size()), chunk = s.per_group * s.plane;
  at::Tensor base;
  if (base_in.has_value()) {
    TORCH_CHECK(base_in->sizes() == xs[0].sizes() && base_in->scalar_type() == xs[0].scalar_type(),
                "fad mix: base must match the inputs");
    base = base_in->contiguous();
  }
  at::Tensor out = at::empty_like(xs[0]);
  at::Tensor mean = at::empty({k, s.n, s.groups}, xs[0].options());
  at::Tensor rstd = at::empty({k, s.n, s.groups}, xs[0].options());
  AT_DISPATCH_FLOATING_TYPES(xs[0].scalar_type(), "fad_mix_forward", [&] {
    std::vector<const scalar_t*> xp;
    for (const at::Tensor& x : xs) xp.push_back(x.const_data_ptr<scalar_t>());
    const scalar_t* sp = scale.const_data_ptr<scalar_t>();
    const scalar_t* bp = shift.const_data_ptr<scalar_t>();
    const scalar_t* basep = base.defined() ? base.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    scalar_t* mp = mean.mutable_data_ptr<scalar_t>();
    scalar_t* rp = rstd.mutable_data_ptr<scalar_t>();
    const int64_t chunks = s.n * s.groups;
    at::parallel_for(0, chunks, grain(k * chunk), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t first_channel = (p % s.groups) * s.per_group;
        scalar_t* o = op + p * chunk;
        if (basep != nullptr) {
          std::copy(basep + p * chunk, basep + (p + 1) * chunk, o);
        } else {
          std::fill(o, o + chunk, scalar_t(0));
        }
        for (int64_t t = 0; t < k; ++t) {
          const scalar_t* x = xp[t] + p * chunk;
          double sum, sumsq;
          moments(x, chunk, &sum, &sumsq);
          const double mu = sum / chunk;
          const double var = std::max(sumsq / chunk - mu * mu, 0.0);
          const scalar_t m = static_cast<scalar_t>(mu);
          const scalar_t r = static_cast<scalar_t>(1.0 / std::sqrt(var + eps));
          mp[t * chunks + p] = m;
          rp[t * chunks + p] = r;
          for (int64_t j = 0; j < s.per_group; ++j) {
            const int64_t ch = first_channel + j;
            scalar_t a, b;
            affine(sp[t * s.c + ch], bp[t * s.c + ch], m, r, &a, &b);
            add_relu(x + j * s.plane, a, b, o + j * s.plane, s.plane);
          }
        }
      }
    });
  });
  return {out, mean, rstd};
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_in, at::TensorList xs_in, const at::Tensor& scale_in,
    const at::Tensor& shift_in, const at::Tensor& mean_in, const at::Tensor& rstd_in,
    int64_t groups) {
  const Shape s = check(xs_in, scale_in, shift_in, groups);
  TORCH_CHECK(grad_in.sizes() == xs_in[0].sizes(), "fad mix: grad ", grad_in.sizes(),
              " does not match the inputs ", xs_in[0].sizes());
  const std::vector<at::Tensor> xs = contiguous(xs_in);
  const at::Tensor grad = grad_in.contiguous(), scale = scale_in.contiguous(),
                   shift = shift_in.contiguous(), mean = mean_in.contiguous(),
                   rstd = rstd_in.contiguous();
  const int64_t k = static_cast<int64_t>(xs.size()), chunk = s.per_group * s.plane;
  std::vector<at::Tensor> grad_xs;
  for (const at::Tensor& x : xs) grad_xs.push_back(at::empty_like(x));
  at::Tensor grad_scale = at::empty_like(scale), grad_shift = at::empty_like(shift);
  AT_DISPATCH_FLOATING_TYPES(xs[0].scalar_type(), "fad_mix_backward", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* sp = scale.const_data_ptr<scalar_t>();
    const scalar_t* bp = shift.const_data_ptr<scalar_t>();
    const scalar_t* mp = mean.const_data_ptr<scalar_t>();
    const scalar_t* rp = rstd.const_data_ptr<scalar_t>();
    scalar_t* gsp = grad_scale.mutable_data_ptr<scalar_t>();
    scalar_t* gbp = grad_shift.mutable_data_ptr<scalar_t>();
    const int64_t chunks = s.n * s.groups;
    // One task per (candidate, group): it alone writes that group's channels of grad_scale[k].
    at::parallel_for(0, k * s.groups, grain(s.n * chunk), [&](int64_t begin, int64_t end) {
      std::vector<double> sum_g(s.per_group), sum_gx(s.per_group);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t t = task / s.groups, group = task % s.groups;
        const int64_t first_channel = group * s.per_group;
        const scalar_t* xb = xs[t].const_data_ptr<scalar_t>();
        scalar_t* dxb = grad_xs[t].mutable_data_ptr<scalar_t>();
        std::vector<double> d_scale(s.per_group, 0.0), d_shift(s.per_group, 0.0);
        for (int64_t b = 0; b < s.n; ++b) {
          const int64_t p = b * s.groups + group, offset = p * chunk;
          const scalar_t m = mp[t * chunks + p], r = rp[t * chunks + p];
          const double md = m, rd = r;
          double a_sum = 0, b_sum = 0;  // sum_g(dy * scale), sum_g(dy * scale * xhat)
          for (int64_t j = 0; j < s.per_group; ++j) {
            const int64_t ch = first_channel + j;
            scalar_t a, bb;
            affine(sp[t * s.c + ch], bp[t * s.c + ch], m, r, &a, &bb);
            masked_sums(xb + offset + j * s.plane, gp + offset + j * s.plane, a, bb, s.plane,
                        &sum_g[j], &sum_gx[j]);
            const double dy_xhat = rd * (sum_gx[j] - md * sum_g[j]);
            d_scale[j] += dy_xhat;
            d_shift[j] += sum_g[j];
            a_sum += static_cast<double>(sp[t * s.c + ch]) * sum_g[j];
            b_sum += static_cast<double>(sp[t * s.c + ch]) * dy_xhat;
          }
          const double ma = a_sum / chunk, mb = b_sum / chunk;
          // dx = rstd * (dy * scale - ma - (x - mean) * rstd * mb)
          const scalar_t q = static_cast<scalar_t>(-rd * rd * mb);
          const scalar_t rr = static_cast<scalar_t>(rd * (md * rd * mb - ma));
          for (int64_t j = 0; j < s.per_group; ++j) {
            const int64_t ch = first_channel + j;
            scalar_t a, bb;
            affine(sp[t * s.c + ch], bp[t * s.c + ch], m, r, &a, &bb);
            const scalar_t pc = sp[t * s.c + ch] * r;
            grad_x(xb + offset + j * s.plane, gp + offset + j * s.plane, a, bb, pc, q, rr,
                   dxb + offset + j * s.plane, s.plane);
          }
        }
        for (int64_t j = 0; j < s.per_group; ++j) {
          gsp[t * s.c + first_channel + j] = static_cast<scalar_t>(d_scale[j]);
          gbp[t * s.c + first_channel + j] = static_cast<scalar_t>(d_shift[j]);
        }
      }
    });
  });
  return {grad_xs, grad_scale, grad_shift};
}

}  // namespace
}  // namespace fad_mix

// Schemas: fad/ops/mix/schema.py.
TORCH_LIBRARY_IMPL(fad_mix, CPU, m) {
  m.impl("forward", &fad_mix::forward_cpu);
  m.impl("backward", &fad_mix::backward_cpu);
}

FAD_EMPTY_PYTHON_MODULE(_mix_cpu)
