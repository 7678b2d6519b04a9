// The ISA levels (Isa) and the kernel table that each ISA file fills by name: its entries, the
// macro that fills one and the check that none is missing. The levels' names, CPU tests and
// tables are listed once, in dispatch.h.
#pragma once
#include <cstdint>

#include "build.h"

namespace splitnet {

// The values cross shared objects as ints (the capsule _core._active_isa, kernels.pxd): a new
// level takes the next value, and none is renumbered.
enum class Isa : int {
  scalar = 0,
  avx2 = 1,
  avx512 = 2,
  avx512vnni = 3,
  neon = 4,
  avx512bf16 [[deprecated("renamed avx512vnni: the level runs no bfloat16 instruction")]] = avx512vnni,
};

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
  // The progressive scan's heads (exact.h, Levels), one stream of blocks of 16 rows, each
  // 16 width + 128 bytes (width a multiple of 4): width / 4 groups of 16 words, word r of group
  // g holding bytes 4g .. 4g + 3 of the block's row r; then the 16 rows' float32 scales; then
  // their float32 rest norms. blocks holds ceil(n_rows / 16) whole blocks. out[i] = score_i8 of
  // the exact sum query . row_i (query_scale, the row's scale, bias), plus rest * the row's
  // rest norm (the product rounded, then the sum), for i < n_rows.
  void (*score_heads_i8)(const std::int8_t* query, float query_scale, const std::int8_t* blocks, float rest,
                         index_t n_rows, index_t width, float bias, float* out);
  // Pairwise: out[i] = sum_d a[i][d] * w[d] * b[i][d] + bias, w = weights, or all ones when
  // weights is null (a diagonal S; a full S goes through score_tile, see ops.h).
  void (*score_pairs_f32)(const float* a, index_t a_stride, const float* b, index_t b_stride,
                          const float* weights, index_t n_pairs, index_t dim, float bias, float* out);
  // Pairwise under a full S, fused: out[i] = x_i . b[i] + bias with x_i = a[i] S, never stored.
  // s_t is S as score_tile_f32 takes its users_t: (dim, pad) row-major, pad a multiple of 16,
  // columns past dim zero. Its bits are those of x_i = score_tile_f32(s_t, pad, a[i], 1, dim, .,
  // 0.0f, nullptr, .) (the fold's one order), then score_pairs_f32(x_i, ., b[i], ., nullptr, 1,
  // dim, bias, .) on the same table. Optional: null composes those two entries (ops.h).
  void (*score_pairs_full_f32)(const float* s_t, index_t pad, const float* a, index_t a_stride, const float* b,
                               index_t b_stride, index_t n_pairs, index_t dim, float bias, float* out);
  // The benchmark's read floor: the sum (mod 2^64) of words[0..n), read once, as fast as the
  // ISA reads memory, with the streaming kernels' software prefetch (or the floor would be theirs
  // to beat).
  std::uint64_t (*sum_u64)(const std::uint64_t* words, index_t n);
};

// Fills entry `op` of `table` with the kernel op_<suffix>: the field and the function share
// their name on the grid {op}_{dtype}_{isa}, so no entry can be filled with another's kernel
// (two pairs of entries share a signature, which a positional table would let swap silently).
#define SPLITNET_KERNELS_FILL(table, op, suffix) ((table).op = op##_##suffix)

// Whether every entry is filled (score_tile_i8 may be null: the scalar and NEON tables;
// score_pairs_full_f32 too: every table but the AVX-512 ones).
// The spec test (tests/cpp/test_kernels.cpp) checks it for every table; not a static_assert,
// which GCC cannot evaluate on function addresses under -fsanitize=undefined.
constexpr bool table_complete(const KernelTable& t) {
  return t.score_rows_f32 && t.score_tile_f32 && t.not_below_bits_f32 && t.first_not_below_f32 &&
         t.max_lanes_f32 && t.score_rows_f16 && t.score_rows_bf16 && t.widen_f16 && t.widen_bf16 &&
         t.score_rows_i8 && t.score_heads_i8 && t.score_pairs_f32 && t.sum_u64;
}

}  // namespace splitnet
