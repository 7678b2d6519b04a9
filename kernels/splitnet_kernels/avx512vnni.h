// AVX-512 with VNNI: the avx512 table, except the int8 cross tile, which uses vpdpbusd (its
// integer sums are exact, so the bits are every ISA's). No bfloat16 instruction runs here (the
// level's old name, avx512bf16, is still accepted: dispatch.h), but its CPU test and target still
// ask for BF16, as they did under that name: Zen 4 / Zen 5, Sapphire Rapids and later. Rows
// stream through the avx2 kernels: bfloat16 widens by shift, as vdpbf16ps sums pairs inside the
// instruction, which no other path can match bit for bit, and on Sapphire Rapids it was the
// slower one (6.3-7.0 ms against 3.7 ms on 1M rows); int8 rows go through vpmaddubsw, which on
// Sapphire Rapids scored one user x 1M in 3.4 ms against VNNI's 4.8 ms (bench/RESULTS.md).
#pragma once
#include "avx512.h"
#include "isa.h"
#include "tile_loop.h"

#if SPLITNET_KERNELS_HAVE_X86
#define SPLITNET_AVX512VNNI \
  __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx512vnni,fma,avx2")))

#if defined(__GNUC__) && !defined(__clang__)  // as in avx512.h: GCC 12's headers, not our code
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"  // _mm512_cvtepi32_ps's _mm512_undefined_ps
#endif

namespace splitnet {

namespace avx512vnni_detail {
// Adds group g (bytes 4 g .. 4 g + 3) of NC rows against 16 NV users: each row's four bytes,
// sign-flipped to unsigned and broadcast, against the users' signed words (the flip's 128 * sum
// comes off through the offsets). The last group of a row whose dim is not a multiple of 4
// reads only its `bytes` bytes.
template <int NC, int NV>
SPLITNET_AVX512VNNI inline void dot_group(__m512i (&acc)[NC][NV], const std::int32_t* users_g,
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
SPLITNET_AVX512VNNI inline unsigned tile_block_i8(const std::int32_t* users_t, index_t users_pad,
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
      SPLITNET_KERNELS_NO_CONTRACTION(product);
      scores[c][v] = _mm512_add_ps(product, b);
    }
  }
  return avx512_detail::store_block<NC, NV>(scores, users_pad, gates, tile);
}

template <int NC>
SPLITNET_AVX512VNNI inline unsigned tile_columns_i8(const std::int32_t* users_t, index_t users_pad,
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
  SPLITNET_AVX512VNNI unsigned columns(index_t c) const {
    return tile_columns_i8<NC>(users_t, users_pad, offsets, user_scales, rows + c * row_stride, row_scales + c, dim,
                               row_stride, bias, gates, tile + c * users_pad);
  }
};
}  // namespace avx512vnni_detail

SPLITNET_AVX512VNNI inline std::uint64_t score_tile_i8_avx512vnni(const std::int32_t* users_t, index_t users_pad,
                                                                  const std::int32_t* offsets,
                                                                  const float* user_scales, const std::int8_t* rows,
                                                                  const float* row_scales, index_t n_rows,
                                                                  index_t dim, index_t row_stride, float bias,
                                                                  const float* gates, float* tile) {
  return over_candidate_blocks<8>(n_rows, avx512vnni_detail::TileI8{users_t, users_pad, offsets, user_scales, rows,
                                                                    row_scales, dim, row_stride, bias, gates, tile});
}

// The heads with vpdpbusd, 16 rows a register: the rows' bytes flipped to unsigned against the
// query word's signed bytes, 128 * the query's sum taken off (exact int32 sums, as the tile's);
// the blocks kPrefetchBytes ahead asked for; a last block's scores written through a mask.
SPLITNET_AVX512VNNI inline void score_heads_i8_avx512vnni(const std::int8_t* query, float query_scale,
                                                          const std::int8_t* blocks, float rest, index_t n_rows,
                                                          index_t width, float bias, float* out) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  std::int32_t offset = 0;
  for (index_t d = 0; d < width; ++d) offset += 128 * query[d];
  const __m512 scale = _mm512_set1_ps(query_scale), b = _mm512_set1_ps(bias), r = _mm512_set1_ps(rest);
  const index_t block_bytes = 16 * width + 128, ahead = std::max<index_t>(1, kPrefetchBytes / block_bytes);
  for (index_t i = 0; i < n_rows; i += 16) {
    const std::int8_t* block = blocks + (i / 16) * block_bytes;
    if (i + 16 * ahead < n_rows) prefetch_bytes(block + ahead * block_bytes, block_bytes);
    __m512i acc = _mm512_setzero_si512();
    for (index_t g = 0; g < width / 4; ++g) {
      std::int32_t word;
      std::memcpy(&word, query + 4 * g, 4);
      const __m512i rows = _mm512_xor_si512(_mm512_loadu_si512(block + g * 64), flip);
      acc = _mm512_dpbusd_epi32(acc, rows, _mm512_set1_epi32(word));
    }
    const auto* scales = reinterpret_cast<const float*>(block + 16 * width);
    const __mmask16 lanes = n_rows - i >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << (n_rows - i)) - 1);
    const __m512 sums = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_set1_epi32(offset)));
    // score_i8 on 16 lanes, then + rest * rest norm: each product rounded on its own
    __m512 product = _mm512_mul_ps(sums, _mm512_mul_ps(scale, _mm512_loadu_ps(scales)));
    SPLITNET_KERNELS_NO_CONTRACTION(product);
    __m512 extra = _mm512_mul_ps(r, _mm512_loadu_ps(scales + 16));
    SPLITNET_KERNELS_NO_CONTRACTION(extra);
    _mm512_mask_storeu_ps(out + i, lanes, _mm512_add_ps(_mm512_add_ps(product, b), extra));
  }
}

// The avx512 table with the VNNI int8 cross tile.
inline constexpr KernelTable kAvx512VnniTable = [] {
  KernelTable t = kAvx512Table;
  t.isa = Isa::avx512vnni;
  SPLITNET_KERNELS_FILL(t, score_tile_i8, avx512vnni);
  SPLITNET_KERNELS_FILL(t, score_heads_i8, avx512vnni);
  return t;
}();

}  // namespace splitnet

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // SPLITNET_KERNELS_HAVE_X86
