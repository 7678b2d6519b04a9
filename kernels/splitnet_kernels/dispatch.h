// The ISA levels, listed once (as FAISS's SIMDLevel with its to_string): each row names a level,
// says whether this CPU runs it and holds its kernel table. The build macros promise what was
// compiled; cpuid (through the compiler's builtins) says what this CPU can execute. Callers pick
// a table once per call, outside every loop.
#pragma once
#include <cstddef>
#include <cstring>
#include <iterator>

#include "avx2.h"
#include "avx512.h"
#include "avx512vnni.h"
#include "isa.h"
#include "neon.h"
#include "scalar.h"

namespace splitnet {

// One ISA level. A level this build could not compile (x86 code on Arm, NEON elsewhere) keeps its
// row, so that asking for it by name says "not supported", not "unknown": it is never supported
// and has no table.
struct IsaLevel {
  Isa isa;
  const char* name;
  bool (*supported)();       // whether this CPU runs the level's code
  const KernelTable* table;  // null where the level was not built
};

namespace detail {
inline bool never_supported() { return false; }
inline bool scalar_supported() { return true; }
#if SPLITNET_KERNELS_HAVE_X86
inline bool avx2_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
inline bool avx512_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("fma");
}
// BF16 too, which the level does not use: asked for since it was named avx512bf16 (avx512vnni.h).
inline bool avx512vnni_supported() {
  return avx512_supported() && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni");
}
#define SPLITNET_KERNELS_X86_LEVEL(supported, table) supported, &table
#else
#define SPLITNET_KERNELS_X86_LEVEL(supported, table) detail::never_supported, nullptr
#endif
#if SPLITNET_KERNELS_HAVE_NEON
inline bool neon_supported() { return true; }
#define SPLITNET_KERNELS_NEON_LEVEL(supported, table) supported, &table
#else
#define SPLITNET_KERNELS_NEON_LEVEL(supported, table) detail::never_supported, nullptr
#endif
}  // namespace detail

// Every level, in the order of Isa's values. Within an architecture a later level is a better
// one and no CPU runs two architectures' levels, so the best a CPU runs is the last it supports.
inline constexpr IsaLevel kIsaLevels[] = {
    {Isa::scalar, "scalar", detail::scalar_supported, &kScalarTable},
    {Isa::avx2, "avx2", SPLITNET_KERNELS_X86_LEVEL(detail::avx2_supported, kAvx2Table)},
    {Isa::avx512, "avx512", SPLITNET_KERNELS_X86_LEVEL(detail::avx512_supported, kAvx512Table)},
    {Isa::avx512vnni, "avx512vnni", SPLITNET_KERNELS_X86_LEVEL(detail::avx512vnni_supported, kAvx512VnniTable)},
    {Isa::neon, "neon", SPLITNET_KERNELS_NEON_LEVEL(detail::neon_supported, kNeonTable)},
};
#undef SPLITNET_KERNELS_X86_LEVEL
#undef SPLITNET_KERNELS_NEON_LEVEL

constexpr bool levels_in_isa_order() {
  for (std::size_t i = 0; i < std::size(kIsaLevels); ++i)
    if (static_cast<std::size_t>(kIsaLevels[i].isa) != i) return false;
  return true;
}
static_assert(levels_in_isa_order(), "kIsaLevels: row i must be the level whose Isa value is i");

// Names a level had before, still accepted by name (SPLITNET_KERNELS_ISA, sk.set_isa); never
// reported. avx512bf16 ran no bfloat16 instruction: it is AVX-512 with VNNI.
struct IsaAlias {
  const char* name;
  Isa isa;
};
inline constexpr IsaAlias kIsaAliases[] = {{"avx512bf16", Isa::avx512vnni}};

// The row of `isa`, or null for a value that names no level.
inline const IsaLevel* isa_level(Isa isa) {
  const auto i = static_cast<std::size_t>(isa);
  return i < std::size(kIsaLevels) ? &kIsaLevels[i] : nullptr;
}

inline const char* isa_name(Isa isa) {
  const IsaLevel* level = isa_level(isa);
  return level ? level->name : "unknown";
}

inline bool isa_supported(Isa isa) {
  const IsaLevel* level = isa_level(isa);
  return level && level->supported();
}

// Sets *isa and returns true when `name` (`length` chars) is a level's name or an old one.
inline bool isa_from_name(const char* name, std::size_t length, Isa* isa) {
  const auto is = [&](const char* candidate) {
    return std::strlen(candidate) == length && std::memcmp(candidate, name, length) == 0;
  };
  for (const IsaLevel& level : kIsaLevels)
    if (is(level.name)) {
      *isa = level.isa;
      return true;
    }
  for (const IsaAlias& alias : kIsaAliases)
    if (is(alias.name)) {
      *isa = alias.isa;
      return true;
    }
  return false;
}

// The best ISA this CPU supports.
inline Isa detect_isa() {
  for (std::size_t i = std::size(kIsaLevels); i-- > 0;)
    if (kIsaLevels[i].supported()) return kIsaLevels[i].isa;
  return Isa::scalar;
}

// The table for a supported ISA; the caller checks isa_supported first (the scalar table otherwise).
inline const KernelTable& kernel_table(Isa isa) {
  const IsaLevel* level = isa_level(isa);
  return level && level->table ? *level->table : kScalarTable;
}

}  // namespace splitnet
