// Per-point tables of the MSDA CPU kernel: the bilinear taps of the points an item samples (built
// once per item, their rows prefetched, then summed) and the per-thread scratch of the loops.
#pragma once

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <memory>
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

// A 64-byte aligned buffer of at least `bytes` owned by the calling thread and kept between
// calls: a buffer allocated per call would be fresh pages, a page fault per 4 KB written. Grows
// to the largest size asked; not initialised.
inline char* thread_buffer(int64_t bytes) {
  constexpr int64_t kAlign = 64;
  thread_local std::unique_ptr<char[]> buf;
  thread_local int64_t size = 0;
  thread_local char* aligned = nullptr;
  if (size < bytes) {
    buf.reset(new char[bytes + kAlign]);
    const auto address = reinterpret_cast<uintptr_t>(buf.get());
    aligned = buf.get() + (kAlign - address % kAlign) % kAlign;
    size = bytes;
  }
  return aligned;
}

constexpr int64_t round_up_64(int64_t bytes) { return (bytes + 63) / 64 * 64; }

// Per-thread scratch of the item loops: D accumulators, a zero row, 4 sink rows for the
// grad_value updates of corners outside the map, two sets of taps (current and next item), the
// backward's four corner dot products per tap and its task's head, token by token: the token's
// D values, then its D value-gradient sums, each starting on a cache line (`tokens` = S; the
// thread's buffer, uninitialised: the task fills it).
template <typename scalar_t>
struct Scratch {
  using acc_t = at::opmath_type<scalar_t>;
  Scratch(int64_t dim, int64_t num, bool backward, int64_t tokens = 0)
      : acc_buf(dim), zero_buf(dim, scalar_t(0)), sink_buf(backward ? 4 * dim : 0),
        tap_buf(backward ? 0 : 2 * num), grad_tap_buf(backward ? 2 * num : 0),
        dot_buf(backward ? 4 * num : 0), acc(acc_buf.data()), zeros(zero_buf.data()),
        sink(sink_buf.data()), taps(tap_buf.data()), grad_taps(grad_tap_buf.data()),
        dots(dot_buf.data()), grad_offset(round_up_64(dim * sizeof(scalar_t))),
        token_bytes(grad_offset + round_up_64(dim * sizeof(acc_t))),
        head(backward ? thread_buffer(tokens * token_bytes) : nullptr) {}
  scalar_t* head_value(int64_t token) const {
    return reinterpret_cast<scalar_t*>(head + token * token_bytes);
  }
  acc_t* head_grad(int64_t token) const {
    return reinterpret_cast<acc_t*>(head + token * token_bytes + grad_offset);
  }
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
  int64_t grad_offset, token_bytes;  // bytes
  char* head;
};

}  // namespace fad_msda
