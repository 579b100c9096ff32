// Op schemas of the MSDA kernels (namespace fad_msda) and their CPU registration. The CUDA
// extension (cuda/msda_cuda.cu) registers CUDA kernels for the same schemas. The empty Python
// module init lets an ahead-of-time build be imported as `fad.ops._msda_cpu`.
#include <Python.h>
#include <torch/library.h>

#include "msda.h"

TORCH_LIBRARY(fad_msda, m) {
  m.def(
      "forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_loc, Tensor attn_weight) -> Tensor");
  m.def(
      "backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, "
      "Tensor level_start_index, Tensor sampling_loc, Tensor attn_weight) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fad_msda, CPU, m) {
  m.impl("forward", &fad_msda::forward_cpu);
  m.impl("backward", &fad_msda::backward_cpu);
}

extern "C" PyObject* PyInit__msda_cpu(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_msda_cpu", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
