// AVX-512 (F, VL, DQ, BW) kernels: Skylake-SP and later Xeons, Zen 4 and Zen 5. Sixteen lanes and
// 32 registers allow 8 candidates x 32 users of accumulators in the cross tile. Dimension tails
// use masked loads, so no row is read past its end.
#pragma once
#include "common.h"

#if SPLITNET_KERNELS_HAVE_X86
#include <immintrin.h>

#define SPLITNET_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,fma,avx2")))

namespace splitnet {
namespace avx512_detail {

SPLITNET_AVX512 inline __mmask16 tail_mask(index_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xFFFF)
                         : static_cast<__mmask16>((1u << remaining) - 1u);
}

SPLITNET_AVX512 inline __m256 half(__m512 x) {
  return _mm256_add_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1));
}

// Sums of four accumulators, as the four lanes of an SSE register.
SPLITNET_AVX512 inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(half(a), half(b)), _mm256_hadd_ps(half(c), half(d)));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

SPLITNET_AVX512 inline __m512 dot_acc(const float* a, const float* b, index_t dim) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  index_t d = 0;
  for (; d + 32 <= dim; d += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), _mm512_loadu_ps(b + d), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d + 16), _mm512_loadu_ps(b + d + 16), acc1);
  }
  for (; d < dim; d += 16) {
    const __mmask16 m = tail_mask(dim - d);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + d), _mm512_maskz_loadu_ps(m, b + d), acc0);
  }
  return _mm512_add_ps(acc0, acc1);
}

template <int NC, int NV>
SPLITNET_AVX512 inline void tile_block(const float* users_t, index_t users_pad, const float* rows,
                                       index_t dim, index_t row_stride, float bias, float* tile) {
  __m512 acc[NC][NV];
  for (int c = 0; c < NC; ++c)
    for (int v = 0; v < NV; ++v) acc[c][v] = _mm512_setzero_ps();
  for (index_t d = 0; d < dim; ++d) {
    __m512 column[NV];
    for (int v = 0; v < NV; ++v) column[v] = _mm512_loadu_ps(users_t + d * users_pad + 16 * v);
    for (int c = 0; c < NC; ++c) {
      const __m512 value = _mm512_set1_ps(rows[c * row_stride + d]);
      for (int v = 0; v < NV; ++v) acc[c][v] = _mm512_fmadd_ps(value, column[v], acc[c][v]);
    }
  }
  const __m512 b = _mm512_set1_ps(bias);
  for (int c = 0; c < NC; ++c)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(tile + c * users_pad + 16 * v, _mm512_add_ps(acc[c][v], b));
}

template <int NC>
SPLITNET_AVX512 inline void tile_columns(const float* users_t, index_t users_pad, const float* rows,
                                         index_t dim, index_t row_stride, float bias, float* tile) {
  index_t u = 0;
  for (; u + 32 <= users_pad; u += 32)
    tile_block<NC, 2>(users_t + u, users_pad, rows, dim, row_stride, bias, tile + u);
  if (u < users_pad) tile_block<NC, 1>(users_t + u, users_pad, rows, dim, row_stride, bias, tile + u);
}

}  // namespace avx512_detail

SPLITNET_AVX512 inline void score_rows_f32_avx512(const float* query, const float* rows,
                                                  index_t n_rows, index_t dim, index_t row_stride,
                                                  float bias, float* out) {
  using namespace avx512_detail;
  const __m128 b = _mm_set1_ps(bias);
  index_t i = 0;
  for (; i + 4 <= n_rows; i += 4) {
    const float* r = rows + i * row_stride;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps(),
           acc3 = _mm512_setzero_ps();
    for (index_t d = 0; d < dim; d += 16) {
      const __mmask16 m = tail_mask(dim - d);
      const __m512 q = _mm512_maskz_loadu_ps(m, query + d);
      acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, r + d), q, acc0);
      acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, r + row_stride + d), q, acc1);
      acc2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, r + 2 * row_stride + d), q, acc2);
      acc3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, r + 3 * row_stride + d), q, acc3);
    }
    _mm_storeu_ps(out + i, _mm_add_ps(reduce4(acc0, acc1, acc2, acc3), b));
  }
  for (; i < n_rows; ++i)
    out[i] = _mm512_reduce_add_ps(dot_acc(query, rows + i * row_stride, dim)) + bias;
}

SPLITNET_AVX512 inline void score_tile_f32_avx512(const float* users_t, index_t users_pad,
                                                  const float* rows, index_t n_rows, index_t dim,
                                                  index_t row_stride, float bias, float* tile) {
  using namespace avx512_detail;
  index_t c = 0;
  for (; c + 8 <= n_rows; c += 8)
    tile_columns<8>(users_t, users_pad, rows + c * row_stride, dim, row_stride, bias, tile + c * users_pad);
  const float* r = rows + c * row_stride;
  float* t = tile + c * users_pad;
  switch (n_rows - c) {
    case 7: tile_columns<7>(users_t, users_pad, r, dim, row_stride, bias, t); break;
    case 6: tile_columns<6>(users_t, users_pad, r, dim, row_stride, bias, t); break;
    case 5: tile_columns<5>(users_t, users_pad, r, dim, row_stride, bias, t); break;
    case 4: tile_columns<4>(users_t, users_pad, r, dim, row_stride, bias, t); break;
    case 3: tile_columns<3>(users_t, users_pad, r, dim, row_stride, bias, t); break;
    case 2: tile_columns<2>(users_t, users_pad, r, dim, row_stride, bias, t); break;
    case 1: tile_columns<1>(users_t, users_pad, r, dim, row_stride, bias, t); break;
    default: break;
  }
}

SPLITNET_AVX512 inline void score_pairs_f32_avx512(const float* a, index_t a_stride, const float* b,
                                                   index_t b_stride, index_t n_pairs, index_t dim,
                                                   float bias, float* out) {
  using namespace avx512_detail;
  const __m128 bv = _mm_set1_ps(bias);
  index_t i = 0;
  for (; i + 4 <= n_pairs; i += 4) {
    const float* x = a + i * a_stride;
    const float* y = b + i * b_stride;
    const __m128 sums = reduce4(dot_acc(x, y, dim), dot_acc(x + a_stride, y + b_stride, dim),
                                dot_acc(x + 2 * a_stride, y + 2 * b_stride, dim),
                                dot_acc(x + 3 * a_stride, y + 3 * b_stride, dim));
    _mm_storeu_ps(out + i, _mm_add_ps(sums, bv));
  }
  for (; i < n_pairs; ++i)
    out[i] = _mm512_reduce_add_ps(dot_acc(a + i * a_stride, b + i * b_stride, dim)) + bias;
}

// Four pairs share every load of S: per 16-column slice, folded_p = sum_r a_p[r] S[r, slice],
// then dot_p += folded_p * b_p[slice].
SPLITNET_AVX512 inline void score_pairs_full_f32_avx512(const float* a, index_t a_stride,
                                                        const float* b, index_t b_stride,
                                                        const float* S, index_t n_pairs,
                                                        index_t dim, float bias, float* out) {
  using namespace avx512_detail;
  const __m128 bv = _mm_set1_ps(bias);
  index_t i = 0;
  for (; i + 4 <= n_pairs; i += 4) {
    const float* u0 = a + i * a_stride;
    const float* u1 = u0 + a_stride;
    const float* u2 = u1 + a_stride;
    const float* u3 = u2 + a_stride;
    const float* ad = b + i * b_stride;
    __m512 dot0 = _mm512_setzero_ps(), dot1 = _mm512_setzero_ps(), dot2 = _mm512_setzero_ps(),
           dot3 = _mm512_setzero_ps();
    for (index_t j = 0; j < dim; j += 16) {
      const __mmask16 m = tail_mask(dim - j);
      __m512 f0 = _mm512_setzero_ps(), f1 = _mm512_setzero_ps(), f2 = _mm512_setzero_ps(),
             f3 = _mm512_setzero_ps();
      for (index_t r = 0; r < dim; ++r) {
        const __m512 s = _mm512_maskz_loadu_ps(m, S + r * dim + j);
        f0 = _mm512_fmadd_ps(_mm512_set1_ps(u0[r]), s, f0);
        f1 = _mm512_fmadd_ps(_mm512_set1_ps(u1[r]), s, f1);
        f2 = _mm512_fmadd_ps(_mm512_set1_ps(u2[r]), s, f2);
        f3 = _mm512_fmadd_ps(_mm512_set1_ps(u3[r]), s, f3);
      }
      dot0 = _mm512_fmadd_ps(f0, _mm512_maskz_loadu_ps(m, ad + j), dot0);
      dot1 = _mm512_fmadd_ps(f1, _mm512_maskz_loadu_ps(m, ad + b_stride + j), dot1);
      dot2 = _mm512_fmadd_ps(f2, _mm512_maskz_loadu_ps(m, ad + 2 * b_stride + j), dot2);
      dot3 = _mm512_fmadd_ps(f3, _mm512_maskz_loadu_ps(m, ad + 3 * b_stride + j), dot3);
    }
    _mm_storeu_ps(out + i, _mm_add_ps(reduce4(dot0, dot1, dot2, dot3), bv));
  }
  for (; i < n_pairs; ++i) {
    const float* u = a + i * a_stride;
    const float* ad = b + i * b_stride;
    __m512 dot = _mm512_setzero_ps();
    for (index_t j = 0; j < dim; j += 16) {
      const __mmask16 m = tail_mask(dim - j);
      __m512 f = _mm512_setzero_ps();
      for (index_t r = 0; r < dim; ++r)
        f = _mm512_fmadd_ps(_mm512_set1_ps(u[r]), _mm512_maskz_loadu_ps(m, S + r * dim + j), f);
      dot = _mm512_fmadd_ps(f, _mm512_maskz_loadu_ps(m, ad + j), dot);
    }
    out[i] = _mm512_reduce_add_ps(dot) + bias;
  }
}

inline constexpr KernelTable kAvx512Table{Isa::avx512, score_rows_f32_avx512, score_tile_f32_avx512,
                                          score_pairs_f32_avx512, score_pairs_full_f32_avx512};

}  // namespace splitnet
#endif  // SPLITNET_KERNELS_HAVE_X86
