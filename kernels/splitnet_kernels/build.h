// The build macros and the index type every header shares: what this compiler can build, how a
// function is forced inline, and the barrier that keeps a product out of an FMA.
#pragma once
#include <cstdint>

// Build macros: a promise about what this compiler can build, never a statement about the CPU.
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define SPLITNET_KERNELS_HAVE_X86 1
#else
#define SPLITNET_KERNELS_HAVE_X86 0
#endif
#if defined(__aarch64__)
#define SPLITNET_KERNELS_HAVE_NEON 1
#else
#define SPLITNET_KERNELS_HAVE_NEON 0
#endif

#if defined(__GNUC__)
#define SPLITNET_KERNELS_INLINE __attribute__((always_inline)) inline
#define SPLITNET_KERNELS_LAMBDA_INLINE __attribute__((always_inline))
#else
#define SPLITNET_KERNELS_INLINE inline
#define SPLITNET_KERNELS_LAMBDA_INLINE
#endif

// Forbids the compiler to fuse the multiply that produced x with a later add: GCC contracts
// a * b + c into one FMA (one rounding instead of two) wherever the function's target has FMA,
// which the avx2 / avx512 kernels and all of aarch64 have and x86 baseline code (scalar.h) has
// not, so the same expression gave different bits per ISA. The empty asm makes x opaque (as
// glibc's math_opt_barrier does); it emits no instruction. "v": any SSE/AVX register, so it
// takes a float or an __m512 alike ("w" on aarch64; elsewhere through memory, slower but right).
#if SPLITNET_KERNELS_HAVE_X86
#define SPLITNET_KERNELS_NO_CONTRACTION(x) asm("" : "+v"(x))
#elif SPLITNET_KERNELS_HAVE_NEON
#define SPLITNET_KERNELS_NO_CONTRACTION(x) asm("" : "+w"(x))
#else
#define SPLITNET_KERNELS_NO_CONTRACTION(x) asm("" : "+m"(x))
#endif

namespace splitnet {

using index_t = std::int64_t;

}  // namespace splitnet
