// Macros and helpers shared by every kernel in csrc/: forced inlining, host/device functions,
// grid bounds tests, and the empty Python module that lets an ahead-of-time build be imported.
#pragma once

#include <Python.h>

#include <cstdint>

#if defined(__CUDACC__)
#define FAD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FAD_HOST_DEVICE inline
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FAD_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FAD_ALWAYS_INLINE inline
#endif

// `PyInit_<name>` of an empty module, so `import fad.ops.<name>` loads the library (and runs its
// TORCH_LIBRARY_IMPL registrations); the JIT loader loads the same library without Python.
#define FAD_EMPTY_PYTHON_MODULE(name)                                                     \
  extern "C" PyObject* PyInit_##name(void) {                                              \
    static PyModuleDef module = {PyModuleDef_HEAD_INIT, #name, nullptr, -1, nullptr};     \
    return PyModule_Create(&module);                                                      \
  }

namespace fad {

// Whether 0 <= i < n.
FAD_HOST_DEVICE bool inside(int64_t i, int64_t n) { return i >= 0 && i < n; }

// Whether (y, x) lies on an h x w grid.
FAD_HOST_DEVICE bool inside(int64_t y, int64_t x, int64_t h, int64_t w) {
  return inside(y, h) && inside(x, w);
}

}  // namespace fad
