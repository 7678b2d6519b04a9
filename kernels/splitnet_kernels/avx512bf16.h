// AVX-512 with BF16 and VNNI: Zen 4 / Zen 5, Sapphire Rapids and later. The same kernels as
// avx512.h, except int8, which uses vpdpbusd (its integer sums are exact, so the bits are every
// ISA's). bfloat16 rows widen by shift as on avx2: vdpbf16ps sums pairs inside the instruction,
// which no other path can match bit for bit, and on Sapphire Rapids it was the slower one
// (6.3-7.0 ms against 3.7 ms on 1M rows).
#pragma once
#include "avx512.h"

#if SPLITNET_KERNELS_HAVE_X86
#define SPLITNET_AVX512BF16 \
  __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx512vnni,fma,avx2")))

#if defined(__GNUC__) && !defined(__clang__)  // as in avx512.h: GCC 12's headers, not our code
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"  // _mm512_cvtepi32_ps's _mm512_undefined_ps
#endif

namespace splitnet {

SPLITNET_AVX512BF16 inline __m256i half_epi32(__m512i x) {
  return _mm256_add_epi32(_mm512_castsi512_si256(x), _mm512_extracti64x4_epi64(x, 1));
}

// Sums of four int32 accumulators, as the four lanes of an SSE register (exact).
SPLITNET_AVX512BF16 inline __m128i reduce4_epi32(__m512i a, __m512i b, __m512i c, __m512i d) {
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(half_epi32(a), half_epi32(b)),
                                      _mm256_hadd_epi32(half_epi32(c), half_epi32(d)));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// vpdpbusd multiplies unsigned by signed bytes: each row byte goes in as a + 128 (a sign-bit
// flip, one xor) against the signed query, and 128 times the query's sum comes off once per
// call. Exact in int32.
SPLITNET_AVX512BF16 inline void score_rows_i8_avx512bf16(const std::int8_t* query, float query_scale,
                                                         const std::int8_t* rows, const float* row_scales,
                                                         index_t n_rows, index_t dim, index_t row_stride,
                                                         float bias, float* out) {
  constexpr index_t kMaxDim = 4096;
  const index_t full = dim / 64 * 64;
  if (dim > kMaxDim) return score_rows_i8_avx512(query, query_scale, rows, row_scales, n_rows, dim, row_stride, bias, out);
  __m512i q[kMaxDim / 64];
  std::int32_t offset = 0;  // 128 * sum of the query over the vector part
  for (index_t d = 0; d < full; d += 64) q[d / 64] = _mm512_loadu_si512(query + d);
  for (index_t d = 0; d < full; ++d) offset += 128 * query[d];
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (index_t i = 0; i < n_rows; i += 4) {  // four rows share each query load and one reduction
    const index_t count = std::min<index_t>(4, n_rows - i);
    prefetch_four_rows(rows, i, n_rows, dim, row_stride);
    const std::int8_t* r[4];
    for (index_t j = 0; j < 4; ++j) r[j] = rows + (i + std::min<index_t>(j, count - 1)) * row_stride;
    __m512i dot0 = _mm512_setzero_si512(), dot1 = dot0, dot2 = dot0, dot3 = dot0;
    for (index_t d = 0; d < full; d += 64) {
      const __m512i v = q[d / 64];
      dot0 = _mm512_dpbusd_epi32(dot0, _mm512_xor_si512(_mm512_loadu_si512(r[0] + d), flip), v);
      dot1 = _mm512_dpbusd_epi32(dot1, _mm512_xor_si512(_mm512_loadu_si512(r[1] + d), flip), v);
      dot2 = _mm512_dpbusd_epi32(dot2, _mm512_xor_si512(_mm512_loadu_si512(r[2] + d), flip), v);
      dot3 = _mm512_dpbusd_epi32(dot3, _mm512_xor_si512(_mm512_loadu_si512(r[3] + d), flip), v);
    }
    std::int32_t sums[4];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(sums), reduce4_epi32(dot0, dot1, dot2, dot3));
    for (index_t j = 0; j < count; ++j) {
      std::int32_t sum = sums[j] - offset;
      for (index_t d = full; d < dim; ++d) sum += static_cast<std::int32_t>(query[d]) * r[j][d];
      out[i + j] = score_i8(static_cast<float>(sum), query_scale, row_scales[i + j], bias);
    }
  }
}

namespace avx512bf16_detail {
// Adds group g (bytes 4 g .. 4 g + 3) of NC rows against 16 NV users: each row's four bytes,
// sign-flipped to unsigned and broadcast, against the users' signed words (the flip's 128 * sum
// comes off through the offsets). The last group of a row whose dim is not a multiple of 4
// reads only its `bytes` bytes.
template <int NC, int NV>
SPLITNET_AVX512BF16 inline void dot_group(__m512i (&acc)[NC][NV], const std::int32_t* users_g,
                                          const std::int8_t* rows, index_t row_stride, index_t g,
                                          index_t bytes = 4) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i column[NV];
  for (int v = 0; v < NV; ++v) column[v] = _mm512_loadu_si512(users_g + 16 * v);
  for (int c = 0; c < NC; ++c) {
    std::int32_t word = 0;
    std::memcpy(&word, rows + c * row_stride + 4 * g, static_cast<size_t>(bytes));
    const __m512i flipped = _mm512_xor_si512(_mm512_set1_epi32(word), flip);
    for (int v = 0; v < NV; ++v) acc[c][v] = _mm512_dpbusd_epi32(acc[c][v], flipped, column[v]);
  }
}

// NC candidates x 16 NV users, the int8 counterpart of avx512_detail::tile_block.
template <int NC, int NV>
SPLITNET_AVX512BF16 inline unsigned tile_block_i8(const std::int32_t* users_t, index_t users_pad,
                                                  const std::int32_t* offsets, const float* user_scales,
                                                  const std::int8_t* rows, const float* row_scales, index_t dim,
                                                  index_t row_stride, float bias, const float* gates, float* tile) {
  __m512i acc[NC][NV];
  for (int c = 0; c < NC; ++c)
    for (int v = 0; v < NV; ++v) acc[c][v] = _mm512_setzero_si512();
  const index_t full = dim / 4;
  for (index_t g = 0; g < full; ++g) dot_group<NC, NV>(acc, users_t + g * users_pad, rows, row_stride, g);
  if (full * 4 < dim) dot_group<NC, NV>(acc, users_t + full * users_pad, rows, row_stride, full, dim - full * 4);
  const __m512 b = _mm512_set1_ps(bias);
  __m512 scores[NC][NV];
  for (int v = 0; v < NV; ++v) {
    const __m512i offset = _mm512_loadu_si512(offsets + 16 * v);
    const __m512 scale = _mm512_loadu_ps(user_scales + 16 * v);
    for (int c = 0; c < NC; ++c) {
      // score_i8 on 16 lanes: the same operations in the same order, the product kept unfused
      const __m512 sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[c][v], offset));
      __m512 product = _mm512_mul_ps(sum, _mm512_mul_ps(scale, _mm512_set1_ps(row_scales[c])));
      SPLITNET_KERNELS_ROUNDED(product);
      scores[c][v] = _mm512_add_ps(product, b);
    }
  }
  return avx512_detail::store_block<NC, NV>(scores, users_pad, gates, tile);
}

template <int NC>
SPLITNET_AVX512BF16 inline unsigned tile_columns_i8(const std::int32_t* users_t, index_t users_pad,
                                                    const std::int32_t* offsets, const float* user_scales,
                                                    const std::int8_t* rows, const float* row_scales, index_t dim,
                                                    index_t row_stride, float bias, const float* gates, float* tile) {
  unsigned hits = 0;
  index_t u = 0;
  for (; u + 32 <= users_pad; u += 32)
    hits |= tile_block_i8<NC, 2>(users_t + u, users_pad, offsets + u, user_scales + u, rows, row_scales, dim,
                                 row_stride, bias, gates ? gates + u : nullptr, tile + u);
  if (u < users_pad)
    hits |= tile_block_i8<NC, 1>(users_t + u, users_pad, offsets + u, user_scales + u, rows, row_scales, dim,
                                 row_stride, bias, gates ? gates + u : nullptr, tile + u);
  return hits;
}
// score_tile_i8's operands, scored eight candidates at a time (over_candidate_blocks).
struct TileI8 {
  const std::int32_t* users_t;
  index_t users_pad;
  const std::int32_t* offsets;
  const float* user_scales;
  const std::int8_t* rows;
  const float* row_scales;
  index_t dim, row_stride;
  float bias;
  const float* gates;
  float* tile;

  template <int NC>
  SPLITNET_AVX512BF16 unsigned columns(index_t c) const {
    return tile_columns_i8<NC>(users_t, users_pad, offsets, user_scales, rows + c * row_stride, row_scales + c, dim,
                               row_stride, bias, gates, tile + c * users_pad);
  }
};
}  // namespace avx512bf16_detail

SPLITNET_AVX512BF16 inline std::uint64_t score_tile_i8_avx512bf16(const std::int32_t* users_t, index_t users_pad,
                                                                  const std::int32_t* offsets,
                                                                  const float* user_scales, const std::int8_t* rows,
                                                                  const float* row_scales, index_t n_rows,
                                                                  index_t dim, index_t row_stride, float bias,
                                                                  const float* gates, float* tile) {
  return over_candidate_blocks<8>(n_rows, avx512bf16_detail::TileI8{users_t, users_pad, offsets, user_scales, rows,
                                                                    row_scales, dim, row_stride, bias, gates, tile});
}

// The avx512 table with the BF16 and VNNI kernels in the entries they speed up.
inline constexpr KernelTable kAvx512Bf16Table = [] {
  KernelTable t = kAvx512Table;
  t.isa = Isa::avx512bf16;
  SPLITNET_KERNELS_FILL(t, score_rows_i8, avx512bf16);
  SPLITNET_KERNELS_FILL(t, score_tile_i8, avx512bf16);
  return t;
}();

}  // namespace splitnet

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // SPLITNET_KERNELS_HAVE_X86
