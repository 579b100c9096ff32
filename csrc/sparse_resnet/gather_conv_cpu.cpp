// A convolution (1x1 or 3x3 pad 1, any stride) at the sampled output positions of SparseResNet's
// sparse execution, optionally followed by a second 1x1 convolution (`fad_sparse::gather_conv`).
//
// The P sampled positions are cut into tiles of at most kTileRows rows, their number a multiple
// of the thread count; the threads take tiles one after another (`parallel_chunks`). Per tile a
// thread gathers the input rows its outputs read (im2col; zeros outside the grid) into a
// thread-local buffer that stays in cache, multiplies them by the GEMM weight [k*k*C, C1] (BLAS,
// one thread), adds the bias, applies the ReLU and, with `weight2` [C1, C2], multiplies once
// more. So no im2col matrix of the whole layer is written to memory, the weights are packed once
// per tile (of >= kMinTileRows rows, so packing costs little next to the multiply-adds), and a
// conv costs one parallel region.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "../common/macros.h"
#include "sparse_cpu.h"

namespace fad_sparse {
namespace {

constexpr const char* kOp = "fad_sparse.gather_conv";
// Rows per tile aimed at: enough that packing the weight costs little next to the multiply-adds.
constexpr int64_t kTileRows = 256;
// Below this many rows per thread the layer runs as one tile (BLAS threads it by itself).
constexpr int64_t kMinTileRows = 128;

struct Geometry {
  int64_t in_h, in_w, out_h, out_w, kernel, stride, c;
};

// Row i - begin of `cols` = the kernel x kernel input rows (ordered ky, kx) read by output
// position positions[i] = n*out_h*out_w + oy*out_w + ox; zeros outside the input grid.
void gather_tile(const float* __restrict__ src, const int64_t* __restrict__ positions,
                 const Geometry& g, int64_t begin, int64_t end, float* __restrict__ cols) {
  const int64_t r = g.kernel / 2, c = g.c;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t p = positions[i];
    const int64_t n = p / (g.out_h * g.out_w), rem = p % (g.out_h * g.out_w);
    const int64_t cy = rem / g.out_w * g.stride, cx = rem % g.out_w * g.stride;
    float* __restrict__ dst = cols + (i - begin) * g.kernel * g.kernel * c;
    for (int64_t ky = 0; ky < g.kernel; ++ky) {
      const int64_t iy = cy + ky - r;
      for (int64_t kx = 0; kx < g.kernel; ++kx, dst += c) {
        const int64_t ix = cx + kx - r;
        if (!fad::inside(iy, ix, g.in_h, g.in_w)) {
          std::fill(dst, dst + c, 0.f);
        } else {
          const float* __restrict__ v = src + ((n * g.in_h + iy) * g.in_w + ix) * c;
          std::copy(v, v + c, dst);
        }
      }
    }
  }
}

// rows [m, cols] += bias (when given), then ReLU (when asked).
void epilogue(float* __restrict__ rows, int64_t m, int64_t cols, const float* __restrict__ bias,
              bool relu) {
  for (int64_t i = 0; i < m; ++i) {
    float* __restrict__ row = rows + i * cols;
    if (bias != nullptr) {
      for (int64_t j = 0; j < cols; ++j) row[j] += bias[j];
    }
    if (relu) {
      for (int64_t j = 0; j < cols; ++j) row[j] = row[j] > 0.f ? row[j] : 0.f;
    }
  }
}

at::Tensor matrix(float* data, int64_t rows, int64_t cols) {
  return at::from_blob(data, {rows, cols}, at::TensorOptions().dtype(at::kFloat));
}

}  // namespace

at::Tensor gather_conv_cpu(const at::Tensor& src, const at::Tensor& positions, int64_t n,
                           int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                           int64_t kernel_size, int64_t stride, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, bool relu,
                           const std::optional<at::Tensor>& weight2) {
  check_float_cpu(src, kOp, "src");
  check_float_cpu(weight, kOp, "weight");
  TORCH_CHECK(positions.device().is_cpu() && positions.scalar_type() == at::kLong &&
                  positions.is_contiguous(),
              kOp, ": positions must be a contiguous int64 CPU tensor");
  TORCH_CHECK(kernel_size == 1 || kernel_size == 3, kOp, ": kernel_size must be 1 or 3");
  TORCH_CHECK(src.dim() == 2 && src.size(0) == n * in_h * in_w, kOp,
              ": src must be the [N*H*W, C] rows of the input grid");
  TORCH_CHECK(stride >= 1 && (out_h - 1) * stride < in_h + 1 && (out_w - 1) * stride < in_w + 1,
              kOp, ": output grid does not fit the input grid");
  const int64_t c = src.size(1), k = kernel_size * kernel_size * c;
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == k, kOp, ": weight must be [k*k*C, C1]");
  const int64_t c1 = weight.size(1);
  const float* bias_p = nullptr;
  if (bias.has_value()) {
    check_float_cpu(*bias, kOp, "bias");
    TORCH_CHECK(bias->numel() == c1, kOp, ": bias must have C1 entries");
    bias_p = bias->data_ptr<float>();
  }
  int64_t c_out = c1;
  if (weight2.has_value()) {
    check_float_cpu(*weight2, kOp, "weight2");
    TORCH_CHECK(weight2->dim() == 2 && weight2->size(0) == c1, kOp, ": weight2 must be [C1, C2]");
    c_out = weight2->size(1);
  }
  const int64_t num = positions.numel();
  const int64_t* pos = positions.data_ptr<int64_t>();
  for (int64_t i = 0; i < num; ++i) {
    TORCH_CHECK(pos[i] >= 0 && pos[i] < n * out_h * out_w, kOp, ": position ", pos[i],
                " outside the output grid");
  }
  at::Tensor out = at::empty({num, c_out}, src.options());
  if (num == 0) return out;
  const Geometry g{in_h, in_w, out_h, out_w, kernel_size, stride, c};
  const float* src_p = src.data_ptr<float>();
  float* out_p = out.data_ptr<float>();

  // Tiles of at most kTileRows rows, a multiple of the thread count (an even split on an idle
  // machine; threads take tiles dynamically). Layers under kMinTileRows rows per thread run as
  // one tile, which BLAS threads by itself.
  const int64_t threads = at::get_num_threads();
  int64_t tile = num;
  if (num >= threads * kMinTileRows) {
    const int64_t tiles = threads * ((num + threads * kTileRows - 1) / (threads * kTileRows));
    tile = (num + tiles - 1) / tiles;
  }
  auto run_tile = [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> cols, mid;
    const int64_t m = end - begin;
    if (cols.size() < static_cast<size_t>(m * k)) cols.resize(m * k);
    gather_tile(src_p, pos, g, begin, end, cols.data());
    at::Tensor dst = matrix(out_p + begin * c_out, m, c_out);
    if (!weight2.has_value()) {
      at::mm_out(dst, matrix(cols.data(), m, k), weight);
      epilogue(dst.data_ptr<float>(), m, c1, bias_p, relu);
      return;
    }
    if (mid.size() < static_cast<size_t>(m * c1)) mid.resize(m * c1);
    at::Tensor hidden = matrix(mid.data(), m, c1);
    at::mm_out(hidden, matrix(cols.data(), m, k), weight);
    epilogue(mid.data(), m, c1, bias_p, relu);
    at::mm_out(dst, hidden, *weight2);
  };
  parallel_chunks(num, tile, run_tile);
  return out;
}

}  // namespace fad_sparse
