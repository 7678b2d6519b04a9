// AVX2 + FMA (+ F16C) kernels: Haswell (2013) and later Intel, Zen 1-3, and any x86-64 without AVX-512.
// Eight lanes and 16 registers: the cross tile holds 4 candidates x 16 users of accumulators.
// Dimension tails use maskload, which never touches the masked-off bytes.
#pragma once
#include <algorithm>
#include <cstring>
#include <vector>

#include "isa.h"
#include "order.h"
#include "scalar.h"
#include "tile_loop.h"
#include "tuning.h"

#if SPLITNET_KERNELS_HAVE_X86
#include <immintrin.h>

#define SPLITNET_AVX2 __attribute__((target("avx2,fma,f16c")))

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

SPLITNET_AVX2 inline float reduce1(__m256 a) {  // as one lane of reduce4: a row's score never
  const __m256 zero = _mm256_setzero_ps();        // depends on its neighbours
  return _mm_cvtss_f32(reduce4(a, zero, zero, zero));
}

// maskload is slow on some cores (Zen), so only the tail uses one.
template <bool Weighted>
SPLITNET_AVX2 inline __m256 pair_acc(const float* a, const float* b, const float* w, index_t dim) {
  __m256 acc = _mm256_setzero_ps();
  index_t d = 0;
  for (; d + 8 <= dim; d += 8) {
    __m256 x = _mm256_loadu_ps(a + d);
    if (Weighted) x = _mm256_mul_ps(x, _mm256_loadu_ps(w + d));
    acc = _mm256_fmadd_ps(x, _mm256_loadu_ps(b + d), acc);
  }
  if (d < dim) {
    const __m256i m = tail_mask(dim - d);
    __m256 x = _mm256_maskload_ps(a + d, m);
    if (Weighted) x = _mm256_mul_ps(x, _mm256_maskload_ps(w + d, m));
    acc = _mm256_fmadd_ps(x, _mm256_maskload_ps(b + d, m), acc);
  }
  return acc;
}

template <bool Weighted>
SPLITNET_AVX2 inline void pairs(const float* a, index_t a_stride, const float* b, index_t b_stride,
                                const float* w, index_t n_pairs, index_t dim, float bias, float* out) {
  const __m128 bv = _mm_set1_ps(bias);
  index_t i = 0;
  for (; i + 4 <= n_pairs; i += 4) {
    const float* x = a + i * a_stride;
    const float* y = b + i * b_stride;
    prefetch_four_rows(a, i, n_pairs, dim, a_stride);
    prefetch_four_rows(b, i, n_pairs, dim, b_stride);
    // named, so the rows are read in increasing order (GCC evaluates arguments right to left)
    const __m256 s0 = pair_acc<Weighted>(x, y, w, dim);
    const __m256 s1 = pair_acc<Weighted>(x + a_stride, y + b_stride, w, dim);
    const __m256 s2 = pair_acc<Weighted>(x + 2 * a_stride, y + 2 * b_stride, w, dim);
    const __m256 s3 = pair_acc<Weighted>(x + 3 * a_stride, y + 3 * b_stride, w, dim);
    _mm_storeu_ps(out + i, _mm_add_ps(reduce4(s0, s1, s2, s3), bv));
  }
  for (; i < n_pairs; ++i)
    out[i] = reduce1(pair_acc<Weighted>(a + i * a_stride, b + i * b_stride, w, dim)) + bias;
}

// One block of NC candidates x 8 NV users, stored; with gates, bit c of the result says whether
// candidate c reaches some user's gate. Each score in the one summation order (order.h): lane j
// of the eight is a pass over d = j, j + 8, ..., its sums kept in `lanes`, then the lanes' tree.
template <int NC, int NV>
SPLITNET_AVX2 inline unsigned tile_block(const float* users_t, index_t users_pad, const float* rows,
                                         index_t dim, index_t row_stride, float bias, const float* gates,
                                         float* tile) {
  __m256 lanes[kSumLanes][NC][NV];
  const index_t padded = (dim + kSumLanes - 1) / kSumLanes * kSumLanes;
  for (index_t j = 0; j < kSumLanes; ++j) {
    __m256 acc[NC][NV];
    for (int c = 0; c < NC; ++c)
      for (int v = 0; v < NV; ++v) acc[c][v] = _mm256_setzero_ps();
    for (index_t d = j; d < dim; d += kSumLanes) {
      __m256 column[NV];
      for (int v = 0; v < NV; ++v) column[v] = _mm256_loadu_ps(users_t + d * users_pad + 8 * v);
      for (int c = 0; c < NC; ++c) {
        const __m256 value = _mm256_broadcast_ss(rows + c * row_stride + d);
        for (int v = 0; v < NV; ++v) acc[c][v] = _mm256_fmadd_ps(value, column[v], acc[c][v]);
      }
    }
    const bool zero_term = (padded - 1 - j) / kSumLanes * kSumLanes + j >= dim;  // lane j's last d is past dim
    for (int c = 0; c < NC; ++c)
      for (int v = 0; v < NV; ++v)
        lanes[j][c][v] = zero_term ? _mm256_add_ps(acc[c][v], _mm256_setzero_ps()) : acc[c][v];
  }
  const __m256 b = _mm256_set1_ps(bias);
  __m256 sums[NC][NV];
  for (int c = 0; c < NC; ++c)
    for (int v = 0; v < NV; ++v) {
      const __m256 low = _mm256_add_ps(_mm256_add_ps(lanes[0][c][v], lanes[1][c][v]),
                                       _mm256_add_ps(lanes[2][c][v], lanes[3][c][v]));
      const __m256 high = _mm256_add_ps(_mm256_add_ps(lanes[4][c][v], lanes[5][c][v]),
                                        _mm256_add_ps(lanes[6][c][v], lanes[7][c][v]));
      sums[c][v] = _mm256_add_ps(_mm256_add_ps(low, high), b);
      _mm256_storeu_ps(tile + c * users_pad + 8 * v, sums[c][v]);
    }
  if (gates == nullptr) return 0;
  unsigned hits = 0;
  for (int c = 0; c < NC; ++c) {
    int any = 0;
    for (int v = 0; v < NV; ++v)
      any |= _mm256_movemask_ps(_mm256_cmp_ps(sums[c][v], _mm256_loadu_ps(gates + 8 * v), _CMP_NLT_UQ));
    hits |= static_cast<unsigned>(any != 0) << c;
  }
  return hits;
}

template <int NC>
SPLITNET_AVX2 inline unsigned tile_columns(const float* users_t, index_t users_pad, const float* rows,
                                           index_t dim, index_t row_stride, float bias, const float* gates,
                                           float* tile) {
  unsigned hits = 0;
  for (index_t u = 0; u < users_pad; u += 16)  // users_pad is a multiple of 16
    hits |= tile_block<NC, 2>(users_t + u, users_pad, rows, dim, row_stride, bias, gates ? gates + u : nullptr,
                              tile + u);
  return hits;
}

// score_tile_f32's operands, scored four candidates at a time (over_candidate_blocks).
struct Tile {
  const float* users_t;
  index_t users_pad;
  const float* rows;
  index_t dim, row_stride;
  float bias;
  const float* gates;
  float* tile;

  template <int NC>
  SPLITNET_AVX2 unsigned columns(index_t c) const {
    return tile_columns<NC>(users_t, users_pad, rows + c * row_stride, dim, row_stride, bias, gates, tile + c * users_pad);
  }
};

}  // namespace avx2_detail

SPLITNET_AVX2 inline void score_rows_f32_avx2(const float* query, const float* rows, index_t n_rows,
                                              index_t dim, index_t row_stride, float bias, float* out) {
  using namespace avx2_detail;
  const __m128 b = _mm_set1_ps(bias);
  const index_t full = dim / 8 * 8;
  const __m256i tail = tail_mask(dim - full);
  index_t i = 0;
  for (; i + 4 <= n_rows; i += 4) {
    const float* r = rows + i * row_stride;
    prefetch_four_rows(rows, i, n_rows, dim, row_stride);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
           acc3 = _mm256_setzero_ps();
    for (index_t d = 0; d < full; d += 8) {  // full vectors: plain loads
      const __m256 q = _mm256_loadu_ps(query + d);
      acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(r + d), q, acc0);
      acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(r + row_stride + d), q, acc1);
      acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(r + 2 * row_stride + d), q, acc2);
      acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(r + 3 * row_stride + d), q, acc3);
    }
    if (full < dim) {  // the tail: maskload never touches bytes past the row
      const __m256 q = _mm256_maskload_ps(query + full, tail);
      acc0 = _mm256_fmadd_ps(_mm256_maskload_ps(r + full, tail), q, acc0);
      acc1 = _mm256_fmadd_ps(_mm256_maskload_ps(r + row_stride + full, tail), q, acc1);
      acc2 = _mm256_fmadd_ps(_mm256_maskload_ps(r + 2 * row_stride + full, tail), q, acc2);
      acc3 = _mm256_fmadd_ps(_mm256_maskload_ps(r + 3 * row_stride + full, tail), q, acc3);
    }
    _mm_storeu_ps(out + i, _mm_add_ps(reduce4(acc0, acc1, acc2, acc3), b));
  }
  for (; i < n_rows; ++i) out[i] = reduce1(pair_acc<false>(query, rows + i * row_stride, nullptr, dim)) + bias;
}

SPLITNET_AVX2 inline std::uint64_t score_tile_f32_avx2(const float* users_t, index_t users_pad,
                                                       const float* rows, index_t n_rows, index_t dim,
                                                       index_t row_stride, float bias, const float* gates,
                                                       float* tile) {
  return over_candidate_blocks<4>(n_rows, avx2_detail::Tile{users_t, users_pad, rows, dim, row_stride, bias, gates, tile});
}

SPLITNET_AVX2 inline void score_pairs_f32_avx2(const float* a, index_t a_stride, const float* b,
                                               index_t b_stride, const float* weights, index_t n_pairs,
                                               index_t dim, float bias, float* out) {
  using namespace avx2_detail;
  if (weights == nullptr) {
    pairs<false>(a, a_stride, b, b_stride, weights, n_pairs, dim, bias, out);
  } else {
    pairs<true>(a, a_stride, b, b_stride, weights, n_pairs, dim, bias, out);
  }
}

SPLITNET_AVX2 inline bool not_below_bits_f32_avx2(const float* values, const float* gates, index_t n,
                                                std::uint64_t* bits) {
  std::uint64_t any = 0;
  for (index_t w = 0; w * 64 < n; ++w) {
    std::uint64_t word = 0;
    const index_t end = std::min(n, w * 64 + 64);
    index_t i = w * 64;
    for (; i + 8 <= end; i += 8) {
      const std::uint64_t hits = static_cast<unsigned>(_mm256_movemask_ps(
          _mm256_cmp_ps(_mm256_loadu_ps(values + i), _mm256_loadu_ps(gates + i), _CMP_NLT_UQ)));
      word |= hits << (i - w * 64);
    }
    for (; i < end; ++i) word |= std::uint64_t{!(values[i] < gates[i])} << (i - w * 64);
    bits[w] = word;
    any |= word;
  }
  return any != 0;
}

SPLITNET_AVX2 inline index_t first_not_below_f32_avx2(const float* values, index_t n, float gate) {
  const __m256 g = _mm256_set1_ps(gate);
  index_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const int hits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(values + i), g, _CMP_NLT_UQ));
    if (hits) return i + __builtin_ctz(static_cast<unsigned>(hits));
  }
  return i + first_not_below_f32_scalar(values + i, n - i, gate);
}

SPLITNET_AVX2 inline void max_lanes_f32_avx2(const float* values, index_t n, float* lanes) {
  __m256 lo = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), hi = lo;
  index_t i = 0;
  for (; i + 16 <= n; i += 16) {  // max(x, acc) keeps acc where x is NaN
    lo = _mm256_max_ps(_mm256_loadu_ps(values + i), lo);
    hi = _mm256_max_ps(_mm256_loadu_ps(values + i + 8), hi);
  }
  _mm256_storeu_ps(lanes, lo);
  _mm256_storeu_ps(lanes + 8, hi);
  for (index_t j = 0; i + j < n; ++j) lanes[j] = std::max(lanes[j], values[i + j]);
}

namespace avx2_detail {
template <bool Bf16>
SPLITNET_AVX2 inline __m256 widen8(const std::uint16_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if (Bf16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
  return _mm256_cvtph_ps(raw);
}

template <bool Bf16>
SPLITNET_AVX2 inline void rows_16bit(const float* query, const std::uint16_t* rows, index_t n_rows,
                                     index_t dim, index_t row_stride, float bias, float* out) {
  const index_t full = dim / 8 * 8;
  for (index_t i = 0; i < n_rows; i += 4) {
    const index_t count = std::min<index_t>(4, n_rows - i);
    prefetch_four_rows(rows, i, n_rows, dim, row_stride);
    const std::uint16_t* r[4];
    for (index_t j = 0; j < 4; ++j) r[j] = rows + (i + std::min<index_t>(j, count - 1)) * row_stride;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
           acc3 = _mm256_setzero_ps();
    for (index_t d = 0; d < full; d += 8) {
      const __m256 q = _mm256_loadu_ps(query + d);
      acc0 = _mm256_fmadd_ps(widen8<Bf16>(r[0] + d), q, acc0);
      acc1 = _mm256_fmadd_ps(widen8<Bf16>(r[1] + d), q, acc1);
      acc2 = _mm256_fmadd_ps(widen8<Bf16>(r[2] + d), q, acc2);
      acc3 = _mm256_fmadd_ps(widen8<Bf16>(r[3] + d), q, acc3);
    }
    if (full < dim) {  // the tail, zero-padded to eight values (the query's padding lanes are zero too)
      const __m256 q = _mm256_maskload_ps(query + full, tail_mask(dim - full));
      std::uint16_t padded[4][8] = {};
      for (index_t j = 0; j < 4; ++j) std::copy(r[j] + full, r[j] + dim, padded[j]);
      acc0 = _mm256_fmadd_ps(widen8<Bf16>(padded[0]), q, acc0);
      acc1 = _mm256_fmadd_ps(widen8<Bf16>(padded[1]), q, acc1);
      acc2 = _mm256_fmadd_ps(widen8<Bf16>(padded[2]), q, acc2);
      acc3 = _mm256_fmadd_ps(widen8<Bf16>(padded[3]), q, acc3);
    }
    float sums[4];
    _mm_storeu_ps(sums, reduce4(acc0, acc1, acc2, acc3));
    for (index_t j = 0; j < count; ++j) out[i + j] = sums[j] + bias;
  }
}

SPLITNET_AVX2 inline __m256i widen16(const std::int8_t* p) {  // 16 bytes sign-extended to 16 bits
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

SPLITNET_AVX2 inline std::int32_t dot_i8(const std::int8_t* query, const std::int8_t* row, index_t dim) {
  __m256i acc = _mm256_setzero_si256();
  index_t d = 0;
  for (; d + 16 <= dim; d += 16) acc = _mm256_add_epi32(acc, _mm256_madd_epi16(widen16(query + d), widen16(row + d)));
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  std::int32_t sum = _mm_cvtsi128_si32(s);
  for (; d < dim; ++d) sum += static_cast<std::int32_t>(query[d]) * row[d];
  return sum;
}

// The int8 cross tile without a byte dot product: every four-byte group of users and rows is
// split into its even bytes (0, 2) and odd bytes (1, 3), each sign-extended into two 16-bit
// halves of a word, so that vpmaddwd multiplies and pair-sums them exactly into int32 (no
// offset: the bytes stay signed). Users and the tile's rows are split once per call, into
// users_e / users_o (at g * pad + u) and rows_e / rows_o (at c * groups + g).
SPLITNET_AVX2 inline void split_even_odd(__m256i v, __m256i* even, __m256i* odd) {
  *even = _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 8);
  *odd = _mm256_srai_epi16(v, 8);
}

SPLITNET_AVX2 inline void split_words(const std::int32_t* words, index_t n, std::int32_t* even, std::int32_t* odd) {
  index_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i e, o;
    split_even_odd(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + i)), &e, &o);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(even + i), e);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(odd + i), o);
  }
  for (; i < n; ++i) {
    std::uint32_t w;
    std::memcpy(&w, words + i, 4);
    const auto half = [](std::uint32_t byte) { return static_cast<std::uint32_t>(static_cast<std::uint16_t>(
                                                   static_cast<std::int16_t>(static_cast<std::int8_t>(byte)))); };
    even[i] = static_cast<std::int32_t>(half(w & 0xFF) | half((w >> 16) & 0xFF) << 16);
    odd[i] = static_cast<std::int32_t>(half((w >> 8) & 0xFF) | half(w >> 24) << 16);
  }
}

// NC candidates x 8 NV users of the split words, scored as score_i8 does (the same bits).
template <int NC, int NV>
SPLITNET_AVX2 inline unsigned tile_block_i8(const std::int32_t* users_e, const std::int32_t* users_o,
                                            index_t users_pad, const float* user_scales, const std::int32_t* rows_e,
                                            const std::int32_t* rows_o, const float* row_scales, index_t groups,
                                            float bias, const float* gates, float* tile) {
  __m256i acc[NC][NV];
  for (int c = 0; c < NC; ++c)
    for (int v = 0; v < NV; ++v) acc[c][v] = _mm256_setzero_si256();
  for (index_t g = 0; g < groups; ++g) {
    __m256i ue[NV], uo[NV];
    for (int v = 0; v < NV; ++v) {
      ue[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(users_e + g * users_pad + 8 * v));
      uo[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(users_o + g * users_pad + 8 * v));
    }
    for (int c = 0; c < NC; ++c) {
      const __m256i re = _mm256_set1_epi32(rows_e[c * groups + g]), ro = _mm256_set1_epi32(rows_o[c * groups + g]);
      for (int v = 0; v < NV; ++v)
        acc[c][v] = _mm256_add_epi32(acc[c][v], _mm256_add_epi32(_mm256_madd_epi16(ue[v], re),
                                                                 _mm256_madd_epi16(uo[v], ro)));
    }
  }
  const __m256 b = _mm256_set1_ps(bias);
  unsigned hits = 0;
  for (int c = 0; c < NC; ++c) {
    int any = 0;
    for (int v = 0; v < NV; ++v) {
      __m256 product = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[c][v]), _mm256_mul_ps(_mm256_loadu_ps(user_scales + 8 * v),
                                                                                 _mm256_set1_ps(row_scales[c])));
      SPLITNET_KERNELS_NO_CONTRACTION(product);
      const __m256 score = _mm256_add_ps(product, b);
      _mm256_storeu_ps(tile + c * users_pad + 8 * v, score);
      if (gates != nullptr)
        any |= _mm256_movemask_ps(_mm256_cmp_ps(score, _mm256_loadu_ps(gates + 8 * v), _CMP_NLT_UQ));
    }
    hits |= static_cast<unsigned>(any != 0) << c;
  }
  return hits;
}

// score_tile_i8's operands, split, scored three candidates at a time (over_candidate_blocks): 3 x 2
// accumulators with the users' four split vectors fit the 16 registers (4 x 2 spilled: 1.6x slower).
struct TileI8 {
  const std::int32_t *users_e, *users_o;
  index_t users_pad;
  const float* user_scales;
  const std::int32_t *rows_e, *rows_o;
  const float* row_scales;
  index_t groups;
  float bias;
  const float* gates;
  float* tile;

  template <int NC>
  SPLITNET_AVX2 unsigned columns(index_t c) const {
    unsigned hits = 0;
    for (index_t u = 0; u < users_pad; u += 16)  // users_pad is a multiple of 16
      hits |= tile_block_i8<NC, 2>(users_e + u, users_o + u, users_pad, user_scales + u, rows_e + c * groups,
                                   rows_o + c * groups, row_scales + c, groups, bias, gates ? gates + u : nullptr,
                                   tile + c * users_pad + u);
    return hits;
  }
};
}  // namespace avx2_detail

SPLITNET_AVX2 inline void score_rows_f16_avx2(const float* query, const std::uint16_t* rows, index_t n_rows,
                                              index_t dim, index_t row_stride, float bias, float* out) {
  avx2_detail::rows_16bit<false>(query, rows, n_rows, dim, row_stride, bias, out);
}

SPLITNET_AVX2 inline void score_rows_bf16_avx2(const float* query, const std::uint16_t* rows, index_t n_rows,
                                               index_t dim, index_t row_stride, float bias, float* out) {
  avx2_detail::rows_16bit<true>(query, rows, n_rows, dim, row_stride, bias, out);
}

SPLITNET_AVX2 inline void widen_f16_avx2(const std::uint16_t* in, index_t n, float* out) {
  index_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, avx2_detail::widen8<false>(in + i));
  widen_f16_scalar(in + i, n - i, out + i);
}

SPLITNET_AVX2 inline void widen_bf16_avx2(const std::uint16_t* in, index_t n, float* out) {
  index_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, avx2_detail::widen8<true>(in + i));
  widen_bf16_scalar(in + i, n - i, out + i);
}

// 32 products q[d] r[d] pair-summed into 16-bit lanes and those into 8 int32 lanes, exactly:
// vpmaddubsw multiplies unsigned bytes |r| by signed bytes q * sign(r) (q in [-127, 127], so
// the sign flip cannot overflow; |r| <= 128), and a pair of products stays within
// 2 * 128 * 127 < 2^15, so the saturating sum never saturates.
SPLITNET_AVX2 inline __m256i dot32_i8(__m256i q, const std::int8_t* row) {
  const __m256i r = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row));
  const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(r), _mm256_sign_epi8(q, r));
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

// Four rows at a time share each query vector and one reduction (exact int32 sums), and end
// with score_i8's float operations four lanes at a time (the same roundings, so the same bits).
SPLITNET_AVX2 inline void score_rows_i8_avx2(const std::int8_t* query, float query_scale, const std::int8_t* rows,
                                             const float* row_scales, index_t n_rows, index_t dim,
                                             index_t row_stride, float bias, float* out) {
  using namespace avx2_detail;
  const index_t full32 = dim / 32 * 32, full = dim / 16 * 16;
  index_t i = 0;
  for (; i + 4 <= n_rows; i += 4) {
    const std::int8_t* r = rows + i * row_stride;
    prefetch_four_rows(rows, i, n_rows, dim, row_stride);
    __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (index_t d = 0; d < full32; d += 32) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(query + d));
      acc0 = _mm256_add_epi32(acc0, dot32_i8(q, r + d));
      acc1 = _mm256_add_epi32(acc1, dot32_i8(q, r + row_stride + d));
      acc2 = _mm256_add_epi32(acc2, dot32_i8(q, r + 2 * row_stride + d));
      acc3 = _mm256_add_epi32(acc3, dot32_i8(q, r + 3 * row_stride + d));
    }
    if (full > full32) {  // 16 more: widened to 16 bits
      const __m256i q = widen16(query + full32);
      acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(q, widen16(r + full32)));
      acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(q, widen16(r + row_stride + full32)));
      acc2 = _mm256_add_epi32(acc2, _mm256_madd_epi16(q, widen16(r + 2 * row_stride + full32)));
      acc3 = _mm256_add_epi32(acc3, _mm256_madd_epi16(q, widen16(r + 3 * row_stride + full32)));
    }
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(acc0, acc1), _mm256_hadd_epi32(acc2, acc3));
    __m128i sums = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    if (full < dim) {
      alignas(16) std::int32_t tail[4];
      _mm_store_si128(reinterpret_cast<__m128i*>(tail), sums);
      for (index_t j = 0; j < 4; ++j)
        for (index_t d = full; d < dim; ++d) tail[j] += static_cast<std::int32_t>(query[d]) * r[j * row_stride + d];
      sums = _mm_load_si128(reinterpret_cast<const __m128i*>(tail));
    }
    __m128 product = _mm_mul_ps(_mm_cvtepi32_ps(sums), _mm_mul_ps(_mm_set1_ps(query_scale), _mm_loadu_ps(row_scales + i)));
    SPLITNET_KERNELS_NO_CONTRACTION(product);  // not fused into the add
    _mm_storeu_ps(out + i, _mm_add_ps(product, _mm_set1_ps(bias)));
  }
  for (; i < n_rows; ++i)
    out[i] = score_i8(static_cast<float>(dot_i8(query, rows + i * row_stride, dim)), query_scale, row_scales[i], bias);
}

// The heads a block of 16 rows at a time: each group's words and the query's split into even
// and odd bytes (split_even_odd), pair-summed by vpmaddwd into exact int32 sums, 8 rows a
// register, then score_i8's operations and + rest * rest norm; the blocks kPrefetchBytes ahead
// asked for. A last block of fewer rows is whole in memory; its scores go through a copy.
SPLITNET_AVX2 inline void score_heads_i8_avx2(const std::int8_t* query, float query_scale, const std::int8_t* blocks,
                                             float rest, index_t n_rows, index_t width, float bias, float* out) {
  using namespace avx2_detail;
  const index_t block_bytes = 16 * width + 128, ahead = std::max<index_t>(1, kPrefetchBytes / block_bytes);
  for (index_t i = 0; i < n_rows; i += 16) {
    const std::int8_t* block = blocks + (i / 16) * block_bytes;
    if (i + 16 * ahead < n_rows) prefetch_bytes(block + ahead * block_bytes, block_bytes);
    __m256i acc[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (index_t g = 0; g < width / 4; ++g) {
      std::int32_t word;
      std::memcpy(&word, query + 4 * g, 4);
      __m256i query_even, query_odd, even, odd;
      split_even_odd(_mm256_set1_epi32(word), &query_even, &query_odd);
      for (int h = 0; h < 2; ++h) {
        split_even_odd(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + g * 64 + 32 * h)), &even, &odd);
        acc[h] = _mm256_add_epi32(acc[h], _mm256_add_epi32(_mm256_madd_epi16(even, query_even),
                                                           _mm256_madd_epi16(odd, query_odd)));
      }
    }
    const auto* scales = reinterpret_cast<const float*>(block + 16 * width);
    alignas(32) float scores[16];
    float* target = n_rows - i >= 16 ? out + i : scores;
    for (int h = 0; h < 2; ++h) {
      __m256 product = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[h]),
                                     _mm256_mul_ps(_mm256_set1_ps(query_scale), _mm256_loadu_ps(scales + 8 * h)));
      SPLITNET_KERNELS_NO_CONTRACTION(product);
      __m256 extra = _mm256_mul_ps(_mm256_set1_ps(rest), _mm256_loadu_ps(scales + 16 + 8 * h));
      SPLITNET_KERNELS_NO_CONTRACTION(extra);
      _mm256_storeu_ps(target + 8 * h, _mm256_add_ps(_mm256_add_ps(product, _mm256_set1_ps(bias)), extra));
    }
    if (target == scores) std::memcpy(out + i, scores, static_cast<size_t>(n_rows - i) * 4);
  }
}

SPLITNET_AVX2 inline std::uint64_t score_tile_i8_avx2(const std::int32_t* users_t, index_t users_pad,
                                                      const std::int32_t*, const float* user_scales,
                                                      const std::int8_t* rows, const float* row_scales, index_t n_rows,
                                                      index_t dim, index_t row_stride, float bias, const float* gates,
                                                      float* tile) {
  using namespace avx2_detail;
  const index_t groups = (dim + 3) / 4, user_words = groups * users_pad;
  thread_local std::vector<std::int32_t> split;  // users' even / odd words, then the rows'
  split.resize(static_cast<size_t>(2 * user_words + 2 * n_rows * groups));
  std::int32_t *users_e = split.data(), *users_o = users_e + user_words;
  std::int32_t *rows_e = users_o + user_words, *rows_o = rows_e + n_rows * groups;
  split_words(users_t, user_words, users_e, users_o);
  const index_t full = dim / 4;
  for (index_t c = 0; c < n_rows; ++c) {  // whole groups in place; the last one zero past dim, as the users' are
    const std::int8_t* row = rows + c * row_stride;
    split_words(reinterpret_cast<const std::int32_t*>(row), full, rows_e + c * groups, rows_o + c * groups);
    if (full < groups) {
      std::int32_t last = 0;
      std::memcpy(&last, row + 4 * full, static_cast<size_t>(dim - 4 * full));
      split_words(&last, 1, rows_e + c * groups + full, rows_o + c * groups + full);
    }
  }
  return over_candidate_blocks<3>(
      n_rows, TileI8{users_e, users_o, users_pad, user_scales, rows_e, rows_o, row_scales, groups, bias, gates, tile});
}

// Sums 64-byte lines with four independent vector accumulators, so the loop is bound by memory,
// not by the adds (a baseline build's 16-byte adds fall short of DRAM bandwidth here), and asks
// for lines 4 KiB ahead as the streaming kernels do.
SPLITNET_AVX2 inline std::uint64_t sum_u64_avx2(const std::uint64_t* words, index_t n) {
  __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  index_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const auto* p = reinterpret_cast<const __m256i*>(words + i);
    if (i + 528 <= n) prefetch_bytes(words + i + 512, 128);
    acc0 = _mm256_add_epi64(acc0, _mm256_loadu_si256(p));
    acc1 = _mm256_add_epi64(acc1, _mm256_loadu_si256(p + 1));
    acc2 = _mm256_add_epi64(acc2, _mm256_loadu_si256(p + 2));
    acc3 = _mm256_add_epi64(acc3, _mm256_loadu_si256(p + 3));
  }
  alignas(32) std::uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_add_epi64(_mm256_add_epi64(acc0, acc1), _mm256_add_epi64(acc2, acc3)));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3] + sum_u64_scalar(words + i, n - i);
}

inline constexpr KernelTable kAvx2Table = [] {
  KernelTable t{};
  t.isa = Isa::avx2;
  SPLITNET_KERNELS_FILL(t, score_rows_f32, avx2);
  SPLITNET_KERNELS_FILL(t, score_tile_f32, avx2);
  SPLITNET_KERNELS_FILL(t, not_below_bits_f32, avx2);
  SPLITNET_KERNELS_FILL(t, first_not_below_f32, avx2);
  SPLITNET_KERNELS_FILL(t, max_lanes_f32, avx2);
  SPLITNET_KERNELS_FILL(t, score_rows_f16, avx2);
  SPLITNET_KERNELS_FILL(t, score_rows_bf16, avx2);
  SPLITNET_KERNELS_FILL(t, widen_f16, avx2);
  SPLITNET_KERNELS_FILL(t, widen_bf16, avx2);
  SPLITNET_KERNELS_FILL(t, score_rows_i8, avx2);
  SPLITNET_KERNELS_FILL(t, score_tile_i8, avx2);
  SPLITNET_KERNELS_FILL(t, score_heads_i8, avx2);
  SPLITNET_KERNELS_FILL(t, score_pairs_f32, avx2);
  SPLITNET_KERNELS_FILL(t, sum_u64, avx2);
  return t;
}();

}  // namespace splitnet
#endif  // SPLITNET_KERNELS_HAVE_X86
