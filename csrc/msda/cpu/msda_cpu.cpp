// CPU kernels of multi-scale deformable attention.
//
// Forward: at::parallel_for over (n, q, m); each item accumulates its D output channels over the
// L * P points, the four bilinear corners fused into one contiguous loop over D.
// Backward: at::parallel_for over (query group g, n, m). A task owns the grad_value slice of head
// m of image n in buffer g (no atomics); with G > 1 groups the G buffers are summed at the end.
// Half and bfloat16 compute in float (at::opmath_type).
#include "../msda.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <numeric>
#include <vector>

namespace fad_msda {
namespace {

struct Sizes {
  int64_t n, s, m, d, lq, levels, points;
};

Sizes sizes_of(const at::Tensor& value, const at::Tensor& sampling_loc) {
  return {value.size(0),        value.size(1),        value.size(2),       value.size(3),
          sampling_loc.size(1), sampling_loc.size(3), sampling_loc.size(4)};
}

void check_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                  int64_t num_tokens) {
  const int64_t* shapes = spatial_shapes.data_ptr<int64_t>();
  const int64_t* starts = level_start_index.data_ptr<int64_t>();
  for (int64_t l = 0; l < spatial_shapes.size(0); ++l) {
    TORCH_CHECK(shapes[2 * l] >= 0 && shapes[2 * l + 1] >= 0 && starts[l] >= 0 &&
                    starts[l] + shapes[2 * l] * shapes[2 * l + 1] <= num_tokens,
                "fad msda: level ", l, " (start ", starts[l], ", H ", shapes[2 * l], ", W ",
                shapes[2 * l + 1], ") does not fit in value's S = ", num_tokens);
  }
}

template <typename scalar_t>
void forward_kernel(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                    const scalar_t* loc, const scalar_t* attn, scalar_t* out, Sizes z) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t work = z.levels * z.points * z.d;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(work, 1));
  const int64_t row = z.m * z.d;
  at::parallel_for(0, z.n * z.lq * z.m, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc_buf(z.d);
    const std::vector<scalar_t> zeros(z.d, scalar_t(0));
    acc_t* __restrict__ acc = acc_buf.data();
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / (z.lq * z.m), m = i % z.m;
      std::fill(acc_buf.begin(), acc_buf.end(), acc_t(0));
      const scalar_t* loc_i = loc + i * z.levels * z.points * 2;
      const scalar_t* attn_i = attn + i * z.levels * z.points;
      for (int64_t l = 0; l < z.levels; ++l) {
        const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
        const scalar_t* value_l = value + (n * z.s + starts[l]) * row + m * z.d;
        for (int64_t p = 0; p < z.points; ++p) {
          const int64_t j = l * z.points + p;
          Corners<acc_t> c;
          if (!bilinear_corners<acc_t>(loc_i[2 * j], loc_i[2 * j + 1], height, width, c)) {
            continue;
          }
          const acc_t a = attn_i[j];
          const scalar_t* v[4];
          acc_t w[4];
          for (int k = 0; k < 4; ++k) {
            v[k] = c.offset[k] >= 0 ? value_l + c.offset[k] * row : zeros.data();
            w[k] = a * c.weight[k];
          }
          const scalar_t* __restrict__ v0 = v[0];
          const scalar_t* __restrict__ v1 = v[1];
          const scalar_t* __restrict__ v2 = v[2];
          const scalar_t* __restrict__ v3 = v[3];
#pragma omp simd
          for (int64_t d = 0; d < z.d; ++d) {
            acc[d] += w[0] * acc_t(v0[d]) + w[1] * acc_t(v1[d]) + w[2] * acc_t(v2[d]) +
                      w[3] * acc_t(v3[d]);
          }
        }
      }
      scalar_t* out_i = out + i * z.d;
      for (int64_t d = 0; d < z.d; ++d) {
        out_i[d] = static_cast<scalar_t>(acc[d]);
      }
    }
  });
}

// Number of query groups: enough (g, n, m) tasks to keep every thread busy with equal shares.
int64_t query_groups(int64_t heads_total, int64_t lq) {
  const int64_t threads = at::get_num_threads();
  if (heads_total >= 4 * threads || heads_total % threads == 0) {
    return 1;
  }
  const int64_t groups = threads / std::gcd(heads_total, threads);
  return std::max<int64_t>(1, std::min<int64_t>({groups, lq, 8}));
}

template <typename scalar_t>
void backward_kernel(const scalar_t* grad_out, const scalar_t* value, const int64_t* shapes,
                     const int64_t* starts, const scalar_t* loc, const scalar_t* attn,
                     at::opmath_type<scalar_t>* grad_value, scalar_t* grad_loc,
                     scalar_t* grad_attn, Sizes z, int64_t groups) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row = z.m * z.d;
  const int64_t value_numel = z.n * z.s * row;
  at::parallel_for(0, groups * z.n * z.m, 1, [&](int64_t begin, int64_t end) {
    const std::vector<scalar_t> zeros(z.d, scalar_t(0));
    std::vector<acc_t> scratch(4 * z.d);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / (z.n * z.m), n = (task / z.m) % z.n, m = task % z.m;
      const int64_t q_begin = g * z.lq / groups, q_end = (g + 1) * z.lq / groups;
      acc_t* grad_value_g = grad_value + g * value_numel;
      for (int64_t q = q_begin; q < q_end; ++q) {
        const int64_t i = (n * z.lq + q) * z.m + m;
        const scalar_t* __restrict__ go = grad_out + i * z.d;
        const scalar_t* loc_i = loc + i * z.levels * z.points * 2;
        const scalar_t* attn_i = attn + i * z.levels * z.points;
        for (int64_t l = 0; l < z.levels; ++l) {
          const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
          const int64_t base = (n * z.s + starts[l]) * row + m * z.d;
          for (int64_t p = 0; p < z.points; ++p) {
            const int64_t j = l * z.points + p;
            Corners<acc_t> c;
            if (!bilinear_corners<acc_t>(loc_i[2 * j], loc_i[2 * j + 1], height, width, c)) {
              continue;
            }
            const acc_t a = attn_i[j];
            const scalar_t* v[4];
            acc_t* gv[4];
            acc_t w[4];
            for (int k = 0; k < 4; ++k) {
              const bool inside = c.offset[k] >= 0;
              v[k] = inside ? value + base + c.offset[k] * row : zeros.data();
              gv[k] = inside ? grad_value_g + base + c.offset[k] * row : scratch.data() + k * z.d;
              w[k] = a * c.weight[k];
            }
            const scalar_t* __restrict__ v0 = v[0];
            const scalar_t* __restrict__ v1 = v[1];
            const scalar_t* __restrict__ v2 = v[2];
            const scalar_t* __restrict__ v3 = v[3];
            acc_t* __restrict__ g0 = gv[0];
            acc_t* __restrict__ g1 = gv[1];
            acc_t* __restrict__ g2 = gv[2];
            acc_t* __restrict__ g3 = gv[3];
            acc_t dot0 = 0, dot1 = 0, dot2 = 0, dot3 = 0;
#pragma omp simd reduction(+ : dot0, dot1, dot2, dot3)
            for (int64_t d = 0; d < z.d; ++d) {
              const acc_t gd = go[d];
              dot0 += gd * acc_t(v0[d]);
              dot1 += gd * acc_t(v1[d]);
              dot2 += gd * acc_t(v2[d]);
              dot3 += gd * acc_t(v3[d]);
              g0[d] += w[0] * gd;
              g1[d] += w[1] * gd;
              g2[d] += w[2] * gd;
              g3[d] += w[3] * gd;
            }
            const acc_t dots[4] = {dot0, dot1, dot2, dot3};
            acc_t g_attn = 0, g_w = 0, g_h = 0;
            for (int k = 0; k < 4; ++k) {
              g_attn += c.weight[k] * dots[k];
              g_w += c.dweight_dw[k] * dots[k];
              g_h += c.dweight_dh[k] * dots[k];
            }
            grad_attn[i * z.levels * z.points + j] = static_cast<scalar_t>(g_attn);
            grad_loc[(i * z.levels * z.points + j) * 2] =
                static_cast<scalar_t>(a * g_w * static_cast<acc_t>(width));
            grad_loc[(i * z.levels * z.points + j) * 2 + 1] =
                static_cast<scalar_t>(a * g_h * static_cast<acc_t>(height));
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor forward_cpu(const at::Tensor& value_in, const at::Tensor& spatial_shapes_in,
                       const at::Tensor& level_start_index_in, const at::Tensor& sampling_loc_in,
                       const at::Tensor& attn_weight_in) {
  check_inputs(value_in, spatial_shapes_in, level_start_index_in, sampling_loc_in, attn_weight_in);
  const at::Tensor value = value_in.contiguous(), spatial_shapes = spatial_shapes_in.contiguous();
  const at::Tensor level_start_index = level_start_index_in.contiguous();
  const at::Tensor sampling_loc = sampling_loc_in.contiguous();
  const at::Tensor attn_weight = attn_weight_in.contiguous();
  check_levels(spatial_shapes, level_start_index, value.size(1));
  const Sizes z = sizes_of(value, sampling_loc);
  at::Tensor out = at::empty({z.n, z.lq, z.m * z.d}, value.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "msda_forward_cpu",
                                  [&] {
                                    forward_kernel<scalar_t>(
                                        value.const_data_ptr<scalar_t>(),
                                        spatial_shapes.const_data_ptr<int64_t>(),
                                        level_start_index.const_data_ptr<int64_t>(),
                                        sampling_loc.const_data_ptr<scalar_t>(),
                                        attn_weight.const_data_ptr<scalar_t>(),
                                        out.mutable_data_ptr<scalar_t>(), z);
                                  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_output_in, const at::Tensor& value_in,
    const at::Tensor& spatial_shapes_in, const at::Tensor& level_start_index_in,
    const at::Tensor& sampling_loc_in, const at::Tensor& attn_weight_in) {
  check_inputs(value_in, spatial_shapes_in, level_start_index_in, sampling_loc_in, attn_weight_in);
  const at::Tensor value = value_in.contiguous(), spatial_shapes = spatial_shapes_in.contiguous();
  const at::Tensor level_start_index = level_start_index_in.contiguous();
  const at::Tensor sampling_loc = sampling_loc_in.contiguous();
  const at::Tensor attn_weight = attn_weight_in.contiguous();
  const at::Tensor grad_output = grad_output_in.contiguous();
  check_levels(spatial_shapes, level_start_index, value.size(1));
  const Sizes z = sizes_of(value, sampling_loc);
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == z.n && grad_output.size(1) == z.lq &&
                  grad_output.size(2) == z.m * z.d &&
                  grad_output.scalar_type() == value.scalar_type(),
              "fad msda: grad_output must be [N, Lq, M * D] in value's dtype, got ",
              grad_output.sizes());
  const auto acc_type = at::toOpMathType(value.scalar_type());
  const int64_t groups = query_groups(z.n * z.m, z.lq);
  const bool direct = groups == 1 && acc_type == value.scalar_type();
  at::Tensor grad_value_acc = direct ? at::zeros_like(value)
                                     : at::zeros({groups, z.n, z.s, z.m, z.d},
                                                 value.options().dtype(acc_type));
  at::Tensor grad_loc = at::zeros_like(sampling_loc);
  at::Tensor grad_attn = at::zeros_like(attn_weight);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "msda_backward_cpu", [&] {
        backward_kernel<scalar_t>(
            grad_output.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
            spatial_shapes.const_data_ptr<int64_t>(), level_start_index.const_data_ptr<int64_t>(),
            sampling_loc.const_data_ptr<scalar_t>(), attn_weight.const_data_ptr<scalar_t>(),
            grad_value_acc.mutable_data_ptr<at::opmath_type<scalar_t>>(),
            grad_loc.mutable_data_ptr<scalar_t>(), grad_attn.mutable_data_ptr<scalar_t>(), z,
            groups);
      });
  at::Tensor grad_value =
      direct ? grad_value_acc : grad_value_acc.sum(0).to(value.scalar_type());
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace fad_msda
