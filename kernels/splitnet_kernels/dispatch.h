// Which ISA this CPU runs, and the kernel table for each. The build macros promise what was
// compiled; cpuid (through the compiler's builtins) says what this CPU can execute. Callers
// pick a table once per call, outside every loop.
#pragma once

#include "avx2.h"
#include "avx512.h"
#include "avx512bf16.h"
#include "neon.h"
#include "scalar.h"

namespace splitnet {

inline bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::scalar: return true;
#if SPLITNET_KERNELS_HAVE_X86
    case Isa::avx2:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::avx512:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("fma");
    case Isa::avx512bf16:
      return isa_supported(Isa::avx512) && __builtin_cpu_supports("avx512bf16") &&
             __builtin_cpu_supports("avx512vnni");
#endif
#if SPLITNET_KERNELS_HAVE_NEON
    case Isa::neon: return true;
#endif
    default: return false;
  }
}

// The best ISA this CPU supports, from the best down.
inline Isa detect_isa() {
  for (Isa isa : {Isa::avx512bf16, Isa::avx512, Isa::avx2, Isa::neon})
    if (isa_supported(isa)) return isa;
  return Isa::scalar;
}

// The table for a supported ISA; the caller checks isa_supported first.
inline const KernelTable& kernel_table(Isa isa) {
  switch (isa) {
#if SPLITNET_KERNELS_HAVE_X86
    case Isa::avx2: return kAvx2Table;
    case Isa::avx512: return kAvx512Table;
    case Isa::avx512bf16: return kAvx512Bf16Table;
#endif
#if SPLITNET_KERNELS_HAVE_NEON
    case Isa::neon: return kNeonTable;
#endif
    default: return kScalarTable;
  }
}

}  // namespace splitnet
