// Vocabulary shared by every kernel: the index type, the ISA levels, the kernel table whose
// entries each ISA file fills with the scalar file's exact signatures, and the top-k order.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

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

namespace splitnet {

using index_t = std::int64_t;

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2, neon = 3 };

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::neon: return "neon";
  }
  return "unknown";
}

// Strides are in elements; every row is contiguous along `dim`. Pointers need only float
// alignment. Every entry adds `bias` to each score so that ranking and reporting see one number.
struct KernelTable {
  Isa isa;
  // out[i] = query . rows[i] + bias, for i < n_rows.
  void (*score_rows_f32)(const float* query, const float* rows, index_t n_rows, index_t dim,
                         index_t row_stride, float bias, float* out);
  // Cross tile. users_t is (dim, users_pad) - users packed transposed, users_pad a multiple of
  // 16, padding lanes zero. tile[c * users_pad + u] = users[u] . rows[c] + bias.
  void (*score_tile_f32)(const float* users_t, index_t users_pad, const float* rows,
                         index_t n_rows, index_t dim, index_t row_stride, float bias, float* tile);
  // The top-k pre-tests; NaN passes them (the exact comparison decides). Bit i of bits (n + 63)
  // / 64 words) is set iff !(values[i] < gates[i]); returns whether any is. And the first i < n
  // with !(values[i] < gate), or n if there is none.
  bool (*not_below_bits_f32)(const float* values, const float* gates, index_t n, std::uint64_t* bits);
  index_t (*first_not_below_f32)(const float* values, index_t n, float gate);
  // Pairwise: out[i] = sum_d a[i][d] * w[d] * b[i][d] + bias, w = weights, or all ones when
  // weights is null (a diagonal S; a full S goes through score_tile, see ops.h).
  void (*score_pairs_f32)(const float* a, index_t a_stride, const float* b, index_t b_stride,
                          const float* weights, index_t n_pairs, index_t dim, float bias, float* out);
};

// ---- The top-k order -------------------------------------------------------------------
// Scores rank by value, descending; NaN ranks below every number (below -inf); equal scores
// (and +0 / -0) rank by the lower candidate index first. order_key maps a float to an int32
// that sorts the same way, so comparisons are exact and total.
inline std::int32_t order_key(float score) {
  if (std::isnan(score)) return INT32_MIN;
  score += 0.0f;  // -0 becomes +0: equal scores must tie
  std::int32_t bits;
  std::memcpy(&bits, &score, sizeof bits);
  return bits ^ ((bits >> 31) & 0x7FFFFFFF);
}

inline bool ranks_before(float score_a, index_t id_a, float score_b, index_t id_b) {
  const std::int32_t ka = order_key(score_a), kb = order_key(score_b);
  return ka > kb || (ka == kb && id_a < id_b);
}

}  // namespace splitnet
