// The one AVX2 dispatch rule of the CPU kernels: a hot loop is written once as an always-inline
// body, wrapped twice (a baseline function and a FAD_TARGET_AVX2 one), and `fad::use_avx2()`
// picks the wrapper at run time: AVX2+FMA when the CPU has both and ATEN_CPU_CAPABILITY allows
// them (ATEN_CPU_CAPABILITY=default forces the baseline copy, as it does for PyTorch's kernels).
#pragma once

#include <ATen/Version.h>

#include <string>

#include "macros.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FAD_AVX2_BUILD 1
#define FAD_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define FAD_AVX2_BUILD 0
#define FAD_TARGET_AVX2
#endif

namespace fad {

// Whether the AVX2+FMA copies of the kernels should run (decided once per process).
inline bool use_avx2() {
#if FAD_AVX2_BUILD
  static const bool ok = [] {
    __builtin_cpu_init();
    const std::string cap = at::get_cpu_capability();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           (cap == "AVX2" || cap == "AVX512");
  }();
  return ok;
#else
  return false;
#endif
}

}  // namespace fad
