// The sampled positions of a mask and the row of each position among them
// (`fad_sparse::active_rows`): one serial pass, so building them costs no parallel region (the
// masks have at most a few hundred thousand positions).
#include <ATen/ops/empty.h>

#include <cstdint>
#include <tuple>

#include "sparse_cpu.h"

namespace fad_sparse {

std::tuple<at::Tensor, at::Tensor> active_rows_cpu(const at::Tensor& values) {
  check_float_cpu(values, "fad_sparse.active_rows", "values");
  const int64_t total = values.numel();
  const float* v = values.data_ptr<float>();
  at::Tensor row_of = at::empty({total}, values.options().dtype(at::kLong));
  int64_t* row = row_of.data_ptr<int64_t>();
  int64_t count = 0;
  for (int64_t p = 0; p < total; ++p) {
    row[p] = v[p] != 0.f ? count : 0;
    count += v[p] != 0.f;
  }
  at::Tensor positions = at::empty({count}, row_of.options());
  int64_t* pos = positions.data_ptr<int64_t>();
  for (int64_t p = 0, i = 0; p < total; ++p) {
    if (v[p] != 0.f) pos[i++] = p;
  }
  return {positions, row_of};
}

}  // namespace fad_sparse
