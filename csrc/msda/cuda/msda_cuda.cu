// CUDA kernels of multi-scale deformable attention, registered to the fad_msda ops (schemas:
// fad/ops/msda.py).
//
// One warp per (n, q, m); its 32 lanes stride over the D channels, so any D works (D > 32 loops,
// D < 32 leaves lanes idle). Forward: each lane sums its channels over the L * P points.
// Backward: lanes scatter grad_value with atomicAdd (into a float/double buffer: half and
// bfloat16 accumulate in float and are cast at the end) and reduce their partial dot products
// for grad_attn / grad_loc with warp shuffles; lane 0 writes them. Half and bfloat16 inputs
// compute in float (at::opmath_type).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../msda.h"

namespace fad_msda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

struct Sizes {
  int64_t n, s, m, d, lq, levels, points;
};

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ value,
                               const int64_t* __restrict__ shapes,
                               const int64_t* __restrict__ starts,
                               const scalar_t* __restrict__ loc,
                               const scalar_t* __restrict__ attn, scalar_t* __restrict__ out,
                               Sizes z) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (i >= z.n * z.lq * z.m) {
    return;
  }
  const int64_t n = i / (z.lq * z.m), m = i % z.m, row = z.m * z.d;
  const int64_t num = z.levels * z.points;
  for (int64_t d = threadIdx.x; d - threadIdx.x < z.d; d += kWarp) {
    acc_t acc = 0;
    for (int64_t l = 0; l < z.levels; ++l) {
      const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
      const scalar_t* value_l = value + (n * z.s + starts[l]) * row + m * z.d + d;
      for (int64_t p = 0; p < z.points; ++p) {
        const int64_t j = i * num + l * z.points + p;
        Corners<acc_t> c;
        if (d >= z.d || !bilinear_corners<acc_t>(static_cast<acc_t>(loc[2 * j]),
                                                 static_cast<acc_t>(loc[2 * j + 1]), height,
                                                 width, c)) {
          continue;
        }
        const acc_t a = static_cast<acc_t>(attn[j]);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.offset[k] >= 0) {
            acc += a * c.weight[k] * static_cast<acc_t>(value_l[c.offset[k] * row]);
          }
        }
      }
    }
    if (d < z.d) {
      out[i * z.d + d] = static_cast<scalar_t>(acc);
    }
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t x) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad_out,
                                const scalar_t* __restrict__ value,
                                const int64_t* __restrict__ shapes,
                                const int64_t* __restrict__ starts,
                                const scalar_t* __restrict__ loc,
                                const scalar_t* __restrict__ attn, acc_t* __restrict__ grad_value,
                                scalar_t* __restrict__ grad_loc, scalar_t* __restrict__ grad_attn,
                                Sizes z) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (i >= z.n * z.lq * z.m) {  // uniform over the warp, so the shuffles below see all lanes
    return;
  }
  const int64_t n = i / (z.lq * z.m), m = i % z.m, row = z.m * z.d;
  const int64_t num = z.levels * z.points;
  for (int64_t l = 0; l < z.levels; ++l) {
    const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
    const int64_t base = (n * z.s + starts[l]) * row + m * z.d;
    for (int64_t p = 0; p < z.points; ++p) {
      const int64_t j = i * num + l * z.points + p;
      Corners<acc_t> c;
      if (!bilinear_corners<acc_t>(static_cast<acc_t>(loc[2 * j]),
                                   static_cast<acc_t>(loc[2 * j + 1]), height, width, c)) {
        continue;
      }
      const acc_t a = static_cast<acc_t>(attn[j]);
      acc_t s_attn = 0, s_w = 0, s_h = 0;
      for (int64_t d = threadIdx.x; d < z.d; d += kWarp) {
        const acc_t g = static_cast<acc_t>(grad_out[i * z.d + d]);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.offset[k] >= 0) {
            const int64_t at = base + c.offset[k] * row + d;
            const acc_t dot = g * static_cast<acc_t>(value[at]);
            s_attn += c.weight[k] * dot;
            s_w += c.dweight_dw[k] * dot;
            s_h += c.dweight_dh[k] * dot;
            atomicAdd(grad_value + at, a * c.weight[k] * g);
          }
        }
      }
      s_attn = warp_sum(s_attn);
      s_w = warp_sum(s_w);
      s_h = warp_sum(s_h);
      if (threadIdx.x == 0) {
        grad_attn[j] = static_cast<scalar_t>(s_attn);
        grad_loc[2 * j] = static_cast<scalar_t>(a * s_w * static_cast<acc_t>(width));
        grad_loc[2 * j + 1] = static_cast<scalar_t>(a * s_h * static_cast<acc_t>(height));
      }
    }
  }
}

Sizes sizes_of(const at::Tensor& value, const at::Tensor& sampling_loc) {
  return {value.size(0),        value.size(1),        value.size(2),       value.size(3),
          sampling_loc.size(1), sampling_loc.size(3), sampling_loc.size(4)};
}

dim3 grid_for(const Sizes& z) {
  return dim3(static_cast<unsigned>((z.n * z.lq * z.m + kWarpsPerBlock - 1) / kWarpsPerBlock));
}

// The device and level checks of a CUDA call (the level check copies the shapes to the host).
void check_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                const at::Tensor& level_start_index) {
  TORCH_CHECK(value.is_cuda(), "fad msda: the CUDA kernel got tensors on ", value.device());
  check_levels(spatial_shapes, level_start_index, value.size(1));
}

at::Tensor forward_cuda(const at::Tensor& value_in, const at::Tensor& spatial_shapes_in,
                        const at::Tensor& level_start_index_in, const at::Tensor& sampling_loc_in,
                        const at::Tensor& attn_weight_in) {
  check_inputs(value_in, spatial_shapes_in, level_start_index_in, sampling_loc_in, attn_weight_in);
  check_cuda(value_in, spatial_shapes_in, level_start_index_in);
  const c10::cuda::CUDAGuard guard(value_in.device());
  const at::Tensor value = value_in.contiguous(), spatial_shapes = spatial_shapes_in.contiguous();
  const at::Tensor level_start_index = level_start_index_in.contiguous();
  const at::Tensor sampling_loc = sampling_loc_in.contiguous();
  const at::Tensor attn_weight = attn_weight_in.contiguous();
  const Sizes z = sizes_of(value, sampling_loc);
  at::Tensor out = at::empty({z.n, z.lq, z.m * z.d}, value.options());
  if (out.numel() == 0) {
    return out.zero_();
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "msda_forward_cuda", [&] {
        forward_kernel<scalar_t, at::opmath_type<scalar_t>>
            <<<grid_for(z), dim3(kWarp, kWarpsPerBlock), 0, stream>>>(
                value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
                level_start_index.const_data_ptr<int64_t>(),
                sampling_loc.const_data_ptr<scalar_t>(), attn_weight.const_data_ptr<scalar_t>(),
                out.mutable_data_ptr<scalar_t>(), z);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_output_in, const at::Tensor& value_in,
    const at::Tensor& spatial_shapes_in, const at::Tensor& level_start_index_in,
    const at::Tensor& sampling_loc_in, const at::Tensor& attn_weight_in) {
  check_inputs(value_in, spatial_shapes_in, level_start_index_in, sampling_loc_in, attn_weight_in);
  check_cuda(value_in, spatial_shapes_in, level_start_index_in);
  const c10::cuda::CUDAGuard guard(value_in.device());
  const at::Tensor value = value_in.contiguous(), spatial_shapes = spatial_shapes_in.contiguous();
  const at::Tensor level_start_index = level_start_index_in.contiguous();
  const at::Tensor sampling_loc = sampling_loc_in.contiguous();
  const at::Tensor attn_weight = attn_weight_in.contiguous();
  const at::Tensor grad_output = grad_output_in.contiguous();
  const Sizes z = sizes_of(value, sampling_loc);
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == z.n &&
                  grad_output.size(1) == z.lq && grad_output.size(2) == z.m * z.d &&
                  grad_output.scalar_type() == value.scalar_type() &&
                  grad_output.device() == value.device(),
              "fad msda: grad_output must be [N, Lq, M * D] like value, got ",
              grad_output.sizes());
  const auto acc_type = at::toOpMathType(value.scalar_type());
  at::Tensor grad_value_acc = at::zeros(value.sizes(), value.options().dtype(acc_type));
  at::Tensor grad_loc = at::zeros_like(sampling_loc);
  at::Tensor grad_attn = at::zeros_like(attn_weight);
  if (z.n * z.lq * z.m > 0 && z.d > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(), "msda_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          backward_kernel<scalar_t, acc_t><<<grid_for(z), dim3(kWarp, kWarpsPerBlock), 0, stream>>>(
              grad_output.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
              spatial_shapes.const_data_ptr<int64_t>(),
              level_start_index.const_data_ptr<int64_t>(),
              sampling_loc.const_data_ptr<scalar_t>(), attn_weight.const_data_ptr<scalar_t>(),
              grad_value_acc.mutable_data_ptr<acc_t>(), grad_loc.mutable_data_ptr<scalar_t>(),
              grad_attn.mutable_data_ptr<scalar_t>(), z);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  at::Tensor grad_value = grad_value_acc.scalar_type() == value.scalar_type()
                              ? grad_value_acc
                              : grad_value_acc.to(value.scalar_type());
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace
}  // namespace fad_msda

TORCH_LIBRARY_IMPL(fad_msda, CUDA, m) {
  m.impl("forward", &fad_msda::forward_cuda);
  m.impl("backward", &fad_msda::backward_cuda);
}

FAD_EMPTY_PYTHON_MODULE(_msda_cuda)
