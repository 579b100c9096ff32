// Depthwise 3x3 convolution on channels-last (NHWC) maps, CPU: the forward and the weight
// gradient (stride 1, padding = dilation d; the input gradient is the forward with the kernel
// rotated by 180 degrees, as for the NCHW kernel in depthwise_cpu.cpp).
//
// x, grad: [N, C, H, W] in channels-last memory, i.e. rows r = (n, h) of W pixels of C
// contiguous channels; weight [C, 1, 3, 3], read as kt [9, C] (tap-major, so a tap's weights
// are contiguous along the channels); float32 or float64.
// y[n, h, w, c] = sum_{ky, kx} weight[c, ky, kx] * x[n, h + (ky - 1) d, w + (kx - 1) d, c]
// (zero outside the map). Per output row and block of 32 bytes of channels (a GCC/Clang vector:
// one AVX2 register), the block's 9 tap weights stay in registers while the row's pixels run,
// each pixel's taps summed in a register (taps whose column is outside the row skipped, rows
// outside the map read a zero row); the channels after the last whole block one by one. Output
// rows run in parallel, in tasks of at least kGrainElements elements.
// The weight gradient gw[c, tap] = sum over (n, h, w) of grad[n, h, w, c] * x[tap's pixel, c]:
// per row and channel block, the 9 taps' partial sums in registers (element type), added in
// double into one [9, C] buffer per chunk of rows; chunks have a fixed size set by the shape
// alone (kChunkElements), and their buffers are added in chunk order at the end, so the result
// does not depend on the number of threads.
// oneDNN's NHWC depthwise (what F.conv2d runs on a channels-last input) is slower fwd+bwd at the
// demo's maps, several times with dilation 2 or on small maps (docs/fad.md, "Session 9").
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common/cpu_dispatch.h"
#include "depthwise_nhwc.h"

namespace fad_dw {
namespace {

// Rows (n, h) of a map as a flat index r = n * height + h, and what a row's pixels read.
struct Map {
  int64_t height, width, channels, dilation;

  int64_t row_elements() const { return width * channels; }

  // The three input rows of output row r (row h + (ky - 1) d of the same sample, or the zero
  // row outside the map).
  template <typename T>
  FAD_ALWAYS_INLINE void tap_rows(const T* x, const T* zeros, int64_t r, const T* rows[3]) const {
    const int64_t sample = r / height, h = r % height;
    for (int ky = 0; ky < 3; ++ky) {
      const int64_t ih = h + (ky - 1) * dilation;
      rows[ky] = fad::inside(ih, height) ? x + (sample * height + ih) * row_elements() : zeros;
    }
  }
};

// 32 bytes of T (one AVX2 register; two SSE2 ones in the baseline copy) as a GCC/Clang vector,
// loaded and stored unaligned.
template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(32)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t kLanes = 32 / sizeof(T);

template <typename T>
FAD_ALWAYS_INLINE Vec<T> load(const T* p) {
  Vec<T> v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
FAD_ALWAYS_INLINE void store(T* p, Vec<T> v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

// Output rows [begin, end): for each block of kLanes channels its 9 tap weights stay in
// registers while the row's pixels run (the taps whose column is outside the row skipped); the
// channels after the last whole block one by one.
template <typename T>
FAD_ALWAYS_INLINE void rows_forward_body(const T* x, const T* kt, T* y, const T* zeros,
                                         int64_t begin, int64_t end, const Map& m) {
  const int64_t c = m.channels, d = m.dilation, width = m.width;
  const int64_t vec_end = c - c % kLanes<T>;
  for (int64_t r = begin; r < end; ++r) {
    const T* rows[3];
    m.tap_rows(x, zeros, r, rows);
    T* out = y + r * m.row_elements();
    for (int64_t cb = 0; cb < vec_end; cb += kLanes<T>) {
      Vec<T> k[9];
      for (int t = 0; t < 9; ++t) k[t] = load(kt + t * c + cb);
      for (int64_t w = 0; w < width; ++w) {
        Vec<T> acc = {};
        for (int kx = 0; kx < 3; ++kx) {
          const int64_t iw = w + (kx - 1) * d;
          if (!fad::inside(iw, width)) continue;
          const int64_t at = iw * c + cb;
          acc += k[kx] * load(rows[0] + at) + k[3 + kx] * load(rows[1] + at) +
                 k[6 + kx] * load(rows[2] + at);
        }
        store(out + w * c + cb, acc);
      }
    }
    for (int64_t w = 0; w < width; ++w) {
      for (int64_t j = vec_end; j < c; ++j) {
        T acc = T(0);
        for (int kx = 0; kx < 3; ++kx) {
          const int64_t iw = w + (kx - 1) * d;
          if (!fad::inside(iw, width)) continue;
          for (int ky = 0; ky < 3; ++ky) acc += kt[(ky * 3 + kx) * c + j] * rows[ky][iw * c + j];
        }
        out[w * c + j] = acc;
      }
    }
  }
}

// acc[tap, c] += sum over rows [begin, end) and their pixels of grad * the tap's input: per row
// and block of kLanes channels, the 9 taps' partial sums in registers (element type), added
// into acc (double) at the row's end; the channels after the last whole block one by one.
template <typename T>
FAD_ALWAYS_INLINE void rows_grad_weight_body(const T* grad, const T* x, double* acc,
                                             const T* zeros, int64_t begin, int64_t end,
                                             const Map& m) {
  const int64_t c = m.channels, d = m.dilation, width = m.width;
  const int64_t vec_end = c - c % kLanes<T>;
  for (int64_t r = begin; r < end; ++r) {
    const T* rows[3];
    m.tap_rows(x, zeros, r, rows);
    const T* g = grad + r * m.row_elements();
    for (int64_t cb = 0; cb < vec_end; cb += kLanes<T>) {
      Vec<T> s[9] = {};
      for (int64_t w = 0; w < width; ++w) {
        const Vec<T> gv = load(g + w * c + cb);
        for (int kx = 0; kx < 3; ++kx) {
          const int64_t iw = w + (kx - 1) * d;
          if (!fad::inside(iw, width)) continue;
          const int64_t at = iw * c + cb;
          s[kx] += gv * load(rows[0] + at);
          s[3 + kx] += gv * load(rows[1] + at);
          s[6 + kx] += gv * load(rows[2] + at);
        }
      }
      for (int t = 0; t < 9; ++t) {
        T lanes[kLanes<T>];
        store(lanes, s[t]);
        for (int64_t l = 0; l < kLanes<T>; ++l) acc[t * c + cb + l] += lanes[l];
      }
    }
    for (int64_t j = vec_end; j < c; ++j) {
      T s[9] = {};
      for (int64_t w = 0; w < width; ++w) {
        const T gv = g[w * c + j];
        for (int kx = 0; kx < 3; ++kx) {
          const int64_t iw = w + (kx - 1) * d;
          if (!fad::inside(iw, width)) continue;
          for (int ky = 0; ky < 3; ++ky) s[ky * 3 + kx] += gv * rows[ky][iw * c + j];
        }
      }
      for (int t = 0; t < 9; ++t) acc[t * c + j] += s[t];
    }
  }
}

// The row loops compiled for the baseline and for AVX2+FMA; fad::use_avx2 picks one.
template <typename T>
void rows_forward_base(const T* x, const T* kt, T* y, const T* zeros, int64_t begin,
                       int64_t end, const Map& m) {
  rows_forward_body(x, kt, y, zeros, begin, end, m);
}

template <typename T>
void rows_grad_weight_base(const T* grad, const T* x, double* acc, const T* zeros,
                           int64_t begin, int64_t end, const Map& m) {
  rows_grad_weight_body(grad, x, acc, zeros, begin, end, m);
}

#if FAD_AVX2_BUILD
template <typename T>
FAD_TARGET_AVX2 void rows_forward_avx2(const T* x, const T* kt, T* y, const T* zeros,
                                       int64_t begin, int64_t end, const Map& m) {
  rows_forward_body(x, kt, y, zeros, begin, end, m);
}

template <typename T>
FAD_TARGET_AVX2 void rows_grad_weight_avx2(const T* grad, const T* x, double* acc,
                                           const T* zeros, int64_t begin, int64_t end,
                                           const Map& m) {
  rows_grad_weight_body(grad, x, acc, zeros, begin, end, m);
}
#endif

template <typename T>
void rows_forward(const T* x, const T* kt, T* y, const T* zeros, int64_t begin, int64_t end,
                  const Map& m) {
#if FAD_AVX2_BUILD
  if (fad::use_avx2()) return rows_forward_avx2(x, kt, y, zeros, begin, end, m);
#endif
  rows_forward_base(x, kt, y, zeros, begin, end, m);
}

template <typename T>
void rows_grad_weight(const T* grad, const T* x, double* acc, const T* zeros, int64_t begin,
                      int64_t end, const Map& m) {
#if FAD_AVX2_BUILD
  if (fad::use_avx2()) return rows_grad_weight_avx2(grad, x, acc, zeros, begin, end, m);
#endif
  rows_grad_weight_base(grad, x, acc, zeros, begin, end, m);
}

// Elements per parallel task (as the NCHW kernel's), and per chunk of the weight gradient's
// partial sums (a fixed size, so the chunks, and the sum's order, depend on the shape only).
constexpr int64_t kGrainElements = 1 << 15;
constexpr int64_t kChunkElements = 1 << 13;

inline int64_t at_least_one(int64_t v) { return std::max<int64_t>(1, v); }

Map map_of(const at::Tensor& x, int64_t dilation) {
  return {x.size(2), x.size(3), x.size(1), dilation};
}

}  // namespace

at::Tensor forward_nhwc(const at::Tensor& x_in, const at::Tensor& weight, int64_t dilation) {
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const Map m = map_of(x, dilation);
  const int64_t rows = x.size(0) * m.height;
  const at::Tensor kt = weight.reshape({m.channels, 9}).t().contiguous();  // [9, C]
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fad_depthwise_forward_nhwc", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* kp = kt.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const std::vector<scalar_t> zeros(m.row_elements(), scalar_t(0));
    at::parallel_for(0, rows, at_least_one(kGrainElements / at_least_one(m.row_elements())),
                     [&](int64_t begin, int64_t end) {
                       rows_forward(xp, kp, yp, zeros.data(), begin, end, m);
                     });
  });
  return y;
}

at::Tensor grad_weight_nhwc(const at::Tensor& grad_in, const at::Tensor& x_in, int64_t dilation) {
  const at::Tensor grad = grad_in.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const Map m = map_of(x, dilation);
  const int64_t c = m.channels, rows = x.size(0) * m.height;
  const int64_t chunk_rows = at_least_one(kChunkElements / at_least_one(m.row_elements()));
  const int64_t chunks = (rows + chunk_rows - 1) / chunk_rows;
  std::vector<double> partial(chunks * 9 * c, 0.0);  // [chunk, 9, C]
  at::Tensor out = at::empty({c, 1, 3, 3}, x.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fad_depthwise_grad_weight_nhwc", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const std::vector<scalar_t> zeros(m.row_elements(), scalar_t(0));
    const int64_t grain = at_least_one(kGrainElements / kChunkElements);
    at::parallel_for(0, chunks, grain, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        rows_grad_weight(gp, xp, partial.data() + k * 9 * c, zeros.data(),
                         k * chunk_rows, std::min(rows, (k + 1) * chunk_rows), m);
      }
    });
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    for (int64_t ch = 0; ch < c; ++ch) {
      for (int t = 0; t < 9; ++t) {
        double v = 0.0;
        for (int64_t k = 0; k < chunks; ++k) v += partial[(k * 9 + t) * c + ch];
        op[ch * 9 + t] = static_cast<scalar_t>(v);
      }
    }
  });
  return out;
}

}  // namespace fad_dw
