// SparseResNet inference kernels on the CPU (float32, contiguous), one file each:
// interpolate_cpu.cpp (Gaussian interpolation of sparsely computed features, into a new tensor
// or onto the residual, optionally projecting the output rows: the next block's mask-conv tap
// rows), gather_conv_cpu.cpp (a conv at sampled positions: tiled gather + GEMM, optionally + a
// second 1x1 conv), gather_windows_cpu.cpp (im2col of a 3x3 conv at sampled positions),
// tap_sum_cpu.cpp (the tap sums of the mask convs computed as one GEMM over the pixels),
// active_rows_cpu.cpp (the sampled positions of a mask) and stem_cpu.cpp (the stem's conv, max
// pool and ReLU without the conv's output map); register_cpu.cpp registers them for the
// fad_sparse op schemas declared in fad/ops/sparse/schema.py.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <optional>
#include <tuple>

namespace fad_sparse {

// Raise unless `t` is a contiguous float32 CPU tensor (`op` and `name` go into the message).
inline void check_float_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), op,
              ": ", name, " must be a contiguous float32 CPU tensor");
}

// Runs fn(begin, end) over [0, total) in chunks of `chunk` on the intra-op threads, each thread
// taking the next chunk when it is done (dynamic scheduling: a thread that another process
// slows down takes fewer chunks instead of holding up the whole region). With one thread, or a
// single chunk, the chunks run in order without a parallel region.
template <typename F>
void parallel_chunks(int64_t total, int64_t chunk, const F& fn) {
  const int64_t chunks = (total + chunk - 1) / chunk;
  const int64_t threads = std::min<int64_t>(chunks, at::get_num_threads());
  if (threads <= 1 || at::in_parallel_region()) {
    for (int64_t i = 0; i < chunks; ++i) fn(i * chunk, std::min(total, (i + 1) * chunk));
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t i = next++; i < chunks; i = next++) {
      fn(i * chunk, std::min(total, (i + 1) * chunk));
    }
  });
}

at::Tensor interpolate_cpu(const at::Tensor& rows, const at::Tensor& index,
                           const at::Tensor& mask, const at::Tensor& taps, double eps,
                           const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& residual, bool relu,
                           bool relu_rows, int64_t n, int64_t h, int64_t w);

void interpolate_into_cpu(const at::Tensor& residual, const at::Tensor& rows,
                          const at::Tensor& index, const at::Tensor& mask, const at::Tensor& taps,
                          double eps, const std::optional<at::Tensor>& bias, bool relu,
                          int64_t n, int64_t h, int64_t w,
                          const std::optional<at::Tensor>& project,
                          const std::optional<at::Tensor>& projected);

at::Tensor gather_conv_cpu(const at::Tensor& src, const at::Tensor& positions, int64_t n,
                           int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                           int64_t kernel_size, int64_t stride, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, bool relu,
                           const std::optional<at::Tensor>& weight2);

at::Tensor gather_windows_cpu(const at::Tensor& src, const at::Tensor& positions, int64_t n,
                              int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                              int64_t stride);

std::tuple<at::Tensor, at::Tensor> active_rows_cpu(const at::Tensor& values);

at::Tensor stem_cpu(const at::Tensor& src, int64_t n, int64_t h, int64_t w,
                    const at::Tensor& weight, const at::Tensor& bias, int64_t kernel_size,
                    int64_t stride, int64_t padding);

at::Tensor tap_sum_cpu(const at::Tensor& y, const at::Tensor& bias, int64_t n, int64_t in_h,
                       int64_t in_w, int64_t start, int64_t stride);

}  // namespace fad_sparse
