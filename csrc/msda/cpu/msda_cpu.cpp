// CPU kernels of multi-scale deformable attention.
//
// Forward: at::parallel_for over (n, q, m); each item accumulates its D output channels over the
// L * P points, the four bilinear corners fused into one contiguous loop over D.
// Backward: at::parallel_for over (query group g, n, m). A task owns the grad_value slice of head
// m of image n in buffer g (no atomics); with G > 1 groups the G buffers are summed at the end.
// Half and bfloat16 compute in float (at::opmath_type).
// The item loops are compiled twice, for baseline x86-64 and for AVX2+FMA (picked at run time
// by fad::use_avx2), and specialised for D = 32 and 64 in float32.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../../common/cpu_dispatch.h"
#include "../msda.h"

namespace fad_msda {
namespace {

struct Sizes {
  int64_t n, s, m, d, lq, levels, points;
};

template <typename scalar_t>
struct Problem {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* value;
  const int64_t* shapes;
  const int64_t* starts;
  const scalar_t* loc;
  const scalar_t* attn;
  const scalar_t* grad_out;  // backward only
  scalar_t* out;             // forward only
  acc_t* grad_value;         // backward: [groups, N, S, M, D]
  scalar_t* grad_loc;
  scalar_t* grad_attn;
  Sizes z;
  int64_t groups;
};

Sizes sizes_of(const at::Tensor& value, const at::Tensor& sampling_loc) {
  return {value.size(0),        value.size(1),        value.size(2),       value.size(3),
          sampling_loc.size(1), sampling_loc.size(3), sampling_loc.size(4)};
}

// Forward of items [begin, end) of (n, q, m); `acc` holds D scratch values, `zeros` D zeros.
template <typename scalar_t, int kD>
FAD_ALWAYS_INLINE void forward_items(const Problem<scalar_t>& pr, int64_t begin, int64_t end,
                                     at::opmath_type<scalar_t>* __restrict__ acc,
                                     const scalar_t* zeros) {
  using acc_t = at::opmath_type<scalar_t>;
  const Sizes z = pr.z;
  const int64_t dim = kD > 0 ? kD : z.d, row = z.m * z.d, num = z.levels * z.points;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t n = i / (z.lq * z.m), m = i % z.m;
    for (int64_t d = 0; d < dim; ++d) {
      acc[d] = acc_t(0);
    }
    const scalar_t* loc_i = pr.loc + i * num * 2;
    const scalar_t* attn_i = pr.attn + i * num;
    for (int64_t l = 0; l < z.levels; ++l) {
      const int64_t height = pr.shapes[2 * l], width = pr.shapes[2 * l + 1];
      const scalar_t* value_l = pr.value + (n * z.s + pr.starts[l]) * row + m * z.d;
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
          v[k] = c.offset[k] >= 0 ? value_l + c.offset[k] * row : zeros;
          w[k] = a * c.weight[k];
        }
        const scalar_t* __restrict__ v0 = v[0];
        const scalar_t* __restrict__ v1 = v[1];
        const scalar_t* __restrict__ v2 = v[2];
        const scalar_t* __restrict__ v3 = v[3];
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) {
          acc[d] += w[0] * acc_t(v0[d]) + w[1] * acc_t(v1[d]) + w[2] * acc_t(v2[d]) +
                    w[3] * acc_t(v3[d]);
        }
      }
    }
    scalar_t* out_i = pr.out + i * z.d;
    for (int64_t d = 0; d < dim; ++d) {
      out_i[d] = static_cast<scalar_t>(acc[d]);
    }
  }
}

// Backward of tasks [begin, end) of (g, n, m); `scratch` holds 4 * D values that absorb the
// grad_value updates of corners outside the map.
template <typename scalar_t, int kD>
FAD_ALWAYS_INLINE void backward_tasks(const Problem<scalar_t>& pr, int64_t begin, int64_t end,
                                      at::opmath_type<scalar_t>* scratch,
                                      const scalar_t* zeros) {
  using acc_t = at::opmath_type<scalar_t>;
  const Sizes z = pr.z;
  const int64_t dim = kD > 0 ? kD : z.d, row = z.m * z.d, num = z.levels * z.points;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t g = task / (z.n * z.m), n = (task / z.m) % z.n, m = task % z.m;
    const int64_t q_begin = g * z.lq / pr.groups, q_end = (g + 1) * z.lq / pr.groups;
    acc_t* grad_value_g = pr.grad_value + g * z.n * z.s * row;
    for (int64_t q = q_begin; q < q_end; ++q) {
      const int64_t i = (n * z.lq + q) * z.m + m;
      const scalar_t* __restrict__ go = pr.grad_out + i * z.d;
      const scalar_t* loc_i = pr.loc + i * num * 2;
      const scalar_t* attn_i = pr.attn + i * num;
      for (int64_t l = 0; l < z.levels; ++l) {
        const int64_t height = pr.shapes[2 * l], width = pr.shapes[2 * l + 1];
        const int64_t base = (n * z.s + pr.starts[l]) * row + m * z.d;
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
            v[k] = inside ? pr.value + base + c.offset[k] * row : zeros;
            gv[k] = inside ? grad_value_g + base + c.offset[k] * row : scratch + k * dim;
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
          for (int64_t d = 0; d < dim; ++d) {
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
          const int64_t out_j = i * num + j;
          pr.grad_attn[out_j] = static_cast<scalar_t>(g_attn);
          pr.grad_loc[2 * out_j] = static_cast<scalar_t>(a * g_w * static_cast<acc_t>(width));
          pr.grad_loc[2 * out_j + 1] =
              static_cast<scalar_t>(a * g_h * static_cast<acc_t>(height));
        }
      }
    }
  }
}

template <typename scalar_t>
using ForwardFn = void (*)(const Problem<scalar_t>&, int64_t, int64_t,
                           at::opmath_type<scalar_t>*, const scalar_t*);
template <typename scalar_t>
using BackwardFn = ForwardFn<scalar_t>;

template <typename scalar_t, int kD>
void forward_items_base(const Problem<scalar_t>& pr, int64_t b, int64_t e,
                        at::opmath_type<scalar_t>* acc, const scalar_t* zeros) {
  forward_items<scalar_t, kD>(pr, b, e, acc, zeros);
}

template <typename scalar_t, int kD>
void backward_tasks_base(const Problem<scalar_t>& pr, int64_t b, int64_t e,
                         at::opmath_type<scalar_t>* scratch, const scalar_t* zeros) {
  backward_tasks<scalar_t, kD>(pr, b, e, scratch, zeros);
}

#if FAD_AVX2_BUILD
template <typename scalar_t, int kD>
FAD_TARGET_AVX2 void forward_items_avx2(const Problem<scalar_t>& pr, int64_t b, int64_t e,
                                        at::opmath_type<scalar_t>* acc, const scalar_t* zeros) {
  forward_items<scalar_t, kD>(pr, b, e, acc, zeros);
}

template <typename scalar_t, int kD>
FAD_TARGET_AVX2 void backward_tasks_avx2(const Problem<scalar_t>& pr, int64_t b, int64_t e,
                                         at::opmath_type<scalar_t>* scratch,
                                         const scalar_t* zeros) {
  backward_tasks<scalar_t, kD>(pr, b, e, scratch, zeros);
}
#endif

template <typename scalar_t, int kD>
std::pair<ForwardFn<scalar_t>, BackwardFn<scalar_t>> variant() {
#if FAD_AVX2_BUILD
  if (fad::use_avx2()) {
    return {&forward_items_avx2<scalar_t, kD>, &backward_tasks_avx2<scalar_t, kD>};
  }
#endif
  return {&forward_items_base<scalar_t, kD>, &backward_tasks_base<scalar_t, kD>};
}

template <typename scalar_t>
std::pair<ForwardFn<scalar_t>, BackwardFn<scalar_t>> pick(int64_t dim) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (dim == 32) {
      return variant<scalar_t, 32>();
    }
    if (dim == 64) {
      return variant<scalar_t, 64>();
    }
  }
  return variant<scalar_t, 0>();
}

template <typename scalar_t>
void run_forward(const Problem<scalar_t>& pr) {
  using acc_t = at::opmath_type<scalar_t>;
  const ForwardFn<scalar_t> fn = pick<scalar_t>(pr.z.d).first;
  const int64_t work = pr.z.levels * pr.z.points * std::max<int64_t>(pr.z.d, 1);
  const int64_t grain = std::max<int64_t>(1, 32768 / work);
  at::parallel_for(0, pr.z.n * pr.z.lq * pr.z.m, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(pr.z.d);
    const std::vector<scalar_t> zeros(pr.z.d, scalar_t(0));
    fn(pr, begin, end, acc.data(), zeros.data());
  });
}

template <typename scalar_t>
void run_backward(const Problem<scalar_t>& pr) {
  using acc_t = at::opmath_type<scalar_t>;
  const BackwardFn<scalar_t> fn = pick<scalar_t>(pr.z.d).second;
  at::parallel_for(0, pr.groups * pr.z.n * pr.z.m, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(4 * pr.z.d);
    const std::vector<scalar_t> zeros(pr.z.d, scalar_t(0));
    fn(pr, begin, end, scratch.data(), zeros.data());
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

struct Inputs {
  at::Tensor value, spatial_shapes, level_start_index, sampling_loc, attn_weight;
};

Inputs contiguous_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                         const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                         const at::Tensor& attn_weight) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  TORCH_CHECK(value.device().is_cpu(), "fad msda: the CPU kernel got tensors on ",
              value.device());
  Inputs in{value.contiguous(), spatial_shapes.contiguous(), level_start_index.contiguous(),
            sampling_loc.contiguous(), attn_weight.contiguous()};
  check_levels(in.spatial_shapes, in.level_start_index, in.value.size(1));
  return in;
}

template <typename scalar_t>
Problem<scalar_t> problem_of(const Inputs& in) {
  Problem<scalar_t> pr{};
  pr.value = in.value.const_data_ptr<scalar_t>();
  pr.shapes = in.spatial_shapes.const_data_ptr<int64_t>();
  pr.starts = in.level_start_index.const_data_ptr<int64_t>();
  pr.loc = in.sampling_loc.const_data_ptr<scalar_t>();
  pr.attn = in.attn_weight.const_data_ptr<scalar_t>();
  pr.z = sizes_of(in.value, in.sampling_loc);
  pr.groups = 1;
  return pr;
}

}  // namespace

at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                       const at::Tensor& attn_weight) {
  const Inputs in =
      contiguous_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  const Sizes z = sizes_of(in.value, in.sampling_loc);
  at::Tensor out = at::empty({z.n, z.lq, z.m * z.d}, in.value.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.value.scalar_type(),
                                  "msda_forward_cpu", [&] {
                                    Problem<scalar_t> pr = problem_of<scalar_t>(in);
                                    pr.out = out.mutable_data_ptr<scalar_t>();
                                    run_forward(pr);
                                  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_output_in, const at::Tensor& value,
    const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc, const at::Tensor& attn_weight) {
  const Inputs in =
      contiguous_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  const at::Tensor grad_output = grad_output_in.contiguous();
  const Sizes z = sizes_of(in.value, in.sampling_loc);
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == z.n &&
                  grad_output.size(1) == z.lq && grad_output.size(2) == z.m * z.d &&
                  grad_output.scalar_type() == in.value.scalar_type() &&
                  grad_output.device() == in.value.device(),
              "fad msda: grad_output must be [N, Lq, M * D] like value, got ",
              grad_output.sizes());
  const auto acc_type = at::toOpMathType(in.value.scalar_type());
  const int64_t groups = query_groups(z.n * z.m, z.lq);
  const bool direct = groups == 1 && acc_type == in.value.scalar_type();
  at::Tensor grad_value_acc =
      direct ? at::zeros_like(in.value)
             : at::zeros({groups, z.n, z.s, z.m, z.d}, in.value.options().dtype(acc_type));
  at::Tensor grad_loc = at::zeros_like(in.sampling_loc);
  at::Tensor grad_attn = at::zeros_like(in.attn_weight);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, in.value.scalar_type(), "msda_backward_cpu", [&] {
        Problem<scalar_t> pr = problem_of<scalar_t>(in);
        pr.grad_out = grad_output.const_data_ptr<scalar_t>();
        pr.grad_value = grad_value_acc.mutable_data_ptr<at::opmath_type<scalar_t>>();
        pr.grad_loc = grad_loc.mutable_data_ptr<scalar_t>();
        pr.grad_attn = grad_attn.mutable_data_ptr<scalar_t>();
        pr.groups = groups;
        run_backward(pr);
      });
  at::Tensor grad_value =
      direct ? grad_value_acc : grad_value_acc.sum(0).to(in.value.scalar_type());
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace fad_msda

TORCH_LIBRARY_IMPL(fad_msda, CPU, m) {
  m.impl("forward", &fad_msda::forward_cpu);
  m.impl("backward", &fad_msda::backward_cpu);
}

FAD_EMPTY_PYTHON_MODULE(_msda_cpu)
