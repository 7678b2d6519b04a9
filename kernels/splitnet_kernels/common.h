// What every kernel shares: the build macros, the index type, the ISA levels and their names,
// the kernel table that each ISA file fills by name, the storage conversions and the top-k order.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

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

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2, avx512bf16 = 3, neon = 4 };

// The ISA names, the one list of them: the binding and kernels.pxd read names through it.
struct IsaName {
  Isa isa;
  const char* name;
};
inline constexpr IsaName kIsaNames[] = {{Isa::scalar, "scalar"},
                                        {Isa::avx2, "avx2"},
                                        {Isa::avx512, "avx512"},
                                        {Isa::avx512bf16, "avx512bf16"},
                                        {Isa::neon, "neon"}};

inline const char* isa_name(Isa isa) {
  for (const IsaName& entry : kIsaNames)
    if (entry.isa == isa) return entry.name;
  return "unknown";
}

// Sets *isa and returns true when `name` is one of kIsaNames (nul-terminated, or `length` chars).
inline bool isa_from_name(const char* name, std::size_t length, Isa* isa) {
  for (const IsaName& entry : kIsaNames)
    if (std::strlen(entry.name) == length && std::memcmp(entry.name, name, length) == 0) {
      *isa = entry.isa;
      return true;
    }
  return false;
}

// Strides are in elements; every row is contiguous along `dim`. Pointers need only float
// alignment. Every entry adds `bias` to each score so that ranking and reporting see one number.
struct KernelTable {
  Isa isa = Isa::scalar;
  // out[i] = query . rows[i] + bias, for i < n_rows.
  void (*score_rows_f32)(const float* query, const float* rows, index_t n_rows, index_t dim,
                         index_t row_stride, float bias, float* out);
  // Cross tile. users_t is (dim, users_pad) - users packed transposed, users_pad a multiple of
  // 16, padding lanes zero. tile[c * users_pad + u] = users[u] . rows[c] + bias, n_rows <= 64.
  // With gates (users_pad of them) it is also the top-k pre-test, done on the registers: bit c
  // of the result is set iff !(tile[c * users_pad + u] < gates[u]) for some u. Null gates: 0.
  std::uint64_t (*score_tile_f32)(const float* users_t, index_t users_pad, const float* rows,
                                  index_t n_rows, index_t dim, index_t row_stride, float bias,
                                  const float* gates, float* tile);
  // The top-k pre-tests; NaN passes them (the exact comparison decides). Bit i of bits (n + 63)
  // / 64 words) is set iff !(values[i] < gates[i]); returns whether any is. And the first i < n
  // with !(values[i] < gate), or n if there is none.
  bool (*not_below_bits_f32)(const float* values, const float* gates, index_t n, std::uint64_t* bits);
  index_t (*first_not_below_f32)(const float* values, index_t n, float gate);
  // lanes[j] = the largest values[i] over i % 16 == j, NaN skipped, -inf if there is none.
  void (*max_lanes_f32)(const float* values, index_t n, float* lanes);
  // Reduced-precision candidates (sk.Candidates), one float32 query: out[i] = query . row_i +
  // bias with the row widened exactly to float32. Rows are IEEE half or bfloat16 bits.
  void (*score_rows_f16)(const float* query, const std::uint16_t* rows, index_t n_rows,
                         index_t dim, index_t row_stride, float bias, float* out);
  void (*score_rows_bf16)(const float* query, const std::uint16_t* rows, index_t n_rows,
                          index_t dim, index_t row_stride, float bias, float* out);
  // out[i] = in[i] widened exactly to float32, i < n: 16-bit candidates as float32 rows for the
  // cross tile (many users against float16 / bfloat16 candidates).
  void (*widen_f16)(const std::uint16_t* in, index_t n, float* out);
  void (*widen_bf16)(const std::uint16_t* in, index_t n, float* out);
  // int8 rows with one scale each, against a query quantized by quantize_query_i8:
  // out[i] = float(sum_d query[d] * rows[i][d]) * (query_scale * row_scales[i]) + bias. The
  // integer sum is exact and every ISA ends it with score_i8's float operations (below), so
  // every ISA gives the same bits.
  void (*score_rows_i8)(const std::int8_t* query, float query_scale, const std::int8_t* rows,
                        const float* row_scales, index_t n_rows, index_t dim, index_t row_stride,
                        float bias, float* out);
  // The int8 cross tile, many quantized users against int8 rows; null on the scalar and NEON
  // tables (the cross operations then go user by user). users_t is ((dim + 3) / 4,
  // users_pad) words, each four consecutive bytes of one user's quantized query (zero past dim
  // and in padding lanes); offsets[u] = 128 * the sum of user u's bytes; user_scales[u] its
  // scale. tile[c * users_pad + u] = float(users[u] . rows[c]) * (user_scales[u] * row_scales[c])
  // + bias, the integer sum exact as in score_rows_i8; n_rows <= 64, gates and result as in
  // score_tile_f32.
  std::uint64_t (*score_tile_i8)(const std::int32_t* users_t, index_t users_pad, const std::int32_t* offsets,
                                 const float* user_scales, const std::int8_t* rows, const float* row_scales,
                                 index_t n_rows, index_t dim, index_t row_stride, float bias, const float* gates,
                                 float* tile);
  // Pairwise: out[i] = sum_d a[i][d] * w[d] * b[i][d] + bias, w = weights, or all ones when
  // weights is null (a diagonal S; a full S goes through score_tile, see ops.h).
  void (*score_pairs_f32)(const float* a, index_t a_stride, const float* b, index_t b_stride,
                          const float* weights, index_t n_pairs, index_t dim, float bias, float* out);
  // The benchmark's read floor: the sum (mod 2^64) of words[0..n), read once, as fast as the
  // ISA reads memory, with the streaming kernels' software prefetch (or the floor would be theirs
  // to beat).
  std::uint64_t (*sum_u64)(const std::uint64_t* words, index_t n);
};

// Fills entry `op` of `table` with the kernel op_<suffix>: the field and the function share
// their name on the grid {op}_{dtype}_{isa}, so no entry can be filled with another's kernel
// (two pairs of entries share a signature, which a positional table would let swap silently).
#define SPLITNET_KERNELS_FILL(table, op, suffix) ((table).op = op##_##suffix)

// Whether every entry is filled (score_tile_i8 may be null: the scalar and NEON tables).
// The spec test (tests/cpp/test_kernels.cpp) checks it for every table; not a static_assert,
// which GCC cannot evaluate on function addresses under -fsanitize=undefined.
constexpr bool table_complete(const KernelTable& t) {
  return t.score_rows_f32 && t.score_tile_f32 && t.not_below_bits_f32 && t.first_not_below_f32 &&
         t.max_lanes_f32 && t.score_rows_f16 && t.score_rows_bf16 && t.widen_f16 && t.widen_bf16 &&
         t.score_rows_i8 && t.score_pairs_f32 && t.sum_u64;
}

// Asks for the bytes [p, p + bytes) to be brought into the cache. GCC 12 takes a function that
// holds nothing but prefetches for pure and deletes the calls to it (which once cost the
// full-pair loop half its speed); the empty volatile asm tells it otherwise.
inline void prefetch_bytes(const void* p, index_t bytes) {
  asm volatile("");
  const char* first = static_cast<const char*>(p);
  for (index_t b = 0; b < bytes; b += 64) __builtin_prefetch(first + b);
  if (bytes > 0) __builtin_prefetch(first + bytes - 1);  // a row that straddles one more line
}

// The streaming kernels ask for the four rows kPrefetchBytes ahead of the four they read, and
// at least kPrefetchRows: the hardware prefetcher alone left up to 10 % of the read floor unused
// on this project's Zen 5 host (bench/RESULTS.md, W1). The distance is in bytes so that short
// rows (int8, 16-bit) keep as many bytes in flight as float32 ones: 16 rows (1 KiB) ahead of an
// int8 scan at n = 64 lost 10 % on the Zen 3 host when its neighbours loaded the memory. Rows
// past n_rows are not asked.
constexpr index_t kPrefetchRows = 16, kPrefetchBytes = 4096;

template <class T>
inline void prefetch_four_rows(const T* rows, index_t i, index_t n_rows, index_t dim, index_t row_stride) {
  // kPrefetchBytes over the row's bytes rounded up to a power of two: a shift, not a division
  const auto row_bytes = static_cast<unsigned long long>(std::max<index_t>(2, row_stride * static_cast<index_t>(sizeof(T))));
  const index_t ahead = std::max(kPrefetchRows, kPrefetchBytes >> (64 - __builtin_clzll(row_bytes - 1)));
  if (i + ahead + 4 > n_rows) return;
  for (index_t j = 0; j < 4; ++j)
    prefetch_bytes(rows + (i + ahead + j) * row_stride, dim * static_cast<index_t>(sizeof(T)));
}

// The loop every ISA's cross tile shares: tile.columns<NC>(c) scores candidates [c, c + NC)
// against all users and returns their hit bits (see score_tile_f32). It runs over n_rows <= 64
// candidates in blocks of Block and one tail block of the rest, and gathers the bits at their rows.
template <int NC, class Tile>
inline unsigned tail_columns(const Tile& tile, index_t c, index_t count) {
  if constexpr (NC == 0) {
    return 0;
  } else {
    return count == NC ? tile.template columns<NC>(c) : tail_columns<NC - 1>(tile, c, count);
  }
}

template <int Block, class Tile>
inline std::uint64_t over_candidate_blocks(index_t n_rows, const Tile& tile) {
  std::uint64_t hits = 0;
  index_t c = 0;
  for (; c + Block <= n_rows; c += Block) hits |= std::uint64_t{tile.template columns<Block>(c)} << c;
  if (c < n_rows) hits |= std::uint64_t{tail_columns<Block - 1>(tile, c, n_rows - c)} << c;  // c < 64 here
  return hits;
}

// Forbids the compiler to fuse the multiply that produced x with a later add: GCC contracts
// a * b + c into one FMA (one rounding instead of two) wherever the function's target has FMA,
// which the avx2 / avx512 kernels and all of aarch64 have and x86 baseline code (scalar.h) has
// not, so the same expression gave different bits per ISA. The empty asm makes x opaque (as
// glibc's math_opt_barrier does); it emits no instruction. "v": any SSE/AVX register, so it
// takes a float or an __m512 alike ("w" on aarch64; elsewhere through memory, slower but right).
#if SPLITNET_KERNELS_HAVE_X86
#define SPLITNET_KERNELS_ROUNDED(x) asm("" : "+v"(x))
#elif SPLITNET_KERNELS_HAVE_NEON
#define SPLITNET_KERNELS_ROUNDED(x) asm("" : "+w"(x))
#else
#define SPLITNET_KERNELS_ROUNDED(x) asm("" : "+m"(x))
#endif

// The int8 score from its exact integer sum, as every ISA's int8 kernels end (the cross tile
// does the same operations on 16 lanes, see avx512bf16.h): float(sum) * (query_scale *
// row_scale) + bias, the product rounded before the add. sum is the exact integer converted
// once to float (the same float from an int32 or an int64).
inline float score_i8(float sum, float query_scale, float row_scale, float bias) {
  float product = sum * (query_scale * row_scale);
  SPLITNET_KERNELS_ROUNDED(product);
  return product + bias;
}

// ---- The one summation order ----------------------------------------------------------------
// Every float32 score of the scans (one user, many users, an allowed subset, every ISA and every
// storage type, whose rows widen exactly to float32) has the bits of this order, so score, topk,
// one user and many agree bit for bit and an exact set's re-score is the float32 set's score:
// eight lanes, lane j the FMA chain q[d] * r[d] + lane over d = j, j + 8, ... < dim rounded up
// to 8 (zero terms past dim), from +0 in increasing d; then ((l0 + l1) + (l2 + l3)) + ((l4 + l5)
// + (l6 + l7)); then + bias. AVX2's eight-lane registers give it directly (avx2.h); the scalar
// reference and the cross tiles emulate it. load(d) is the candidate's value d as float32.
constexpr index_t kSumLanes = 8;

#if defined(__GNUC__)
#define SPLITNET_KERNELS_INLINE __attribute__((always_inline)) inline
#define SPLITNET_KERNELS_LAMBDA_INLINE __attribute__((always_inline))
#else
#define SPLITNET_KERNELS_INLINE inline
#define SPLITNET_KERNELS_LAMBDA_INLINE
#endif

SPLITNET_KERNELS_INLINE float sum_lanes(const float* l) { return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7])); }

template <class Query, class Load>
SPLITNET_KERNELS_INLINE float ordered_dot(Query query, Load load, index_t dim) {
  float lanes[kSumLanes] = {};
  index_t d = 0;
  for (; d + kSumLanes <= dim; d += kSumLanes)
    for (index_t j = 0; j < kSumLanes; ++j) lanes[j] = std::fma(query(d + j), load(d + j), lanes[j]);
  for (index_t j = 0; d < dim && j < kSumLanes; ++j)  // the last, partial group: zero terms past dim
    lanes[j] = d + j < dim ? std::fma(query(d + j), load(d + j), lanes[j]) : lanes[j] + 0.0f;
  return sum_lanes(lanes);
}

// The scalar kernels run their FMAs on the FMA instruction where the CPU has one (the same bits
// as the library call std::fma makes elsewhere, many times faster, and vectorized): body, an
// always-inline lambda, is inlined into a function built for FMA, or into a baseline one.
#if SPLITNET_KERNELS_HAVE_X86
template <class Body>
__attribute__((target("fma"))) inline void with_fma_instruction(Body&& body) { body(); }

template <class Body>
inline void with_fma(Body&& body) {
  static const bool has_fma = __builtin_cpu_supports("fma");
  if (has_fma) return with_fma_instruction(body);
  body();
}
#else
template <class Body>
inline void with_fma(Body&& body) { body(); }
#endif

// ---- Storage types -------------------------------------------------------------------------
inline float bf16_to_f32(std::uint16_t bits) {
  const std::uint32_t wide = static_cast<std::uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof value);
  return value;
}

inline float f16_to_f32(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
  std::uint32_t bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);  // inf or NaN
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal half: normalize
    int shift = 0;
    std::uint32_t m = mantissa;
    while ((m & 0x400u) == 0) {
      m <<= 1;
      ++shift;
    }
    bits = sign | (static_cast<std::uint32_t>(113 - shift) << 23) | ((m & 0x3FFu) << 13);
  }
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// The int8 query: q[d] ~= scale * out[d], |out[d]| <= 127, rounded to nearest. Returns the
// scale (0 for an all-zero query; NaN, with every score NaN, when the query holds NaN or
// infinity, which no int8 query can stand for). One definition, so every ISA sees the same
// integers.
inline float quantize_query_i8(const float* query, index_t dim, std::int8_t* out) {
  float peak = 0.0f;
  bool finite = true;
  for (index_t d = 0; d < dim; ++d) {
    finite = finite && std::isfinite(query[d]);
    peak = std::fmax(peak, std::fabs(query[d]));
  }
  if (!finite || peak == 0.0f) {
    for (index_t d = 0; d < dim; ++d) out[d] = 0;
    return finite ? 0.0f : std::numeric_limits<float>::quiet_NaN();
  }
  const float scale = peak / 127.0f;
  for (index_t d = 0; d < dim; ++d) {
    const float q = std::nearbyint(query[d] / scale);
    out[d] = static_cast<std::int8_t>(std::fmin(127.0f, std::fmax(-127.0f, q)));
  }
  return scale;
}

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
