// Per-point tables of the MSDA CPU kernel: the bilinear taps of the points an item samples (built
// once per item, their rows prefetched, then summed) and the per-thread scratch of the loops.
#pragma once

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../../common/macros.h"
#include "../msda.h"

namespace fad_msda {

// The bilinear taps of one sampling point that contributes: its four corner rows of value (a zero
// row for corners outside the map) and their weights times the attention weight.
template <typename scalar_t>
struct Tap {
  const scalar_t* v[4];
  at::opmath_type<scalar_t> w[4];
};

// Backward taps add the grad_value rows (a scratch row for outside corners), the corner weights
// and their derivatives, the point's attention weight, map size and index j in [0, L * P).
template <typename scalar_t>
struct GradTap {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* v[4];
  acc_t* gv[4];
  acc_t w[4];
  Corners<acc_t> c;
  acc_t a, width, height;
  int64_t j;
};

// Prefetch the first `bytes` (at most 256) of a row into the cache, for reading or writing.
template <bool kWrite>
FAD_ALWAYS_INLINE void prefetch_row(const void* row, int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  const int64_t end = std::min<int64_t>(bytes, 256);
  for (int64_t b = 0; b < end; b += 64) {
    __builtin_prefetch(p + b, kWrite ? 1 : 0);
  }
}

// Per-thread scratch of the item loops: D accumulators, a zero row, 4 sink rows for the
// grad_value updates of corners outside the map, two sets of taps (current and next item) and
// the backward's four corner dot products per tap.
template <typename scalar_t>
struct Scratch {
  using acc_t = at::opmath_type<scalar_t>;
  Scratch(int64_t dim, int64_t num, bool backward)
      : acc_buf(dim), zero_buf(dim, scalar_t(0)), sink_buf(backward ? 4 * dim : 0),
        tap_buf(backward ? 0 : 2 * num), grad_tap_buf(backward ? 2 * num : 0),
        dot_buf(backward ? 4 * num : 0), acc(acc_buf.data()), zeros(zero_buf.data()),
        sink(sink_buf.data()), taps(tap_buf.data()), grad_taps(grad_tap_buf.data()),
        dots(dot_buf.data()) {}
  std::vector<acc_t> acc_buf;
  std::vector<scalar_t> zero_buf;
  std::vector<acc_t> sink_buf;
  std::vector<Tap<scalar_t>> tap_buf;
  std::vector<GradTap<scalar_t>> grad_tap_buf;
  std::vector<acc_t> dot_buf;
  acc_t* acc;
  const scalar_t* zeros;
  acc_t* sink;
  Tap<scalar_t>* taps;
  GradTap<scalar_t>* grad_taps;
  acc_t* dots;
};

}  // namespace fad_msda
