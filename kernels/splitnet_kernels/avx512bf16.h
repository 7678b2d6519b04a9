// AVX-512 with BF16 and VNNI: Zen 4 / Zen 5, Sapphire Rapids and later. The same kernels as
// avx512.h, except the reduced-precision rows, which use the dot-product instructions:
// vdpbf16ps for bfloat16 (the float32 query split exactly-enough into high and low bfloat16
// halves, so the query keeps ~16 bits of mantissa) and vpdpbusd for int8.
#pragma once
#include "avx512.h"

#if SPLITNET_KERNELS_HAVE_X86
#define SPLITNET_AVX512BF16 \
  __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx512vnni,fma,avx2")))

#if defined(__GNUC__) && !defined(__clang__)  // as in avx512.h: GCC 12's headers, not our code
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace splitnet {

SPLITNET_AVX512BF16 inline void score_rows_bf16_avx512bf16(const float* query, const std::uint16_t* rows,
                                                           index_t n_rows, index_t dim, index_t row_stride,
                                                           float bias, float* out) {
  constexpr index_t kMaxDim = 1024;  // query halves live on the stack; wider rows go the plain way
  const index_t full = dim / 32 * 32;
  if (dim > kMaxDim) return score_rows_bf16_avx512(query, rows, n_rows, dim, row_stride, bias, out);
  __m512bh high[kMaxDim / 32], low[kMaxDim / 32];
  for (index_t d = 0; d < full; d += 32) {
    const __m512 q0 = _mm512_loadu_ps(query + d), q1 = _mm512_loadu_ps(query + d + 16);
    const __m512bh h = _mm512_cvtne2ps_pbh(q1, q0);
    const __m512i hi_bits = reinterpret_cast<__m512i>(h);
    const __m512 h0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(hi_bits)), 16));
    const __m512 h1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(hi_bits, 1)), 16));
    high[d / 32] = h;
    low[d / 32] = _mm512_cvtne2ps_pbh(_mm512_sub_ps(q1, h1), _mm512_sub_ps(q0, h0));
  }
  for (index_t i = 0; i < n_rows; ++i) {
    const std::uint16_t* row = rows + i * row_stride;
    __m512 acc = _mm512_setzero_ps();
    for (index_t d = 0; d < full; d += 32) {
      const __m512bh r = reinterpret_cast<__m512bh>(_mm512_loadu_si512(row + d));
      acc = _mm512_dpbf16_ps(acc, r, high[d / 32]);
      acc = _mm512_dpbf16_ps(acc, r, low[d / 32]);
    }
    float sum = _mm512_reduce_add_ps(acc);
    for (index_t d = full; d < dim; ++d) sum += query[d] * bf16_to_f32(row[d]);
    out[i] = sum + bias;
  }
}

// vpdpbusd multiplies unsigned by signed bytes: the query goes in as q + 128, and 128 times the
// row's sum (a second vpdpbusd against ones) comes off. Exact in int32.
SPLITNET_AVX512BF16 inline void score_rows_i8_avx512bf16(const std::int8_t* query, float query_scale,
                                                         const std::int8_t* rows, const float* row_scales,
                                                         index_t n_rows, index_t dim, index_t row_stride,
                                                         float bias, float* out) {
  constexpr index_t kMaxDim = 4096;
  const index_t full = dim / 64 * 64;
  if (dim > kMaxDim) return score_rows_i8_avx512(query, query_scale, rows, row_scales, n_rows, dim, row_stride, bias, out);
  __m512i shifted[kMaxDim / 64];
  const __m512i offset = _mm512_set1_epi8(static_cast<char>(-128)), ones = _mm512_set1_epi8(1);
  for (index_t d = 0; d < full; d += 64)
    shifted[d / 64] = _mm512_xor_si512(_mm512_loadu_si512(query + d), offset);  // q + 128 as u8
  for (index_t i = 0; i < n_rows; i += 4) {  // four rows share each query load and one reduction
    const index_t count = std::min<index_t>(4, n_rows - i);
    const std::int8_t* r[4];
    for (index_t j = 0; j < 4; ++j) r[j] = rows + (i + std::min<index_t>(j, count - 1)) * row_stride;
    __m512i dot[4], row_sum[4];
    for (int j = 0; j < 4; ++j) dot[j] = row_sum[j] = _mm512_setzero_si512();
    for (index_t d = 0; d < full; d += 64) {
      const __m512i q = shifted[d / 64];
      for (int j = 0; j < 4; ++j) {
        const __m512i v = _mm512_loadu_si512(r[j] + d);
        dot[j] = _mm512_dpbusd_epi32(dot[j], q, v);
        row_sum[j] = _mm512_dpbusd_epi32(row_sum[j], ones, v);
      }
    }
    for (index_t j = 0; j < count; ++j) {
      std::int32_t sum = _mm512_reduce_add_epi32(_mm512_sub_epi32(dot[j], _mm512_slli_epi32(row_sum[j], 7)));
      for (index_t d = full; d < dim; ++d) sum += static_cast<std::int32_t>(query[d]) * r[j][d];
      out[i + j] = static_cast<float>(sum) * (query_scale * row_scales[i + j]) + bias;
    }
  }
}

inline constexpr KernelTable kAvx512Bf16Table{
    Isa::avx512bf16, score_rows_f32_avx512, score_tile_f32_avx512, not_below_bits_f32_avx512,
    first_not_below_f32_avx512, score_rows_f16_avx512, score_rows_bf16_avx512bf16,
    score_rows_i8_avx512bf16, score_pairs_f32_avx512};

}  // namespace splitnet

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // SPLITNET_KERNELS_HAVE_X86
