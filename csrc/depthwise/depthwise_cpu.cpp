// Depthwise 3x3 convolution on the CPU (stride 1, padding = dilation, so the output has the
// input's H x W): the forward and the weight gradient. The input gradient is the forward with
// the kernel rotated by 180 degrees (the Python side passes the flipped weight).
//
// x, grad: [N, C, H, W] contiguous; weight: [C, 1, 3, 3]; float32 or float64.
// y[n, c, h, w] = sum_{ky, kx} weight[c, 0, ky, kx] * x[n, c, h + (ky - 1) d, w + (kx - 1) d]
// (zero outside the map). Every output row is built from 9 shifted row slices with an axpy,
// and the weight gradient of each tap is a sum of row dot products, so the loops run over
// contiguous memory; planes (forward) and channels (weight gradient) run in parallel, in tasks
// of at least kGrainElements elements.
// PyTorch's own CPU path for this op (oneDNN / slow_conv2d) is an order of magnitude below its
// dense 3x3 throughput, most of all in the backward and with dilation.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "../common/cpu_dispatch.h"

namespace fad_dw {
namespace {

template <typename T>
FAD_ALWAYS_INLINE void axpy(T* __restrict__ y, const T* __restrict__ x, T a, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

template <typename T>
FAD_ALWAYS_INLINE T dot(const T* a, const T* b, int64_t n) {
  T s = T(0);
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Columns [lo, hi) of an output row read the input row at column offset dx (both in range).
struct Span {
  int64_t lo, hi, dx;
};

inline Span span(int kx, int64_t width, int64_t dilation) {
  const int64_t dx = (kx - 1) * dilation;
  return {std::max<int64_t>(0, -dx), std::min<int64_t>(width, width - dx), dx};
}

template <typename T>
FAD_ALWAYS_INLINE void plane_forward_body(const T* x, const T* k, T* y, int64_t height,
                                          int64_t width, int64_t d) {
  std::fill(y, y + height * width, T(0));
  for (int64_t oh = 0; oh < height; ++oh) {
    for (int ky = 0; ky < 3; ++ky) {
      const int64_t ih = oh + (ky - 1) * d;
      if (!fad::inside(ih, height)) continue;
      for (int kx = 0; kx < 3; ++kx) {
        const Span s = span(kx, width, d);
        if (s.hi > s.lo) {
          axpy(y + oh * width + s.lo, x + ih * width + s.lo + s.dx, k[ky * 3 + kx], s.hi - s.lo);
        }
      }
    }
  }
}

// acc[tap] += sum over the plane of grad[h, w] * x[h + (ky - 1) d, w + (kx - 1) d].
template <typename T>
FAD_ALWAYS_INLINE void plane_grad_weight_body(const T* g, const T* x, double* acc,
                                              int64_t height, int64_t width, int64_t d) {
  for (int ky = 0; ky < 3; ++ky) {
    const int64_t dy = (ky - 1) * d;
    const int64_t h0 = std::max<int64_t>(0, -dy), h1 = std::min<int64_t>(height, height - dy);
    for (int kx = 0; kx < 3; ++kx) {
      const Span s = span(kx, width, d);
      if (s.hi <= s.lo) continue;
      double total = 0.0;
      for (int64_t oh = h0; oh < h1; ++oh) {
        total += dot(g + oh * width + s.lo, x + (oh + dy) * width + s.lo + s.dx, s.hi - s.lo);
      }
      acc[ky * 3 + kx] += total;
    }
  }
}

// The plane loops compiled for the baseline and for AVX2+FMA; fad::use_avx2 picks one.
template <typename T>
void plane_forward_base(const T* x, const T* k, T* y, int64_t h, int64_t w, int64_t d) {
  plane_forward_body(x, k, y, h, w, d);
}

template <typename T>
void plane_grad_weight_base(const T* g, const T* x, double* acc, int64_t h, int64_t w,
                            int64_t d) {
  plane_grad_weight_body(g, x, acc, h, w, d);
}

#if FAD_AVX2_BUILD
template <typename T>
FAD_TARGET_AVX2 void plane_forward_avx2(const T* x, const T* k, T* y, int64_t h, int64_t w,
                                        int64_t d) {
  plane_forward_body(x, k, y, h, w, d);
}

template <typename T>
FAD_TARGET_AVX2 void plane_grad_weight_avx2(const T* g, const T* x, double* acc, int64_t h,
                                            int64_t w, int64_t d) {
  plane_grad_weight_body(g, x, acc, h, w, d);
}
#endif

template <typename T>
void plane_forward(const T* x, const T* k, T* y, int64_t h, int64_t w, int64_t d) {
#if FAD_AVX2_BUILD
  if (fad::use_avx2()) return plane_forward_avx2(x, k, y, h, w, d);
#endif
  plane_forward_base(x, k, y, h, w, d);
}

template <typename T>
void plane_grad_weight(const T* g, const T* x, double* acc, int64_t h, int64_t w, int64_t d) {
#if FAD_AVX2_BUILD
  if (fad::use_avx2()) return plane_grad_weight_avx2(g, x, acc, h, w, d);
#endif
  plane_grad_weight_base(g, x, acc, h, w, d);
}

// Elements per parallel task: small maps (the supernet's P5-P7, the tiny search) run in one
// task instead of paying a parallel region (and, on a loaded machine, a barrier) per call.
constexpr int64_t kGrainElements = 1 << 15;

inline int64_t grain(int64_t per_item) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, per_item));
}

void check(const at::Tensor& x, const at::Tensor& weight, int64_t dilation) {
  TORCH_CHECK(x.dim() == 4, "fad depthwise: x must be [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == x.size(1) && weight.size(1) == 1 &&
                  weight.size(2) == 3 && weight.size(3) == 3,
              "fad depthwise: weight must be [C, 1, 3, 3] with C = ", x.size(1), ", got ",
              weight.sizes());
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "fad depthwise: dtypes differ");
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "fad depthwise: CPU tensors only");
  TORCH_CHECK(dilation >= 1, "fad depthwise: dilation must be >= 1, got ", dilation);
}

at::Tensor forward_cpu(const at::Tensor& x_in, const at::Tensor& weight_in, int64_t dilation) {
  check(x_in, weight_in, dilation);
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fad_depthwise_forward", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* kp = weight.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n * c, grain(h * w), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        plane_forward(xp + p * h * w, kp + (p % c) * 9, yp + p * h * w, h, w, dilation);
      }
    });
  });
  return y;
}

at::Tensor grad_weight_cpu(const at::Tensor& grad_in, const at::Tensor& x_in, int64_t dilation) {
  TORCH_CHECK(grad_in.sizes() == x_in.sizes(), "fad depthwise: grad ", grad_in.sizes(),
              " and x ", x_in.sizes(), " differ");
  const at::Tensor grad = grad_in.contiguous(), x = x_in.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  at::Tensor out = at::empty({c, 1, 3, 3}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fad_depthwise_grad_weight", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, c, grain(n * h * w), [&](int64_t begin, int64_t end) {
      for (int64_t ch = begin; ch < end; ++ch) {
        double acc[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t b = 0; b < n; ++b) {
          const int64_t plane = (b * c + ch) * h * w;
          plane_grad_weight(gp + plane, xp + plane, acc, h, w, dilation);
        }
        for (int t = 0; t < 9; ++t) op[ch * 9 + t] = static_cast<scalar_t>(acc[t]);
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace fad_dw

// Schemas: fad/ops/depthwise.py.
TORCH_LIBRARY_IMPL(fad_dw, CPU, m) {
  m.impl("forward", &fad_dw::forward_cpu);
  m.impl("grad_weight", &fad_dw::grad_weight_cpu);
}

FAD_EMPTY_PYTHON_MODULE(_depthwise_cpu)
