// AVX-512 (F, VL, DQ, BW) kernels: Skylake-SP and later Xeons, Zen 4 and Zen 5. Sixteen lanes and
// 32 registers allow 8 candidates x 32 users of accumulators in the cross tile. Dimension tails
// use masked loads, so no row is read past its end.
#pragma once
#include <algorithm>

#include "avx2.h"
#include "isa.h"
#include "order.h"
#include "tile_loop.h"
#include "tuning.h"

#if SPLITNET_KERNELS_HAVE_X86
#include <immintrin.h>

#define SPLITNET_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,fma,avx2")))

// GCC 12's own AVX-512 headers trip -Wmaybe-uninitialized (_mm256_undefined_pd); not our code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace splitnet {
namespace avx512_detail {

SPLITNET_AVX512 inline __mmask16 tail_mask(index_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xFFFF)
                         : static_cast<__mmask16>((1u << remaining) - 1u);
}

SPLITNET_AVX512 inline __m256 half(__m512 x) {
  return _mm256_add_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1));
}

// Sums of four accumulators, as the four lanes of an SSE register. Single rows go through it
// too (reduce1), so a row's score never depends on its neighbours.
SPLITNET_AVX512 inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(half(a), half(b)), _mm256_hadd_ps(half(c), half(d)));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

SPLITNET_AVX512 inline float reduce1(__m512 a) {
  const __m512 zero = _mm512_setzero_ps();
  return _mm_cvtss_f32(reduce4(a, zero, zero, zero));
}

// sum_d a[d] * w[d] * b[d] (Weighted) or sum_d a[d] * b[d], as a vector of partial sums.
// Masked loads are slow on some cores (Zen), so only the tail uses one.
template <bool Weighted>
SPLITNET_AVX512 inline __m512 pair_acc(const float* a, const float* b, const float* w, index_t dim) {
  __m512 acc = _mm512_setzero_ps();
  index_t d = 0;
  for (; d + 16 <= dim; d += 16) {
    __m512 x = _mm512_loadu_ps(a + d);
    if (Weighted) x = _mm512_mul_ps(x, _mm512_loadu_ps(w + d));
    acc = _mm512_fmadd_ps(x, _mm512_loadu_ps(b + d), acc);
  }
  if (d < dim) {
    const __mmask16 m = tail_mask(dim - d);
    __m512 x = _mm512_maskz_loadu_ps(m, a + d);
    if (Weighted) x = _mm512_mul_ps(x, _mm512_maskz_loadu_ps(m, w + d));
    acc = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, b + d), acc);
  }
  return acc;
}

// The four rows are read in increasing order (named sums: GCC evaluates a call's arguments right
// to left, which read them backwards) and with no software prefetch: on Zen 4 the hardware
// prefetcher then streams both arrays at the read floor (0.96-0.97 of it, 1M pairs at n = 64,
// timed in turns), against 0.70-0.76 reading backwards and 0.76-0.90 forwards with the prefetch
// (bench/RESULTS.md, W5).
template <bool Weighted>
SPLITNET_AVX512 inline void pairs(const float* a, index_t a_stride, const float* b, index_t b_stride,
                                  const float* w, index_t n_pairs, index_t dim, float bias, float* out) {
  const __m128 bv = _mm_set1_ps(bias);
  index_t i = 0;
  for (; i + 4 <= n_pairs; i += 4) {
    const float* x = a + i * a_stride;
    const float* y = b + i * b_stride;
    const __m512 s0 = pair_acc<Weighted>(x, y, w, dim);
    const __m512 s1 = pair_acc<Weighted>(x + a_stride, y + b_stride, w, dim);
    const __m512 s2 = pair_acc<Weighted>(x + 2 * a_stride, y + 2 * b_stride, w, dim);
    const __m512 s3 = pair_acc<Weighted>(x + 3 * a_stride, y + 3 * b_stride, w, dim);
    _mm_storeu_ps(out + i, _mm_add_ps(reduce4(s0, s1, s2, s3), bv));
  }
  for (; i < n_pairs; ++i)
    out[i] = reduce1(pair_acc<Weighted>(a + i * a_stride, b + i * b_stride, w, dim)) + bias;
}

// Stores a finished block of scores (NC candidates x 16 NV users) into the tile; with gates, bit c
// of the result says whether candidate c reaches some user's gate. Shared by the float32 and the
// int8 (avx512vnni.h) cross tiles.
template <int NC, int NV>
SPLITNET_AVX512 inline unsigned store_block(const __m512 (&scores)[NC][NV], index_t users_pad, const float* gates,
                                            float* tile) {
  for (int c = 0; c < NC; ++c)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(tile + c * users_pad + 16 * v, scores[c][v]);
  if (gates == nullptr) return 0;
  __m512 gate[NV];
  for (int v = 0; v < NV; ++v) gate[v] = _mm512_loadu_ps(gates + 16 * v);
  unsigned hits = 0;
  for (int c = 0; c < NC; ++c) {
    __mmask16 any = 0;
    for (int v = 0; v < NV; ++v) any |= _mm512_cmp_ps_mask(scores[c][v], gate[v], _CMP_NLT_UQ);
    hits |= static_cast<unsigned>(any != 0) << c;
  }
  return hits;
}

// NC candidates x 16 NV users in the one summation order (order.h), before the bias: lane j of
// the eight is a pass over d = j, j + 8, ..., its sums kept in `lanes`, then the lanes' tree (as
// avx2.h's tile, on sixteen users per register). value(c, d) is candidate c's value d.
template <int NC, int NV, class Value>
SPLITNET_AVX512 inline void lane_tree(const float* users_t, index_t users_pad, index_t dim, Value value,
                                      __m512 (&sums)[NC][NV]) {
  __m512 lanes[kSumLanes][NC][NV];
  const index_t padded = (dim + kSumLanes - 1) / kSumLanes * kSumLanes;
  for (index_t j = 0; j < kSumLanes; ++j) {
    __m512 acc[NC][NV];
    for (int c = 0; c < NC; ++c)
      for (int v = 0; v < NV; ++v) acc[c][v] = _mm512_setzero_ps();
    for (index_t d = j; d < dim; d += kSumLanes) {
      __m512 column[NV];
      for (int v = 0; v < NV; ++v) column[v] = _mm512_loadu_ps(users_t + d * users_pad + 16 * v);
      for (int c = 0; c < NC; ++c) {
        const __m512 broadcast = _mm512_set1_ps(value(c, d));
        for (int v = 0; v < NV; ++v) acc[c][v] = _mm512_fmadd_ps(broadcast, column[v], acc[c][v]);
      }
    }
    const bool zero_term = padded - kSumLanes + j >= dim;  // lane j's last term is past dim
    for (int c = 0; c < NC; ++c)
      for (int v = 0; v < NV; ++v)
        lanes[j][c][v] = zero_term ? _mm512_add_ps(acc[c][v], _mm512_setzero_ps()) : acc[c][v];
  }
  for (int c = 0; c < NC; ++c)
    for (int v = 0; v < NV; ++v) {
      const __m512 low = _mm512_add_ps(_mm512_add_ps(lanes[0][c][v], lanes[1][c][v]),
                                       _mm512_add_ps(lanes[2][c][v], lanes[3][c][v]));
      const __m512 high = _mm512_add_ps(_mm512_add_ps(lanes[4][c][v], lanes[5][c][v]),
                                        _mm512_add_ps(lanes[6][c][v], lanes[7][c][v]));
      sums[c][v] = _mm512_add_ps(low, high);
    }
}

// One block of NC candidates x 16 NV users, each score in the one summation order, + bias.
template <int NC, int NV>
SPLITNET_AVX512 inline unsigned tile_block(const float* users_t, index_t users_pad, const float* rows,
                                           index_t dim, index_t row_stride, float bias,
                                           const float* gates, float* tile) {
  __m512 sums[NC][NV];
  lane_tree<NC, NV>(users_t, users_pad, dim,
                    [&](int c, index_t d) SPLITNET_KERNELS_LAMBDA_INLINE { return rows[c * row_stride + d]; }, sums);
  const __m512 b = _mm512_set1_ps(bias);
  for (int c = 0; c < NC; ++c)
    for (int v = 0; v < NV; ++v) sums[c][v] = _mm512_add_ps(sums[c][v], b);
  return store_block<NC, NV>(sums, users_pad, gates, tile);
}

template <int NC>
SPLITNET_AVX512 inline unsigned tile_columns(const float* users_t, index_t users_pad, const float* rows,
                                             index_t dim, index_t row_stride, float bias,
                                             const float* gates, float* tile) {
  unsigned hits = 0;
  index_t u = 0;
  for (; users_pad - u >= 48 && users_pad - u != 64; u += 48)  // 64 left: two of 32, not 48 + 16
    hits |= tile_block<NC, 3>(users_t + u, users_pad, rows, dim, row_stride, bias, gates ? gates + u : nullptr,
                              tile + u);
  for (; u + 32 <= users_pad; u += 32)
    hits |= tile_block<NC, 2>(users_t + u, users_pad, rows, dim, row_stride, bias, gates ? gates + u : nullptr,
                              tile + u);
  if (u < users_pad)
    hits |= tile_block<NC, 1>(users_t + u, users_pad, rows, dim, row_stride, bias, gates ? gates + u : nullptr,
                              tile + u);
  return hits;
}

// score_tile_f32's operands, scored eight candidates at a time (over_candidate_blocks).
struct Tile {
  const float* users_t;
  index_t users_pad;
  const float* rows;
  index_t dim, row_stride;
  float bias;
  const float* gates;
  float* tile;

  template <int NC>
  SPLITNET_AVX512 unsigned columns(index_t c) const {
    return tile_columns<NC>(users_t, users_pad, rows + c * row_stride, dim, row_stride, bias, gates, tile + c * users_pad);
  }
};

// Full pairs, fused: P users' folds x = u S over the Q column blocks of 16 from column c0, as
// the tile folds them (lane_tree, then + 0 for the tile's bias), each block dotted with the ad at
// once, continuing the pair's chain (pair_acc: one FMA chain over blocks of 16 in increasing
// order, the tail masked). x stays in registers: U S is never written. P users share each column
// of S; 16 accumulators for P = Q = 4. Not inlined: inlined into the pair loop, GCC 12 kept
// three of the accumulators on the stack (76 against 60 ms on 1M pairs through the module, Zen 4).
template <int P, int Q>
SPLITNET_AVX512 __attribute__((noinline)) void fold_and_dot(const float* s_t, index_t pad, index_t c0, const float* const (&users)[P],
                                         const float* const (&ads)[P], index_t dim, __m512 (&dots)[P]) {
  __m512 folded[P][Q];
  lane_tree<P, Q>(s_t + c0, pad, dim, [&](int p, index_t d) SPLITNET_KERNELS_LAMBDA_INLINE { return users[p][d]; },
                  folded);
  for (int p = 0; p < P; ++p)
    for (int q = 0; q < Q; ++q) {
      const __m512 x = _mm512_add_ps(folded[p][q], _mm512_setzero_ps());
      const index_t column = c0 + 16 * q;
      if (column + 16 <= dim) {
        dots[p] = _mm512_fmadd_ps(x, _mm512_loadu_ps(ads[p] + column), dots[p]);
      } else {
        const __mmask16 m = tail_mask(dim - column);
        dots[p] = _mm512_fmadd_ps(_mm512_maskz_mov_ps(m, x), _mm512_maskz_loadu_ps(m, ads[p] + column), dots[p]);
      }
    }
}

// P pairs' dot chains over every column block of S, 64 columns (four blocks) at a time.
template <int P>
SPLITNET_AVX512 inline void full_pairs(const float* s_t, index_t pad, const float* const (&users)[P],
                                       const float* const (&ads)[P], index_t dim, __m512 (&dots)[P]) {
  for (int p = 0; p < P; ++p) dots[p] = _mm512_setzero_ps();
  for (index_t c0 = 0; c0 < pad; c0 += 64) {
    switch (std::min<index_t>(4, (pad - c0) / 16)) {
      case 4: fold_and_dot<P, 4>(s_t, pad, c0, users, ads, dim, dots); break;
      case 3: fold_and_dot<P, 3>(s_t, pad, c0, users, ads, dim, dots); break;
      case 2: fold_and_dot<P, 2>(s_t, pad, c0, users, ads, dim, dots); break;
      default: fold_and_dot<P, 1>(s_t, pad, c0, users, ads, dim, dots); break;
    }
  }
}

}  // namespace avx512_detail

SPLITNET_AVX512 inline std::uint64_t score_tile_f32_avx512(const float* users_t, index_t users_pad,
                                                           const float* rows, index_t n_rows, index_t dim,
                                                           index_t row_stride, float bias, const float* gates,
                                                           float* tile) {
  return over_candidate_blocks<8>(n_rows,
                                  avx512_detail::Tile{users_t, users_pad, rows, dim, row_stride, bias, gates, tile});
}

SPLITNET_AVX512 inline void score_pairs_f32_avx512(const float* a, index_t a_stride, const float* b,
                                                   index_t b_stride, const float* weights,
                                                   index_t n_pairs, index_t dim, float bias, float* out) {
  using namespace avx512_detail;
  if (weights == nullptr) {
    pairs<false>(a, a_stride, b, b_stride, weights, n_pairs, dim, bias, out);
  } else {
    pairs<true>(a, a_stride, b, b_stride, weights, n_pairs, dim, bias, out);
  }
}

SPLITNET_AVX512 inline bool not_below_bits_f32_avx512(const float* values, const float* gates, index_t n,
                                                    std::uint64_t* bits) {
  using namespace avx512_detail;
  std::uint64_t any = 0;
  for (index_t w = 0; w * 64 < n; ++w) {
    std::uint64_t word = 0;
    for (index_t i = w * 64; i < std::min(n, w * 64 + 64); i += 16) {
      const __mmask16 m = tail_mask(n - i);
      const std::uint64_t hits = _mm512_mask_cmp_ps_mask(m, _mm512_maskz_loadu_ps(m, values + i),
                                                         _mm512_maskz_loadu_ps(m, gates + i), _CMP_NLT_UQ);
      word |= hits << (i - w * 64);
    }
    bits[w] = word;
    any |= word;
  }
  return any != 0;
}

SPLITNET_AVX512 inline index_t first_not_below_f32_avx512(const float* values, index_t n, float gate) {
  using namespace avx512_detail;
  const __m512 g = _mm512_set1_ps(gate);
  for (index_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const unsigned hits = _mm512_mask_cmp_ps_mask(m, _mm512_maskz_loadu_ps(m, values + i), g, _CMP_NLT_UQ);
    if (hits) return i + __builtin_ctz(hits);
  }
  return n;
}

SPLITNET_AVX512 inline void max_lanes_f32_avx512(const float* values, index_t n, float* lanes) {
  using namespace avx512_detail;
  __m512 acc = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  index_t i = 0;
  for (; i + 16 <= n; i += 16) acc = _mm512_max_ps(_mm512_loadu_ps(values + i), acc);  // NaN keeps acc
  if (i < n) acc = _mm512_mask_max_ps(acc, tail_mask(n - i), _mm512_maskz_loadu_ps(tail_mask(n - i), values + i), acc);
  _mm512_storeu_ps(lanes, acc);
}

namespace avx512_detail {
// Sixteen stored values widened exactly to float32.
template <bool Bf16>
SPLITNET_AVX512 inline __m512 widen16(const std::uint16_t* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  if (Bf16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
  return _mm512_cvtph_ps(raw);
}

}  // namespace avx512_detail

SPLITNET_AVX512 inline void widen_f16_avx512(const std::uint16_t* in, index_t n, float* out) {
  index_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, avx512_detail::widen16<false>(in + i));
  widen_f16_scalar(in + i, n - i, out + i);
}

SPLITNET_AVX512 inline void widen_bf16_avx512(const std::uint16_t* in, index_t n, float* out) {
  index_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, avx512_detail::widen16<true>(in + i));
  widen_bf16_scalar(in + i, n - i, out + i);
}

// Four pairs at a time (reduce4, as score_pairs_f32 ends them), the rows prefetched into L2
// (kComputeBoundPrefetchBytes); the last pairs one by one (reduce1, the same lane's bits).
SPLITNET_AVX512 inline void score_pairs_full_f32_avx512(const float* s_t, index_t pad, const float* a,
                                                        index_t a_stride, const float* b, index_t b_stride,
                                                        index_t n_pairs, index_t dim, float bias, float* out) {
  using namespace avx512_detail;
  const __m128 bv = _mm_set1_ps(bias);
  index_t i = 0;
  for (; i + 4 <= n_pairs; i += 4) {
    prefetch_four_rows<2>(a, i, n_pairs, dim, a_stride, kComputeBoundPrefetchBytes);
    prefetch_four_rows<2>(b, i, n_pairs, dim, b_stride, kComputeBoundPrefetchBytes);
    const float* const users[4] = {a + i * a_stride, a + (i + 1) * a_stride, a + (i + 2) * a_stride,
                                   a + (i + 3) * a_stride};
    const float* const ads[4] = {b + i * b_stride, b + (i + 1) * b_stride, b + (i + 2) * b_stride,
                                 b + (i + 3) * b_stride};
    __m512 dots[4];
    full_pairs<4>(s_t, pad, users, ads, dim, dots);
    _mm_storeu_ps(out + i, _mm_add_ps(reduce4(dots[0], dots[1], dots[2], dots[3]), bv));
  }
  for (; i < n_pairs; ++i) {
    const float* const users[1] = {a + i * a_stride};
    const float* const ads[1] = {b + i * b_stride};
    __m512 dots[1];
    full_pairs<1>(s_t, pad, users, ads, dim, dots);
    out[i] = reduce1(dots[0]) + bias;
  }
}

inline constexpr KernelTable kAvx512Table = [] {
  KernelTable t{};
  t.isa = Isa::avx512;
  // streaming rows: the avx2 kernels, whose eight lanes are the one summation order (order.h);
  // the scan is bound by memory, not by the width of its FMAs
  SPLITNET_KERNELS_FILL(t, score_rows_f32, avx2);
  SPLITNET_KERNELS_FILL(t, score_tile_f32, avx512);
  SPLITNET_KERNELS_FILL(t, not_below_bits_f32, avx512);
  SPLITNET_KERNELS_FILL(t, first_not_below_f32, avx512);
  SPLITNET_KERNELS_FILL(t, max_lanes_f32, avx512);
  SPLITNET_KERNELS_FILL(t, score_rows_f16, avx2);
  SPLITNET_KERNELS_FILL(t, score_rows_bf16, avx2);
  SPLITNET_KERNELS_FILL(t, widen_f16, avx512);
  SPLITNET_KERNELS_FILL(t, widen_bf16, avx512);
  SPLITNET_KERNELS_FILL(t, score_rows_i8, avx2);  // vpmaddubsw: on Sapphire Rapids 2x the 16-bit widening
  SPLITNET_KERNELS_FILL(t, score_tile_i8, avx2);  // the byte dot product is VNNI's (avx512vnni.h)
  SPLITNET_KERNELS_FILL(t, score_heads_i8, avx2);  // likewise
  SPLITNET_KERNELS_FILL(t, score_pairs_f32, avx512);
  SPLITNET_KERNELS_FILL(t, score_pairs_full_f32, avx512);
  SPLITNET_KERNELS_FILL(t, sum_u64, avx2);  // reading memory: 32-byte loads already saturate it
  return t;
}();

}  // namespace splitnet

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // SPLITNET_KERNELS_HAVE_X86
