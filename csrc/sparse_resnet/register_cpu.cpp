// Registers the SparseResNet CPU kernels for the fad_sparse op schemas (declared in Python:
// fad/ops/sparse/schema.py).
#include <torch/library.h>

#include "../common/macros.h"
#include "sparse_cpu.h"

TORCH_LIBRARY_IMPL(fad_sparse, CPU, m) {
  m.impl("interpolate", &fad_sparse::interpolate_cpu);
  m.impl("interpolate_into", &fad_sparse::interpolate_into_cpu);
  m.impl("gather_conv", &fad_sparse::gather_conv_cpu);
  m.impl("gather_windows", &fad_sparse::gather_windows_cpu);
  m.impl("tap_sum", &fad_sparse::tap_sum_cpu);
  m.impl("active_rows", &fad_sparse::active_rows_cpu);
  m.impl("stem", &fad_sparse::stem_cpu);
}

FAD_EMPTY_PYTHON_MODULE(_sparse_cpu)
