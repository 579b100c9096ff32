// Multi-scale deformable attention (MSDA) kernels: input checks and the bilinear corner helper
// shared by the CPU and CUDA kernels (op schemas: fad/ops/msda.py).
//
// Shapes: value [N, S, M, D], spatial_shapes [L, 2] int64 (H, W), level_start_index [L] int64,
// sampling_loc [N, Lq, M, L, P, 2] (x, y) in [0, 1], attn_weight [N, Lq, M, L, P],
// output / grad_output [N, Lq, M * D]. Sampling is half-pixel bilinear with zero padding.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>

#include "../common/macros.h"

namespace fad_msda {

// Raise a one-line error unless the tensors have consistent shapes, dtypes and devices.
inline void check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                         const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                         const at::Tensor& attn_weight) {
  TORCH_CHECK(value.dim() == 4, "fad msda: value must be [N, S, M, D], got ", value.sizes());
  TORCH_CHECK(sampling_loc.dim() == 6 && sampling_loc.size(5) == 2,
              "fad msda: sampling_loc must be [N, Lq, M, L, P, 2], got ", sampling_loc.sizes());
  const int64_t n = value.size(0), m = value.size(2), levels = sampling_loc.size(3);
  TORCH_CHECK(sampling_loc.size(0) == n && sampling_loc.size(2) == m,
              "fad msda: sampling_loc ", sampling_loc.sizes(), " disagrees with value ",
              value.sizes(), " on N or M");
  TORCH_CHECK(attn_weight.dim() == 5 && attn_weight.sizes() == sampling_loc.sizes().slice(0, 5),
              "fad msda: attn_weight must be [N, Lq, M, L, P], got ", attn_weight.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(0) == levels &&
                  spatial_shapes.size(1) == 2 && level_start_index.dim() == 1 &&
                  level_start_index.size(0) == levels,
              "fad msda: spatial_shapes must be [L, 2] and level_start_index [L] with L = ",
              levels);
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong &&
                  level_start_index.scalar_type() == at::kLong,
              "fad msda: spatial_shapes and level_start_index must be int64");
  TORCH_CHECK(value.scalar_type() == sampling_loc.scalar_type() &&
                  value.scalar_type() == attn_weight.scalar_type(),
              "fad msda: value, sampling_loc and attn_weight must share one dtype");
  const auto device = value.device();
  TORCH_CHECK(sampling_loc.device() == device && attn_weight.device() == device &&
                  spatial_shapes.device() == device && level_start_index.device() == device,
              "fad msda: all inputs must be on ", device);
}

// Raise a one-line error unless every level (start, H, W) lies within value's S tokens, so no
// kernel reads outside value. Reads the small shape tensors on the host (a copy from the device
// for CUDA tensors).
inline void check_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                         int64_t num_tokens) {
  const at::Tensor shapes_t = spatial_shapes.to(at::kCPU).contiguous();
  const at::Tensor starts_t = level_start_index.to(at::kCPU).contiguous();
  const int64_t* shapes = shapes_t.const_data_ptr<int64_t>();
  const int64_t* starts = starts_t.const_data_ptr<int64_t>();
  for (int64_t l = 0; l < shapes_t.size(0); ++l) {
    TORCH_CHECK(shapes[2 * l] >= 0 && shapes[2 * l + 1] >= 0 && starts[l] >= 0 &&
                    starts[l] + shapes[2 * l] * shapes[2 * l + 1] <= num_tokens,
                "fad msda: level ", l, " (start ", starts[l], ", H ", shapes[2 * l], ", W ",
                shapes[2 * l + 1], ") does not fit in value's S = ", num_tokens);
  }
}

template <typename T>
FAD_HOST_DEVICE T fad_floor(T v) {
#if defined(__CUDA_ARCH__)
  return ::floor(v);
#else
  return std::floor(v);
#endif
}

// The four bilinear corners of one sampling point: row offset inside the level (y * W + x, or
// -1 when the corner is outside the map), weight, and the weight's derivative with respect to
// the pixel coordinates w_im = x * W - 0.5 and h_im = y * H - 0.5.
template <typename acc_t>
struct Corners {
  int64_t offset[4];
  acc_t weight[4];
  acc_t dweight_dw[4];
  acc_t dweight_dh[4];
};

// Fill `c` for the point (x, y) on an H x W map; false when the point contributes nothing
// (outside -1 < w_im < W, -1 < h_im < H, or NaN).
template <typename acc_t>
FAD_HOST_DEVICE bool bilinear_corners(acc_t x, acc_t y, int64_t height, int64_t width,
                                      Corners<acc_t>& c) {
  const acc_t w_im = x * static_cast<acc_t>(width) - acc_t(0.5);
  const acc_t h_im = y * static_cast<acc_t>(height) - acc_t(0.5);
  if (!(h_im > acc_t(-1) && w_im > acc_t(-1) && h_im < static_cast<acc_t>(height) &&
        w_im < static_cast<acc_t>(width))) {
    return false;
  }
  const acc_t h_floor = fad_floor(h_im), w_floor = fad_floor(w_im);
  const int64_t h_low = static_cast<int64_t>(h_floor), w_low = static_cast<int64_t>(w_floor);
  const acc_t lh = h_im - h_floor, lw = w_im - w_floor;
  const acc_t hh = acc_t(1) - lh, hw = acc_t(1) - lw;
  const acc_t ys[2] = {hh, lh}, xs[2] = {hw, lw}, dys[2] = {acc_t(-1), acc_t(1)};
  for (int k = 0; k < 4; ++k) {
    const int dy = k >> 1, dx = k & 1;
    const int64_t yy = h_low + dy, xx = w_low + dx;
    c.offset[k] = fad::inside(yy, xx, height, width) ? yy * width + xx : -1;
    c.weight[k] = ys[dy] * xs[dx];
    c.dweight_dw[k] = ys[dy] * dys[dx];
    c.dweight_dh[k] = dys[dy] * xs[dx];
  }
  return true;
}

}  // namespace fad_msda
