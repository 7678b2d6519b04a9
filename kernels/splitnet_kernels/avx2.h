// AVX2 + FMA kernels: Haswell (2013) and later Intel, Zen 1-3, and any x86-64 without AVX-512.
// Eight lanes and 16 registers: the cross tile holds 4 candidates x 16 users of accumulators.
// Dimension tails use maskload, which never touches the masked-off bytes.
#pragma once
#include "common.h"

#if SPLITNET_KERNELS_HAVE_X86
#include <immintrin.h>

#define SPLITNET_AVX2 __attribute__((target("avx2,fma")))

namespace splitnet {
namespace avx2_detail {

SPLITNET_AVX2 inline __m256i tail_mask(index_t remaining) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int r = remaining >= 8 ? 8 : static_cast<int>(remaining);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(r), lane);
}

SPLITNET_AVX2 inline __m128 reduce4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

SPLITNET_AVX2 inline float reduce1(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

SPLITNET_AVX2 inline __m256 dot_acc(const float* a, const float* b, index_t dim) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  index_t d = 0;
  for (; d + 16 <= dim; d += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), _mm256_loadu_ps(b + d + 8), acc1);
  }
  for (; d < dim; d += 8) {
    const __m256i m = tail_mask(dim - d);
    acc0 = _mm256_fmadd_ps(_mm256_maskload_ps(a + d, m), _mm256_maskload_ps(b + d, m), acc0);
  }
  return _mm256_add_ps(acc0, acc1);
}

template <int NC, int NV>
SPLITNET_AVX2 inline void tile_block(const float* users_t, index_t users_pad, const float* rows,
                                     index_t dim, index_t row_stride, float bias, float* tile) {
  __m256 acc[NC][NV];
  for (int c = 0; c < NC; ++c)
    for (int v = 0; v < NV; ++v) acc[c][v] = _mm256_setzero_ps();
  for (index_t d = 0; d < dim; ++d) {
    __m256 column[NV];
    for (int v = 0; v < NV; ++v) column[v] = _mm256_loadu_ps(users_t + d * users_pad + 8 * v);
    for (int c = 0; c < NC; ++c) {
      const __m256 value = _mm256_broadcast_ss(rows + c * row_stride + d);
      for (int v = 0; v < NV; ++v) acc[c][v] = _mm256_fmadd_ps(value, column[v], acc[c][v]);
    }
  }
  const __m256 b = _mm256_set1_ps(bias);
  for (int c = 0; c < NC; ++c)
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(tile + c * users_pad + 8 * v, _mm256_add_ps(acc[c][v], b));
}

template <int NC>
SPLITNET_AVX2 inline void tile_columns(const float* users_t, index_t users_pad, const float* rows,
                                       index_t dim, index_t row_stride, float bias, float* tile) {
  for (index_t u = 0; u < users_pad; u += 16)  // users_pad is a multiple of 16
    tile_block<NC, 2>(users_t + u, users_pad, rows, dim, row_stride, bias, tile + u);
}

}  // namespace avx2_detail

SPLITNET_AVX2 inline void score_rows_f32_avx2(const float* query, const float* rows, index_t n_rows,
                                              index_t dim, index_t row_stride, float bias, float* out) {
  using namespace avx2_detail;
  const __m128 b = _mm_set1_ps(bias);
  index_t i = 0;
  for (; i + 4 <= n_rows; i += 4) {
    const float* r = rows + i * row_stride;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
           acc3 = _mm256_setzero_ps();
    for (index_t d = 0; d < dim; d += 8) {
      const __m256i m = tail_mask(dim - d);
      const __m256 q = _mm256_maskload_ps(query + d, m);
      acc0 = _mm256_fmadd_ps(_mm256_maskload_ps(r + d, m), q, acc0);
      acc1 = _mm256_fmadd_ps(_mm256_maskload_ps(r + row_stride + d, m), q, acc1);
      acc2 = _mm256_fmadd_ps(_mm256_maskload_ps(r + 2 * row_stride + d, m), q, acc2);
      acc3 = _mm256_fmadd_ps(_mm256_maskload_ps(r + 3 * row_stride + d, m), q, acc3);
    }
    _mm_storeu_ps(out + i, _mm_add_ps(reduce4(acc0, acc1, acc2, acc3), b));
  }
  for (; i < n_rows; ++i) out[i] = reduce1(dot_acc(query, rows + i * row_stride, dim)) + bias;
}

SPLITNET_AVX2 inline void score_tile_f32_avx2(const float* users_t, index_t users_pad,
                                              const float* rows, index_t n_rows, index_t dim,
                                              index_t row_stride, float bias, float* tile) {
  using namespace avx2_detail;
  index_t c = 0;
  for (; c + 4 <= n_rows; c += 4)
    tile_columns<4>(users_t, users_pad, rows + c * row_stride, dim, row_stride, bias, tile + c * users_pad);
  const float* r = rows + c * row_stride;
  float* t = tile + c * users_pad;
  switch (n_rows - c) {
    case 3: tile_columns<3>(users_t, users_pad, r, dim, row_stride, bias, t); break;
    case 2: tile_columns<2>(users_t, users_pad, r, dim, row_stride, bias, t); break;
    case 1: tile_columns<1>(users_t, users_pad, r, dim, row_stride, bias, t); break;
    default: break;
  }
}

SPLITNET_AVX2 inline void score_pairs_f32_avx2(const float* a, index_t a_stride, const float* b,
                                               index_t b_stride, index_t n_pairs, index_t dim,
                                               float bias, float* out) {
  using namespace avx2_detail;
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
  for (; i < n_pairs; ++i) out[i] = reduce1(dot_acc(a + i * a_stride, b + i * b_stride, dim)) + bias;
}

// Four pairs share every load of S, as in the AVX-512 kernel, eight columns at a time.
SPLITNET_AVX2 inline void score_pairs_full_f32_avx2(const float* a, index_t a_stride, const float* b,
                                                    index_t b_stride, const float* S, index_t n_pairs,
                                                    index_t dim, float bias, float* out) {
  using namespace avx2_detail;
  const __m128 bv = _mm_set1_ps(bias);
  index_t i = 0;
  for (; i + 4 <= n_pairs; i += 4) {
    const float* u0 = a + i * a_stride;
    const float* u1 = u0 + a_stride;
    const float* u2 = u1 + a_stride;
    const float* u3 = u2 + a_stride;
    const float* ad = b + i * b_stride;
    __m256 dot0 = _mm256_setzero_ps(), dot1 = _mm256_setzero_ps(), dot2 = _mm256_setzero_ps(),
           dot3 = _mm256_setzero_ps();
    for (index_t j = 0; j < dim; j += 8) {
      const __m256i m = tail_mask(dim - j);
      __m256 f0 = _mm256_setzero_ps(), f1 = _mm256_setzero_ps(), f2 = _mm256_setzero_ps(),
             f3 = _mm256_setzero_ps();
      for (index_t r = 0; r < dim; ++r) {
        const __m256 s = _mm256_maskload_ps(S + r * dim + j, m);
        f0 = _mm256_fmadd_ps(_mm256_broadcast_ss(u0 + r), s, f0);
        f1 = _mm256_fmadd_ps(_mm256_broadcast_ss(u1 + r), s, f1);
        f2 = _mm256_fmadd_ps(_mm256_broadcast_ss(u2 + r), s, f2);
        f3 = _mm256_fmadd_ps(_mm256_broadcast_ss(u3 + r), s, f3);
      }
      dot0 = _mm256_fmadd_ps(f0, _mm256_maskload_ps(ad + j, m), dot0);
      dot1 = _mm256_fmadd_ps(f1, _mm256_maskload_ps(ad + b_stride + j, m), dot1);
      dot2 = _mm256_fmadd_ps(f2, _mm256_maskload_ps(ad + 2 * b_stride + j, m), dot2);
      dot3 = _mm256_fmadd_ps(f3, _mm256_maskload_ps(ad + 3 * b_stride + j, m), dot3);
    }
    _mm_storeu_ps(out + i, _mm_add_ps(reduce4(dot0, dot1, dot2, dot3), bv));
  }
  for (; i < n_pairs; ++i) {
    const float* u = a + i * a_stride;
    const float* ad = b + i * b_stride;
    __m256 dot = _mm256_setzero_ps();
    for (index_t j = 0; j < dim; j += 8) {
      const __m256i m = tail_mask(dim - j);
      __m256 f = _mm256_setzero_ps();
      for (index_t r = 0; r < dim; ++r)
        f = _mm256_fmadd_ps(_mm256_broadcast_ss(u + r), _mm256_maskload_ps(S + r * dim + j, m), f);
      dot = _mm256_fmadd_ps(f, _mm256_maskload_ps(ad + j, m), dot);
    }
    out[i] = reduce1(dot) + bias;
  }
}

inline constexpr KernelTable kAvx2Table{Isa::avx2, score_rows_f32_avx2, score_tile_f32_avx2,
                                        score_pairs_f32_avx2, score_pairs_full_f32_avx2};

}  // namespace splitnet
#endif  // SPLITNET_KERNELS_HAVE_X86
