// Float32 bodies of the MSDA CPU item loops for D a multiple of 8, on 8-lane vectors (the
// GCC/clang vector extension: AVX in the AVX2+FMA copy of the loops, SSE pairs in the baseline
// copy). The D-channel accumulators and the query's output gradient stay in registers, and the
// four corner dot products of the backward are reduced together.
#pragma once

#include <cstdint>
#include <cstring>

#include "../../common/macros.h"
#include "msda_cpu_taps.h"

namespace fad_msda {

typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec4 __attribute__((vector_size(16)));

FAD_ALWAYS_INLINE void load8(Vec8& v, const float* p) { std::memcpy(&v, p, sizeof(Vec8)); }

FAD_ALWAYS_INLINE void store8(float* p, const Vec8& v) { std::memcpy(p, &v, sizeof(Vec8)); }

// Sum of the low and high halves of v.
FAD_ALWAYS_INLINE Vec4 fold8(const Vec8& v) {
  return __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
}

// Pairwise sums of adjacent lanes: {a0 + a1, a2 + a3, b0 + b1, b2 + b3}.
FAD_ALWAYS_INLINE Vec4 pair_sums(const Vec4& a, const Vec4& b) {
  return __builtin_shufflevector(a, b, 0, 2, 4, 6) + __builtin_shufflevector(a, b, 1, 3, 5, 7);
}

// The lane sums of a, b, c, d as out[0..3].
FAD_ALWAYS_INLINE void sum_lanes4(const Vec8& a, const Vec8& b, const Vec8& c, const Vec8& d,
                                  float* out) {
  const Vec4 r = pair_sums(pair_sums(fold8(a), fold8(b)), pair_sums(fold8(c), fold8(d)));
  std::memcpy(out, &r, sizeof(Vec4));
}

// out[0, kD) = sum over the taps of the four weighted corner rows.
template <int kD>
FAD_ALWAYS_INLINE void sum_taps_vec(const Tap<float>* __restrict__ taps, int64_t count,
                                    float* out) {
  static_assert(kD % 8 == 0, "D must be a multiple of 8");
  constexpr int kV = kD / 8;
  Vec8 acc[kV];
#pragma GCC unroll 16
  for (int c = 0; c < kV; ++c) {
    acc[c] = Vec8{};
  }
  for (int64_t t = 0; t < count; ++t) {
    const Tap<float>& tap = taps[t];
#pragma GCC unroll 16
    for (int c = 0; c < kV; ++c) {
      Vec8 v0, v1, v2, v3;
      load8(v0, tap.v[0] + 8 * c);
      load8(v1, tap.v[1] + 8 * c);
      load8(v2, tap.v[2] + 8 * c);
      load8(v3, tap.v[3] + 8 * c);
      acc[c] += tap.w[0] * v0 + tap.w[1] * v1 + tap.w[2] * v2 + tap.w[3] * v3;
    }
  }
#pragma GCC unroll 16
  for (int c = 0; c < kV; ++c) {
    store8(out + 8 * c, acc[c]);
  }
}

// Backward of one query-head: grad_value rows += w * go, and the four corner dot products
// <go, value row> of every tap into `dots` (4 per tap).
template <int kD>
FAD_ALWAYS_INLINE void backward_taps_vec(const GradTap<float>* __restrict__ taps, int64_t count,
                                         const float* go_row, float* __restrict__ dots) {
  static_assert(kD % 8 == 0, "D must be a multiple of 8");
  constexpr int kV = kD / 8;
  Vec8 go[kV];
#pragma GCC unroll 16
  for (int c = 0; c < kV; ++c) {
    load8(go[c], go_row + 8 * c);
  }
  for (int64_t t = 0; t < count; ++t) {
    const GradTap<float>& tap = taps[t];
    Vec8 d0{}, d1{}, d2{}, d3{};
#pragma GCC unroll 16
    for (int c = 0; c < kV; ++c) {
      Vec8 v0, v1, v2, v3, g0, g1, g2, g3;
      load8(v0, tap.v[0] + 8 * c);
      load8(v1, tap.v[1] + 8 * c);
      load8(v2, tap.v[2] + 8 * c);
      load8(v3, tap.v[3] + 8 * c);
      d0 += go[c] * v0;
      d1 += go[c] * v1;
      d2 += go[c] * v2;
      d3 += go[c] * v3;
      load8(g0, tap.gv[0] + 8 * c);
      load8(g1, tap.gv[1] + 8 * c);
      load8(g2, tap.gv[2] + 8 * c);
      load8(g3, tap.gv[3] + 8 * c);
      store8(tap.gv[0] + 8 * c, g0 + tap.w[0] * go[c]);
      store8(tap.gv[1] + 8 * c, g1 + tap.w[1] * go[c]);
      store8(tap.gv[2] + 8 * c, g2 + tap.w[2] * go[c]);
      store8(tap.gv[3] + 8 * c, g3 + tap.w[3] * go[c]);
    }
    sum_lanes4(d0, d1, d2, d3, dots + 4 * t);
  }
}

}  // namespace fad_msda
