// The depthwise 3x3 CPU kernel's NHWC path as the NCHW one (depthwise_cpu.cpp) sees it: the
// layout test that picks it and its entry points (depthwise_nhwc_cpu.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fad_dw {

// Whether x is a 4-D channels-last (NHWC) tensor that is not also NCHW-contiguous (maps of
// 1x1, or one channel, are both: they take the NCHW kernel).
inline bool is_nhwc(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// The memory format a kernel of x's layout reads and writes.
inline at::MemoryFormat layout_of(const at::Tensor& x) {
  return is_nhwc(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// y = depthwise 3x3 of x (stride 1, padding = dilation): x [N, C, H, W] channels-last, weight
// [C, 1, 3, 3]; y channels-last. The shapes are checked by the caller.
at::Tensor forward_nhwc(const at::Tensor& x, const at::Tensor& weight, int64_t dilation);

// The weight gradient [C, 1, 3, 3] of the same convolution from grad and x (both [N, C, H, W];
// grad is made channels-last).
at::Tensor grad_weight_nhwc(const at::Tensor& grad, const at::Tensor& x, int64_t dilation);

}  // namespace fad_dw
