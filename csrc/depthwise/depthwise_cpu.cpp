// Depthwise 3x3 convolution on the CPU (stride 1, padding = dilation, so the output has the
// input's H x W): the forward and the weight gradient. The input gradient is the forward with
// the kernel rotated by 180 degrees (the Python side passes the flipped weight).
//
// x, grad: [N, C, H, W] contiguous; weight: [C, 1, 3, 3]; float32 or float64.
// y[n, c, h, w] = sum_{ky, kx} weight[c, 0, ky, kx] * x[n, c, h + (ky - 1) d, w + (kx - 1) d]
// (zero outside the map). Every output row is built from 9 shifted row slices with an axpy,
// and the weight gradient of each tap is a sum of row dot products, so the loops run over
// contiguous memory; planes (forward) and channels (weight gradient) run in parallel.
// PyTorch's own CPU path for this op (oneDNN / slow_conv2d) is an order of magnitude below its
// dense 3x3 throughput, most of all in the backward and with dilation.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace fad_dw {
namespace {

// The two inner loops, compiled for AVX2 and for the baseline; the loader picks at run time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FAD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FAD_CLONES
#endif

FAD_CLONES void axpy(float* y, const float* x, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
FAD_CLONES void axpy(double* y, const double* x, double a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
FAD_CLONES float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
FAD_CLONES double dot(const double* a, const double* b, int64_t n) {
  double s = 0.0;
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
void plane_forward(const T* x, const T* k, T* y, int64_t height, int64_t width, int64_t d) {
  std::fill(y, y + height * width, T(0));
  for (int64_t oh = 0; oh < height; ++oh) {
    for (int ky = 0; ky < 3; ++ky) {
      const int64_t ih = oh + (ky - 1) * d;
      if (ih < 0 || ih >= height) continue;
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
void plane_grad_weight(const T* g, const T* x, double* acc, int64_t height, int64_t width,
                       int64_t d) {
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
    at::parallel_for(0, n * c, 1, [&](int64_t begin, int64_t end) {
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
    at::parallel_for(0, c, 1, [&](int64_t begin, int64_t end) {
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

// The schemas are defined on the Python side (fad/ops/depthwise.py) at import, so that the ops
// (and their FLOP formulas) exist before this library is built or loaded.
TORCH_LIBRARY_IMPL(fad_dw, CPU, m) {
  m.impl("forward", &fad_dw::forward_cpu);
  m.impl("grad_weight", &fad_dw::grad_weight_cpu);
}

extern "C" PyObject* PyInit__depthwise_cpu(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_depthwise_cpu", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
