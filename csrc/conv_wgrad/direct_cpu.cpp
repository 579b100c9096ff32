// The weight gradient of a groups-1 convolution on the CPU, summed directly over the positions
// of channels-last maps: no im2col, no GEMM library.
//
// For y = conv2d(x, w) with stride (sh, sw), zero padding (ph, pw) and dilation (dh, dw):
//   grad_w[o, c, i, j] = sum over n, yo, xo of grad_y[n, yo, xo, o] * x[n, yi, xi, c],
//   yi = yo * sh + i * dh - ph,  xi = xo * sw + j * dw - pw  (positions outside x add nothing).
// x: [N, C, H, W], grad_y: [N, O, Ho, Wo] (made channels-last: rows of contiguous channels);
// float32 or float64. Returns grad_w [O, C, kh, kw] with channels-last strides (the [O, kh, kw,
// C] buffer it is summed in), as `weight_grad_gemm` does.
//
// One task per output row (n, yo); each thread sums into its own [O, kh, kw, C] buffer, the
// buffers are added at the end (in thread order: the same sums for the same thread count). For a
// row, a tap (i, j) and a block of block_c<T>() input channels (two vectors: 16 float32), a sweep
// over the row's valid output positions keeps kBlockO = 6 output channels x that block in 12
// accumulating vectors (the two vectors of x loaded once per position, each grad_y value
// broadcast once): FMA-bound. oneDNN's own weight gradient on AVX2 CPUs (its `jit:avx2`
// kernel) runs at about half its forward convolution's rate for the 32- and 64-channel layers of
// the FAD head and ResNet's layer1; this runs near the forward's (docs/ops.md).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../common/cpu_dispatch.h"

namespace fad_conv_wgrad {
namespace {

constexpr int kVecBytes = 32;  // one AVX2 register; two SSE registers in the baseline copy
constexpr int kBlockO = 6;     // output channels per register block

// Input channels per block: two vectors.
template <typename T>
constexpr int64_t block_c() {
  return 2 * kVecBytes / static_cast<int64_t>(sizeof(T));
}

struct Geometry {
  int64_t h, w, c, ho, wo, o, kh, kw, sh, sw, ph, pw, dh, dw;
};

// acc[q * acc_step + e] += sum over t < count of g[t * g_step + q] * x[t * x_step + e] for the
// q < KB output channels and the e < block_c<T>() input channels of one block.
template <typename T, int KB>
FAD_ALWAYS_INLINE void sweep_block(const T* __restrict g, const T* __restrict x,
                                   T* __restrict acc, int64_t acc_step, int64_t count,
                                   int64_t g_step, int64_t x_step) {
  typedef T Vec __attribute__((vector_size(kVecBytes)));
  constexpr int kLanes = kVecBytes / sizeof(T);
  Vec s[KB][2];
  for (int q = 0; q < KB; ++q) {
    std::memcpy(&s[q][0], acc + q * acc_step, kVecBytes);
    std::memcpy(&s[q][1], acc + q * acc_step + kLanes, kVecBytes);
  }
  for (int64_t t = 0; t < count; ++t, g += g_step, x += x_step) {
    Vec x0, x1;
    std::memcpy(&x0, x, kVecBytes);
    std::memcpy(&x1, x + kLanes, kVecBytes);
    for (int q = 0; q < KB; ++q) {
      const T b = g[q];
      s[q][0] += b * x0;
      s[q][1] += b * x1;
    }
  }
  for (int q = 0; q < KB; ++q) {
    std::memcpy(acc + q * acc_step, &s[q][0], kVecBytes);
    std::memcpy(acc + q * acc_step + kLanes, &s[q][1], kVecBytes);
  }
}

// The same for `width` < block_c<T>() input channels (the last block), one output channel at a
// time, plain loops.
template <typename T>
FAD_ALWAYS_INLINE void sweep_tail(const T* g, const T* x, T* acc, int64_t acc_step,
                                  int64_t outs, int64_t width, int64_t count, int64_t g_step,
                                  int64_t x_step) {
  for (int64_t q = 0; q < outs; ++q) {
    T* a = acc + q * acc_step;
    for (int64_t t = 0; t < count; ++t) {
      const T b = g[t * g_step + q];
      const T* xt = x + t * x_step;
      for (int64_t e = 0; e < width; ++e) a[e] += b * xt[e];
    }
  }
}

// KB output channels from `o0` for one block of input channels: the register block, or the last
// 1-5 output channels with a smaller one.
template <typename T>
FAD_ALWAYS_INLINE void sweep_outs(const T* g, const T* x, T* acc, int64_t acc_step, int64_t outs,
                                  int64_t count, int64_t g_step, int64_t x_step) {
  switch (outs) {
    case 6: return sweep_block<T, 6>(g, x, acc, acc_step, count, g_step, x_step);
    case 5: return sweep_block<T, 5>(g, x, acc, acc_step, count, g_step, x_step);
    case 4: return sweep_block<T, 4>(g, x, acc, acc_step, count, g_step, x_step);
    case 3: return sweep_block<T, 3>(g, x, acc, acc_step, count, g_step, x_step);
    case 2: return sweep_block<T, 2>(g, x, acc, acc_step, count, g_step, x_step);
    default: return sweep_block<T, 1>(g, x, acc, acc_step, count, g_step, x_step);
  }
}

// Output channels in the next register block when `left` remain: kBlockO, except that 7 or 8
// left split 4 + 3 or 4 + 4 (a last block of 1 or 2 would keep too few FMAs in flight).
FAD_ALWAYS_INLINE int64_t block_outs(int64_t left) {
  return left == kBlockO + 1 || left == kBlockO + 2 ? 4 : std::min<int64_t>(kBlockO, left);
}

// First and one-past-last output column xo whose input column xo * sw + off is inside [0, w).
FAD_ALWAYS_INLINE void valid_columns(int64_t off, int64_t sw, int64_t w, int64_t wo, int64_t& lo,
                                     int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + sw - 1) / sw;
  hi = w - off <= 0 ? 0 : std::min(wo, (w - off - 1) / sw + 1);
}

// acc[o, i, j, c] += the terms of output row (n, yo): x_img = x[n], g_row = grad_y[n, yo].
template <typename T>
FAD_ALWAYS_INLINE void row_body(const Geometry& s, const T* x_img, const T* g_row, int64_t yo,
                                T* acc) {
  constexpr int64_t kc = block_c<T>();
  const int64_t acc_step = s.kh * s.kw * s.c;  // between output channels
  for (int64_t i = 0; i < s.kh; ++i) {
    const int64_t yi = yo * s.sh + i * s.dh - s.ph;
    if (yi < 0 || yi >= s.h) continue;
    const T* x_row = x_img + yi * s.w * s.c;
    for (int64_t j = 0; j < s.kw; ++j) {
      const int64_t off = j * s.dw - s.pw;
      int64_t lo, hi;
      valid_columns(off, s.sw, s.w, s.wo, lo, hi);
      if (lo >= hi) continue;
      const T* g0 = g_row + lo * s.o;
      const T* x0 = x_row + (lo * s.sw + off) * s.c;
      T* a_tap = acc + (i * s.kw + j) * s.c;
      for (int64_t c0 = 0; c0 < s.c; c0 += kc) {
        const int64_t width = std::min(kc, s.c - c0);
        for (int64_t o0 = 0, outs; o0 < s.o; o0 += outs) {
          outs = block_outs(s.o - o0);
          T* a = a_tap + o0 * acc_step + c0;
          if (width == kc) {
            sweep_outs(g0 + o0, x0 + c0, a, acc_step, outs, hi - lo, s.o, s.sw * s.c);
          } else {
            sweep_tail(g0 + o0, x0 + c0, a, acc_step, outs, width, hi - lo, s.o, s.sw * s.c);
          }
        }
      }
    }
  }
}

// The row loop compiled for the baseline and for AVX2+FMA; fad::use_avx2 picks one.
template <typename T>
void row_base(const Geometry& s, const T* x_img, const T* g_row, int64_t yo, T* acc) {
  row_body(s, x_img, g_row, yo, acc);
}
#if FAD_AVX2_BUILD
template <typename T>
FAD_TARGET_AVX2 void row_avx2(const Geometry& s, const T* x_img, const T* g_row, int64_t yo,
                              T* acc) {
  row_body(s, x_img, g_row, yo, acc);
}
#endif
template <typename T>
void row(const Geometry& s, const T* x_img, const T* g_row, int64_t yo, T* acc) {
#if FAD_AVX2_BUILD
  if (fad::use_avx2()) return row_avx2(s, x_img, g_row, yo, acc);
#endif
  row_base(s, x_img, g_row, yo, acc);
}

int64_t output_size(int64_t size, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  return (size + 2 * pad - dil * (k - 1) - 1) / stride + 1;
}

at::Tensor weight_grad(const at::Tensor& x_in, const at::Tensor& grad_in,
                       at::IntArrayRef kernel_size, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(x_in.dim() == 4 && grad_in.dim() == 4,
              "fad_conv_wgrad::weight_grad: x and grad_out must be 4-D, got ", x_in.sizes(),
              " and ", grad_in.sizes());
  TORCH_CHECK(x_in.scalar_type() == grad_in.scalar_type() &&
                  (x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble),
              "fad_conv_wgrad::weight_grad: float32 or float64 tensors of one dtype, got ",
              x_in.scalar_type(), " and ", grad_in.scalar_type());
  TORCH_CHECK(x_in.device().is_cpu() && grad_in.device().is_cpu(),
              "fad_conv_wgrad::weight_grad: CPU tensors only");
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 &&
                  dilation.size() == 2,
              "fad_conv_wgrad::weight_grad: kernel_size, stride, padding, dilation are pairs");
  Geometry s{};
  const int64_t n = x_in.size(0);
  s.c = x_in.size(1);
  s.h = x_in.size(2);
  s.w = x_in.size(3);
  s.o = grad_in.size(1);
  s.ho = grad_in.size(2);
  s.wo = grad_in.size(3);
  s.kh = kernel_size[0], s.kw = kernel_size[1];
  s.sh = stride[0], s.sw = stride[1];
  s.ph = padding[0], s.pw = padding[1];
  s.dh = dilation[0], s.dw = dilation[1];
  TORCH_CHECK(s.kh > 0 && s.kw > 0 && s.sh > 0 && s.sw > 0 && s.dh > 0 && s.dw > 0 &&
                  s.ph >= 0 && s.pw >= 0,
              "fad_conv_wgrad::weight_grad: kernel, stride and dilation > 0, padding >= 0");
  TORCH_CHECK(grad_in.size(0) == n && s.ho == output_size(s.h, s.kh, s.sh, s.ph, s.dh) &&
                  s.wo == output_size(s.w, s.kw, s.sw, s.pw, s.dw),
              "fad_conv_wgrad::weight_grad: grad_out ", grad_in.sizes(),
              " is not the output of x ", x_in.sizes(), " with kernel ", kernel_size,
              ", stride ", stride, ", padding ", padding, ", dilation ", dilation);
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor g = grad_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t per = s.o * s.kh * s.kw * s.c;
  const int64_t rows = n * s.ho;
  const int64_t threads = at::get_num_threads();
  at::Tensor partial = at::zeros({threads, s.o, s.kh, s.kw, s.c}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fad_conv_wgrad::weight_grad", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* pp = partial.mutable_data_ptr<scalar_t>();
    const int64_t grain = (rows + threads - 1) / threads;
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      scalar_t* acc = pp + at::get_thread_num() * per;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t img = r / s.ho, yo = r % s.ho;
        row(s, xp + img * s.h * s.w * s.c, gp + (img * s.ho + yo) * s.wo * s.o, yo, acc);
      }
    });
  });
  const at::Tensor summed = threads == 1 ? partial[0] : partial.sum(0);
  return summed.permute({0, 3, 1, 2});  // [O, C, kh, kw], channels-last strides
}

}  // namespace
}  // namespace fad_conv_wgrad

TORCH_LIBRARY_IMPL(fad_conv_wgrad, CPU, m) { m.impl("weight_grad", &fad_conv_wgrad::weight_grad); }

FAD_EMPTY_PYTHON_MODULE(_conv_wgrad_cpu)
