// Which instruction set the CPU kernels run (csrc/cpu/*.cpp compile their inner loops once per ISA
// under `#pragma GCC target` and pick a copy at run time with this).
#pragma once

#include <cstdlib>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EQUIFAST_HAVE_X86_COPIES 1
#endif

namespace equifast {
namespace cpu {

// "avx512", "avx2" or "baseline": the GEMM copy this CPU runs (EQUIFAST_CPU_ISA=avx2|baseline caps it).
inline const char* isa() {
#ifdef EQUIFAST_HAVE_X86_COPIES
  static const char* chosen = [] {
    const char* cap = std::getenv("EQUIFAST_CPU_ISA");
    const std::string c = cap ? cap : "";
    if (c != "baseline" && c != "avx2" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq"))
      return "avx512";
    if (c != "baseline" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
    return "baseline";
  }();
  return chosen;
#else
  return "baseline";
#endif
}

}  // namespace cpu
}  // namespace equifast
