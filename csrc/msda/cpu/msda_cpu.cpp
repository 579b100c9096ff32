// CPU kernels of multi-scale deformable attention.
//
// Forward: at::parallel_for over (n, q, m); each item accumulates its D output channels over the
// L * P points, the four bilinear corners fused into one contiguous loop over D.
// Backward: at::parallel_for over (query group g, n, m). A task owns the grad_value slice of head
// m of image n in buffer g (no atomics); with G > 1 groups the G buffers are summed at the end.
// The task copies head m's value rows into a contiguous scratch and sums its gradient there too,
// each token's D values next to its D gradient sums, written into the strided slice at the end:
// the random row accesses then stay within one compact block (about 2 MB for a 640x640 encoder
// layer) instead of touching a page per few rows of two [S, M, D] tensors (backward 33 -> 26 ms
// in the msda benchmark, docs/msda.md). Every grad_loc / grad_attn element is written (no zero
// fills).
// Both walk their items in order and build the taps of item i + 1 (corner rows and weights,
// msda_cpu_taps.h), prefetching the rows, before they sum item i: the row loads, which miss the
// cache, overlap the arithmetic of the item before.
// Half and bfloat16 compute in float (at::opmath_type).
// The item loops are compiled twice, for baseline x86-64 and for AVX2+FMA (picked at run time
// by fad::use_avx2), and specialised for D = 32 and 64 in float32 (msda_cpu_vec.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../../common/cpu_dispatch.h"
#include "../msda.h"
#include "msda_cpu_taps.h"
#include "msda_cpu_vec.h"

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

// Fill `taps` with the contributing points of item i = (n, q, m) and prefetch their rows;
// returns how many there are.
template <typename scalar_t, int kD>
FAD_ALWAYS_INLINE int64_t forward_taps(const Problem<scalar_t>& pr, int64_t i,
                                       Tap<scalar_t>* __restrict__ taps,
                                       const scalar_t* zeros) {
  using acc_t = at::opmath_type<scalar_t>;
  const Sizes z = pr.z;
  const int64_t n = i / (z.lq * z.m), m = i % z.m, row = z.m * z.d, num = z.levels * z.points;
  const int64_t dim = kD > 0 ? kD : z.d, bytes = dim * static_cast<int64_t>(sizeof(scalar_t));
  const scalar_t* loc_i = pr.loc + i * num * 2;
  const scalar_t* attn_i = pr.attn + i * num;
  int64_t count = 0;
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
      Tap<scalar_t>& t = taps[count++];
      for (int k = 0; k < 4; ++k) {
        t.v[k] = c.offset[k] >= 0 ? value_l + c.offset[k] * row : zeros;
        t.w[k] = a * c.weight[k];
        prefetch_row<false>(t.v[k], bytes);
      }
    }
  }
  return count;
}

// out[0, dim) = sum over the taps of the four weighted corner rows (any dtype and D; `acc`
// holds dim scratch values).
template <typename scalar_t>
FAD_ALWAYS_INLINE void sum_taps(const Tap<scalar_t>* __restrict__ taps, int64_t count,
                                int64_t dim, at::opmath_type<scalar_t>* __restrict__ acc,
                                scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t d = 0; d < dim; ++d) {
    acc[d] = acc_t(0);
  }
  for (int64_t t = 0; t < count; ++t) {
    const Tap<scalar_t>& tap = taps[t];
    const scalar_t* __restrict__ v0 = tap.v[0];
    const scalar_t* __restrict__ v1 = tap.v[1];
    const scalar_t* __restrict__ v2 = tap.v[2];
    const scalar_t* __restrict__ v3 = tap.v[3];
    const acc_t w0 = tap.w[0], w1 = tap.w[1], w2 = tap.w[2], w3 = tap.w[3];
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) {
      acc[d] += w0 * acc_t(v0[d]) + w1 * acc_t(v1[d]) + w2 * acc_t(v2[d]) + w3 * acc_t(v3[d]);
    }
  }
  for (int64_t d = 0; d < dim; ++d) {
    out[d] = static_cast<scalar_t>(acc[d]);
  }
}

// Forward of items [begin, end) of (n, q, m). The taps of item i + 1 are built (and their rows
// prefetched) before item i is summed, so the row loads of consecutive items overlap. kD > 0:
// float32 with D = kD on vectors (msda_cpu_vec.h).
template <typename scalar_t, int kD>
FAD_ALWAYS_INLINE void forward_items(const Problem<scalar_t>& pr, int64_t begin, int64_t end,
                                     Scratch<scalar_t>& s) {
  const int64_t num = pr.z.levels * pr.z.points;
  Tap<scalar_t>* taps[2] = {s.taps, s.taps + num};
  int64_t count[2] = {forward_taps<scalar_t, kD>(pr, begin, taps[0], s.zeros), 0};
  for (int64_t i = begin; i < end; ++i) {
    const int cur = (i - begin) & 1;
    if (i + 1 < end) {
      count[cur ^ 1] = forward_taps<scalar_t, kD>(pr, i + 1, taps[cur ^ 1], s.zeros);
    }
    if constexpr (kD > 0) {
      sum_taps_vec<kD>(taps[cur], count[cur], pr.out + i * kD);
    } else {
      sum_taps(taps[cur], count[cur], pr.z.d, s.acc, pr.out + i * pr.z.d);
    }
  }
}

// Fill `taps` with the contributing points of query q of task (n, m) (value and grad_value rows
// in the task's scratch `s.head_value` / `s.head_grad`, a `sink` row per corner for those
// outside the map) and prefetch their rows; write zero grad_loc / grad_attn for the points that
// do not contribute; returns the count.
template <typename scalar_t, int kD>
FAD_ALWAYS_INLINE int64_t backward_taps(const Problem<scalar_t>& pr, int64_t n, int64_t q,
                                        int64_t m, GradTap<scalar_t>* __restrict__ taps,
                                        Scratch<scalar_t>& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const Sizes z = pr.z;
  const int64_t i = (n * z.lq + q) * z.m + m, num = z.levels * z.points;
  const int64_t dim = kD > 0 ? kD : z.d, bytes = dim * static_cast<int64_t>(sizeof(scalar_t));
  const scalar_t* loc_i = pr.loc + i * num * 2;
  const scalar_t* attn_i = pr.attn + i * num;
  int64_t count = 0;
  for (int64_t l = 0; l < z.levels; ++l) {
    const int64_t height = pr.shapes[2 * l], width = pr.shapes[2 * l + 1];
    const int64_t start = pr.starts[l];
    for (int64_t p = 0; p < z.points; ++p) {
      const int64_t j = l * z.points + p;
      GradTap<scalar_t>& t = taps[count];
      if (!bilinear_corners<acc_t>(loc_i[2 * j], loc_i[2 * j + 1], height, width, t.c)) {
        pr.grad_attn[i * num + j] = scalar_t(0);
        pr.grad_loc[2 * (i * num + j)] = scalar_t(0);
        pr.grad_loc[2 * (i * num + j) + 1] = scalar_t(0);
        continue;
      }
      t.a = attn_i[j];
      t.width = static_cast<acc_t>(width);
      t.height = static_cast<acc_t>(height);
      t.j = i * num + j;
      for (int k = 0; k < 4; ++k) {
        const bool inside = t.c.offset[k] >= 0;
        t.v[k] = inside ? s.head_value(start + t.c.offset[k]) : s.zeros;
        t.gv[k] = inside ? s.head_grad(start + t.c.offset[k]) : s.sink + k * z.d;
        t.w[k] = t.a * t.c.weight[k];
        prefetch_row<false>(t.v[k], bytes);
        prefetch_row<true>(t.gv[k], dim * static_cast<int64_t>(sizeof(acc_t)));
      }
      ++count;
    }
  }
  return count;
}

// dots[4 t + k] = <go, corner k row of tap t>, and grad_value rows += w * go, for one query-head
// (any dtype and D; `go` holds dim scratch values).
template <typename scalar_t>
FAD_ALWAYS_INLINE void backward_taps_scalar(const GradTap<scalar_t>* __restrict__ taps,
                                            int64_t count, int64_t dim, const scalar_t* go_row,
                                            at::opmath_type<scalar_t>* __restrict__ go,
                                            at::opmath_type<scalar_t>* __restrict__ dots) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t d = 0; d < dim; ++d) {
    go[d] = acc_t(go_row[d]);
  }
  for (int64_t t = 0; t < count; ++t) {
    const GradTap<scalar_t>& tap = taps[t];
    const scalar_t* __restrict__ v0 = tap.v[0];
    const scalar_t* __restrict__ v1 = tap.v[1];
    const scalar_t* __restrict__ v2 = tap.v[2];
    const scalar_t* __restrict__ v3 = tap.v[3];
    acc_t* __restrict__ g0 = tap.gv[0];
    acc_t* __restrict__ g1 = tap.gv[1];
    acc_t* __restrict__ g2 = tap.gv[2];
    acc_t* __restrict__ g3 = tap.gv[3];
    const acc_t w0 = tap.w[0], w1 = tap.w[1], w2 = tap.w[2], w3 = tap.w[3];
    acc_t dot0 = 0, dot1 = 0, dot2 = 0, dot3 = 0;
#pragma omp simd reduction(+ : dot0, dot1, dot2, dot3)
    for (int64_t d = 0; d < dim; ++d) {
      const acc_t gd = go[d];
      dot0 += gd * acc_t(v0[d]);
      dot1 += gd * acc_t(v1[d]);
      dot2 += gd * acc_t(v2[d]);
      dot3 += gd * acc_t(v3[d]);
      g0[d] += w0 * gd;
      g1[d] += w1 * gd;
      g2[d] += w2 * gd;
      g3[d] += w3 * gd;
    }
    dots[4 * t] = dot0;
    dots[4 * t + 1] = dot1;
    dots[4 * t + 2] = dot2;
    dots[4 * t + 3] = dot3;
  }
}

// grad_attn and grad_loc of every tap from its four corner dot products.
template <typename scalar_t>
FAD_ALWAYS_INLINE void write_point_grads(const Problem<scalar_t>& pr,
                                         const GradTap<scalar_t>* __restrict__ taps,
                                         int64_t count,
                                         const at::opmath_type<scalar_t>* __restrict__ dots) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t t = 0; t < count; ++t) {
    const GradTap<scalar_t>& tap = taps[t];
    acc_t g_attn = 0, g_w = 0, g_h = 0;
    for (int k = 0; k < 4; ++k) {
      g_attn += tap.c.weight[k] * dots[4 * t + k];
      g_w += tap.c.dweight_dw[k] * dots[4 * t + k];
      g_h += tap.c.dweight_dh[k] * dots[4 * t + k];
    }
    pr.grad_attn[tap.j] = static_cast<scalar_t>(g_attn);
    pr.grad_loc[2 * tap.j] = static_cast<scalar_t>(tap.a * g_w * tap.width);
    pr.grad_loc[2 * tap.j + 1] = static_cast<scalar_t>(tap.a * g_h * tap.height);
  }
}

// Prefetch the locations, attention weights and output gradient of query q of task (n, m) (a
// task reads them with a stride of M query-heads, which the hardware prefetcher may miss).
template <typename scalar_t>
FAD_ALWAYS_INLINE void prefetch_query(const Problem<scalar_t>& pr, int64_t n, int64_t q,
                                      int64_t m) {
  const Sizes z = pr.z;
  const int64_t i = (n * z.lq + q) * z.m + m, num = z.levels * z.points;
  constexpr int64_t size = sizeof(scalar_t);
  prefetch_row<false>(pr.loc + i * num * 2, num * 2 * size);
  prefetch_row<false>(pr.attn + i * num, num * size);
  prefetch_row<false>(pr.grad_out + i * z.d, z.d * size);
}

// Backward of tasks [begin, end) of (g, n, m): a task copies head m's value rows into its scratch
// and zeroes the gradient scratch, walks its queries, building the taps of query q + 1 (rows
// prefetched) before it handles query q, then writes the gradient scratch into its grad_value
// slice. kD > 0: float32 with D = kD on vectors (msda_cpu_vec.h).
template <typename scalar_t, int kD>
FAD_ALWAYS_INLINE void backward_tasks(const Problem<scalar_t>& pr, int64_t begin, int64_t end,
                                      Scratch<scalar_t>& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const Sizes z = pr.z;
  const int64_t row = z.m * z.d, num = z.levels * z.points;
  GradTap<scalar_t>* taps[2] = {s.grad_taps, s.grad_taps + num};
  for (int64_t task = begin; task < end; ++task) {
    const int64_t g = task / (z.n * z.m), n = (task / z.m) % z.n, m = task % z.m;
    const int64_t q_begin = g * z.lq / pr.groups, q_end = (g + 1) * z.lq / pr.groups;
    acc_t* grad_value_nm = pr.grad_value + (g * z.n + n) * z.s * row + m * z.d;
    if (q_begin >= q_end) {
      for (int64_t t = 0; t < z.s; ++t) {
        std::fill_n(grad_value_nm + t * row, z.d, acc_t(0));
      }
      continue;
    }
    const scalar_t* value_nm = pr.value + n * z.s * row + m * z.d;
    for (int64_t t = 0; t < z.s; ++t) {
      std::copy_n(value_nm + t * row, z.d, s.head_value(t));
      std::fill_n(s.head_grad(t), z.d, acc_t(0));
    }
    int64_t count[2] = {backward_taps<scalar_t, kD>(pr, n, q_begin, m, taps[0], s), 0};
    for (int64_t q = q_begin; q < q_end; ++q) {
      const int cur = (q - q_begin) & 1;
      if (q + 2 < q_end) {
        prefetch_query(pr, n, q + 2, m);
      }
      if (q + 1 < q_end) {
        count[cur ^ 1] = backward_taps<scalar_t, kD>(pr, n, q + 1, m, taps[cur ^ 1], s);
      }
      const scalar_t* go_row = pr.grad_out + ((n * z.lq + q) * z.m + m) * z.d;
      if constexpr (kD > 0) {
        backward_taps_vec<kD>(taps[cur], count[cur], go_row, s.dots);
      } else {
        backward_taps_scalar(taps[cur], count[cur], z.d, go_row, s.acc, s.dots);
      }
      write_point_grads(pr, taps[cur], count[cur], s.dots);
    }
    for (int64_t t = 0; t < z.s; ++t) {
      std::copy_n(s.head_grad(t), z.d, grad_value_nm + t * row);
    }
  }
}

template <typename scalar_t>
using ForwardFn = void (*)(const Problem<scalar_t>&, int64_t, int64_t, Scratch<scalar_t>&);
template <typename scalar_t>
using BackwardFn = ForwardFn<scalar_t>;

template <typename scalar_t, int kD>
void forward_items_base(const Problem<scalar_t>& pr, int64_t b, int64_t e,
                        Scratch<scalar_t>& s) {
  forward_items<scalar_t, kD>(pr, b, e, s);
}

template <typename scalar_t, int kD>
void backward_tasks_base(const Problem<scalar_t>& pr, int64_t b, int64_t e,
                         Scratch<scalar_t>& s) {
  backward_tasks<scalar_t, kD>(pr, b, e, s);
}

#if FAD_AVX2_BUILD
template <typename scalar_t, int kD>
FAD_TARGET_AVX2 void forward_items_avx2(const Problem<scalar_t>& pr, int64_t b, int64_t e,
                                        Scratch<scalar_t>& s) {
  forward_items<scalar_t, kD>(pr, b, e, s);
}

template <typename scalar_t, int kD>
FAD_TARGET_AVX2 void backward_tasks_avx2(const Problem<scalar_t>& pr, int64_t b, int64_t e,
                                         Scratch<scalar_t>& s) {
  backward_tasks<scalar_t, kD>(pr, b, e, s);
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
  const ForwardFn<scalar_t> fn = pick<scalar_t>(pr.z.d).first;
  const int64_t work = pr.z.levels * pr.z.points * std::max<int64_t>(pr.z.d, 1);
  const int64_t grain = std::max<int64_t>(1, 32768 / work);
  at::parallel_for(0, pr.z.n * pr.z.lq * pr.z.m, grain, [&](int64_t begin, int64_t end) {
    Scratch<scalar_t> s(pr.z.d, pr.z.levels * pr.z.points, false);
    fn(pr, begin, end, s);
  });
}

template <typename scalar_t>
void run_backward(const Problem<scalar_t>& pr) {
  const BackwardFn<scalar_t> fn = pick<scalar_t>(pr.z.d).second;
  at::parallel_for(0, pr.groups * pr.z.n * pr.z.m, 1, [&](int64_t begin, int64_t end) {
    Scratch<scalar_t> s(pr.z.d, pr.z.levels * pr.z.points, true, pr.z.s);
    fn(pr, begin, end, s);
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
  // No zero fills: the kernel zeroes its grad_value slices and writes every grad_loc/grad_attn.
  at::Tensor grad_value_acc =
      direct ? at::empty_like(in.value)
             : at::empty({groups, z.n, z.s, z.m, z.d}, in.value.options().dtype(acc_type));
  at::Tensor grad_loc = at::empty_like(in.sampling_loc);
  at::Tensor grad_attn = at::empty_like(in.attn_weight);
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
