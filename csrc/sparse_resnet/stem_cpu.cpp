// The ResNet stem at inference (`fad_sparse::stem`): a k x k conv (any stride, zero padding; BN
// folded into its weight and bias), the 3x3 stride-2 pad-1 max pool, then the ReLU, without
// writing the conv's output map.
//
// Every pooled line reads three conv lines (2y - 1, 2y, 2y + 1). The pooled lines are cut into
// chunks that the threads take one after another (`parallel_chunks`); within a chunk a thread
// computes each conv line once into a ring of three lines: im2col of the line into a
// thread-local buffer (ordered ky, kx, c; one tap row is k * Cin contiguous floats of the
// channels-last input line, copied with its zero padding), one GEMM [Wc, k*k*Cin] x
// [k*k*Cin, C] (BLAS, one thread), then the pool of the three lines. So the conv output
// ([N, 64, 400, 672], 69 MB at 800x1344: a pass over memory and its page faults on every
// forward) never leaves the cache, and the ReLU and the pool are one pass. The bias is added
// after the pool (max(y + b) = max(y) + b, rounding is monotone), then the ReLU.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common/macros.h"
#include "sparse_cpu.h"

namespace fad_sparse {
namespace {

constexpr const char* kOp = "fad_sparse.stem";
// Pooled lines per chunk at least (each chunk computes one conv line twice: its first).
constexpr int64_t kMinChunkLines = 8;

struct StemGeometry {
  int64_t h, w, cin, k, stride, pad;  // input grid and conv
  int64_t hc, wc;                     // conv output grid
  int64_t hp, wp, c;                  // pooled output grid and channels
};

// Copies n floats; kN > 0 is n known at compile time (inlined vector moves, not a call).
template <int64_t kN>
FAD_ALWAYS_INLINE void copy_floats(const float* __restrict__ src, int64_t n,
                                   float* __restrict__ dst) {
  if (kN > 0) {
    __builtin_memcpy(dst, src, kN * sizeof(float));
  } else {
    std::copy(src, src + n, dst);
  }
}

// cols [Wc, k*k*Cin] (ordered ky, kx, c): the im2col rows of conv line cy of image img.
// `padded` is scratch for one input line with `pad` zero pixels on both sides; `zeros` is such
// a line of zeros (the rows outside the grid). kTapRow: k * Cin when known at compile time.
template <int64_t kTapRow>
void im2col_line(const float* __restrict__ src, const StemGeometry& g, int64_t img, int64_t cy,
                 float* __restrict__ padded, const float* __restrict__ zeros,
                 float* __restrict__ cols) {
  const int64_t tap_row = g.k * g.cin, row_len = g.k * tap_row, step = g.stride * g.cin;
  for (int64_t ky = 0; ky < g.k; ++ky) {
    const int64_t iy = cy * g.stride + ky - g.pad;
    const float* line = zeros;
    if (fad::inside(iy, g.h)) {
      const float* __restrict__ in = src + (img * g.h + iy) * g.w * g.cin;
      std::copy(in, in + g.w * g.cin, padded + g.pad * g.cin);
      line = padded;
    }
    float* __restrict__ dst = cols + ky * tap_row;
    for (int64_t ox = 0; ox < g.wc; ++ox) {
      copy_floats<kTapRow>(line + ox * step, tap_row, dst + ox * row_len);
    }
  }
}

// out [Wp, C] = ReLU(max of the 3x3 window (clipped to the grid) + bias) of pooled line y, from
// the conv lines 2y - 1, 2y, 2y + 1 ([Wc, C] each; nullptr outside the grid).
void pool_line(const float* const lines[3], const StemGeometry& g, const float* __restrict__ bias,
               float* __restrict__ out) {
  const int64_t c = g.c;
  for (int64_t xo = 0; xo < g.wp; ++xo) {
    float* __restrict__ o = out + xo * c;
    const int64_t cx = 2 * xo;  // the window's centre, always inside the conv grid
    std::copy(lines[1] + cx * c, lines[1] + (cx + 1) * c, o);
    const int64_t x_begin = std::max<int64_t>(cx - 1, 0), x_end = std::min(cx + 2, g.wc);
    for (int j = 0; j < 3; ++j) {
      if (lines[j] == nullptr) continue;
      for (int64_t x = x_begin; x < x_end; ++x) {
        const float* __restrict__ v = lines[j] + x * c;
        for (int64_t i = 0; i < c; ++i) o[i] = v[i] > o[i] ? v[i] : o[i];
      }
    }
    for (int64_t i = 0; i < c; ++i) {
      const float y = o[i] + bias[i];
      o[i] = y > 0.f ? y : 0.f;
    }
  }
}

at::Tensor matrix(float* data, int64_t rows, int64_t cols) {
  return at::from_blob(data, {rows, cols}, at::TensorOptions().dtype(at::kFloat));
}

}  // namespace

at::Tensor stem_cpu(const at::Tensor& src, int64_t n, int64_t h, int64_t w,
                    const at::Tensor& weight, const at::Tensor& bias, int64_t kernel_size,
                    int64_t stride, int64_t padding) {
  check_float_cpu(src, kOp, "src");
  check_float_cpu(weight, kOp, "weight");
  check_float_cpu(bias, kOp, "bias");
  TORCH_CHECK(src.dim() == 2 && src.size(0) == n * h * w, kOp,
              ": src must be the [N*H*W, Cin] rows of the input grid");
  TORCH_CHECK(kernel_size >= 1 && stride >= 1 && padding >= 0, kOp,
              ": kernel_size and stride must be >= 1, padding >= 0");
  const int64_t cin = src.size(1), k = kernel_size * kernel_size * cin;
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == k, kOp, ": weight must be [k*k*Cin, C]");
  const int64_t c = weight.size(1);
  TORCH_CHECK(bias.numel() == c, kOp, ": bias must have C entries");
  const int64_t hc = (h + 2 * padding - kernel_size) / stride + 1;
  const int64_t wc = (w + 2 * padding - kernel_size) / stride + 1;
  TORCH_CHECK(h + 2 * padding >= kernel_size && w + 2 * padding >= kernel_size, kOp,
              ": the input grid is smaller than the kernel");
  const StemGeometry g{h, w, cin, kernel_size, stride, padding, hc, wc,
                       (hc - 1) / 2 + 1, (wc - 1) / 2 + 1, c};
  at::Tensor out = at::empty({n * g.hp * g.wp, c}, src.options());
  const int64_t lines = n * g.hp;
  if (lines == 0 || c == 0) return out;
  const float* src_p = src.data_ptr<float>();
  const float* bias_p = bias.data_ptr<float>();
  float* out_p = out.data_ptr<float>();

  // one chunk on one thread, else about six per thread (threads take them dynamically)
  const int64_t threads = at::get_num_threads();
  const int64_t chunk =
      threads <= 1 ? lines
                   : std::max(kMinChunkLines, (lines + 6 * threads - 1) / (6 * threads));
  parallel_chunks(lines, chunk, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> cols, ring, padded;
    const int64_t padded_len = (w + 2 * padding) * cin;
    if (cols.size() < static_cast<size_t>(wc * k)) cols.resize(wc * k);
    if (ring.size() < static_cast<size_t>(3 * wc * c)) ring.resize(3 * wc * c);
    // one padded input line, then a line of zeros
    if (padded.size() < static_cast<size_t>(2 * padded_len)) padded.resize(2 * padded_len);
    std::fill(padded.begin(), padded.begin() + 2 * padded_len, 0.f);
    const float* zeros = padded.data() + padded_len;
    int64_t held[3] = {-1, -1, -1};  // the conv line (img * hc + cy) in each ring slot
    auto conv_line = [&](int64_t img, int64_t cy) -> const float* {
      if (!fad::inside(cy, hc)) return nullptr;
      const int64_t slot = cy % 3;
      float* dst = ring.data() + slot * wc * c;
      if (held[slot] != img * hc + cy) {
        if (kernel_size * cin == 21) {  // the ResNet stem: 7x7 over RGB
          im2col_line<21>(src_p, g, img, cy, padded.data(), zeros, cols.data());
        } else {
          im2col_line<0>(src_p, g, img, cy, padded.data(), zeros, cols.data());
        }
        at::Tensor result = matrix(dst, wc, c);
        at::mm_out(result, matrix(cols.data(), wc, k), weight);
        held[slot] = img * hc + cy;
      }
      return dst;
    };
    for (int64_t line = begin; line < end; ++line) {
      const int64_t img = line / g.hp, cy = 2 * (line % g.hp);
      const float* conv[3] = {conv_line(img, cy - 1), conv_line(img, cy), conv_line(img, cy + 1)};
      pool_line(conv, g, bias_p, out_p + line * g.wp * c);
    }
  });
  return out;
}

}  // namespace fad_sparse
