// The scalar reference kernels: the specification every ISA variant must match. The scans'
// float32 scores follow the one summation order (order.h, ordered_dot) bit for bit; the pairwise
// kernel is plain accumulation, which the others match to float32 rounding.
#pragma once
#include <algorithm>
#include <limits>
#include <vector>

#include "convert.h"
#include "isa.h"
#include "order.h"

namespace splitnet {

inline void score_rows_f32_scalar(const float* query, const float* rows, index_t n_rows,
                                  index_t dim, index_t row_stride, float bias, float* out) {
  with_fma([&]() SPLITNET_KERNELS_LAMBDA_INLINE {
    for (index_t i = 0; i < n_rows; ++i) {
      const float* row = rows + i * row_stride;
      out[i] = ordered_dot([&](index_t d) { return query[d]; }, [&](index_t d) { return row[d]; }, dim) + bias;
    }
  });
}

// Each candidate's eight lanes for every user at once (users contiguous, so the FMAs vectorize),
// in the one order.
inline std::uint64_t score_tile_f32_scalar(const float* users_t, index_t users_pad, const float* rows,
                                           index_t n_rows, index_t dim, index_t row_stride, float bias,
                                           const float* gates, float* tile) {
  std::vector<float> lanes(static_cast<size_t>(kSumLanes * users_pad));
  std::uint64_t hits = 0;
  with_fma([&]() SPLITNET_KERNELS_LAMBDA_INLINE {
    const index_t padded = (dim + kSumLanes - 1) / kSumLanes * kSumLanes;
    for (index_t c = 0; c < n_rows; ++c) {
      const float* row = rows + c * row_stride;
      std::fill(lanes.begin(), lanes.end(), 0.0f);
      for (index_t d = 0; d < padded; ++d) {
        float* lane = lanes.data() + (d % kSumLanes) * users_pad;
        if (d < dim) {
          const float value = row[d];
          const float* column = users_t + d * users_pad;
          for (index_t u = 0; u < users_pad; ++u) lane[u] = std::fma(value, column[u], lane[u]);
        } else {
          for (index_t u = 0; u < users_pad; ++u) lane[u] += 0.0f;
        }
      }
      for (index_t u = 0; u < users_pad; ++u) {
        float l[kSumLanes];
        for (index_t j = 0; j < kSumLanes; ++j) l[j] = lanes[j * users_pad + u];
        const float score = sum_lanes(l) + bias;
        tile[c * users_pad + u] = score;
        if (gates != nullptr && !(score < gates[u])) hits |= std::uint64_t{1} << c;
      }
    }
  });
  return hits;
}

inline void score_pairs_f32_scalar(const float* a, index_t a_stride, const float* b,
                                   index_t b_stride, const float* weights, index_t n_pairs,
                                   index_t dim, float bias, float* out) {
  for (index_t i = 0; i < n_pairs; ++i) {
    const float* x = a + i * a_stride;
    const float* y = b + i * b_stride;
    float sum = 0.0f;
    for (index_t d = 0; d < dim; ++d) sum += (weights ? x[d] * weights[d] : x[d]) * y[d];
    out[i] = sum + bias;
  }
}

inline bool not_below_bits_f32_scalar(const float* values, const float* gates, index_t n,
                                      std::uint64_t* bits) {
  std::uint64_t any = 0;
  for (index_t w = 0; w * 64 < n; ++w) bits[w] = 0;
  for (index_t i = 0; i < n; ++i) {
    const std::uint64_t hit = !(values[i] < gates[i]);
    bits[i / 64] |= hit << (i % 64);
    any |= hit;
  }
  return any != 0;
}

inline index_t first_not_below_f32_scalar(const float* values, index_t n, float gate) {
  for (index_t i = 0; i < n; ++i)
    if (!(values[i] < gate)) return i;
  return n;
}

inline void max_lanes_f32_scalar(const float* values, index_t n, float* lanes) {
  std::fill(lanes, lanes + 16, -std::numeric_limits<float>::infinity());
  for (index_t i = 0; i < n; ++i) lanes[i % 16] = std::max(lanes[i % 16], values[i]);  // NaN never wins
}

template <float (*Widen)(std::uint16_t)>
inline void rows_16bit_scalar(const float* query, const std::uint16_t* rows, index_t n_rows, index_t dim,
                              index_t row_stride, float bias, float* out) {
  with_fma([&]() SPLITNET_KERNELS_LAMBDA_INLINE {
    for (index_t i = 0; i < n_rows; ++i) {
      const std::uint16_t* row = rows + i * row_stride;
      out[i] = ordered_dot([&](index_t d) { return query[d]; }, [&](index_t d) { return Widen(row[d]); }, dim) + bias;
    }
  });
}

inline void score_rows_f16_scalar(const float* query, const std::uint16_t* rows, index_t n_rows,
                                  index_t dim, index_t row_stride, float bias, float* out) {
  rows_16bit_scalar<f16_to_f32>(query, rows, n_rows, dim, row_stride, bias, out);
}

inline void score_rows_bf16_scalar(const float* query, const std::uint16_t* rows, index_t n_rows,
                                   index_t dim, index_t row_stride, float bias, float* out) {
  rows_16bit_scalar<bf16_to_f32>(query, rows, n_rows, dim, row_stride, bias, out);
}

inline void widen_f16_scalar(const std::uint16_t* in, index_t n, float* out) {
  for (index_t i = 0; i < n; ++i) out[i] = f16_to_f32(in[i]);
}

inline void widen_bf16_scalar(const std::uint16_t* in, index_t n, float* out) {
  for (index_t i = 0; i < n; ++i) out[i] = bf16_to_f32(in[i]);
}

inline void score_rows_i8_scalar(const std::int8_t* query, float query_scale, const std::int8_t* rows,
                                 const float* row_scales, index_t n_rows, index_t dim,
                                 index_t row_stride, float bias, float* out) {
  for (index_t i = 0; i < n_rows; ++i) {
    const std::int8_t* row = rows + i * row_stride;
    std::int64_t sum = 0;
    for (index_t d = 0; d < dim; ++d) sum += static_cast<std::int32_t>(query[d]) * row[d];
    out[i] = score_i8(static_cast<float>(sum), query_scale, row_scales[i], bias);
  }
}

inline void score_heads_i8_scalar(const std::int8_t* query, float query_scale, const std::int8_t* blocks, float rest,
                                  index_t n_rows, index_t width, float bias, float* out) {
  for (index_t i = 0; i < n_rows; ++i) {
    const std::int8_t* block = blocks + (i / 16) * (16 * width + 128);
    float scale, rest_norm;
    std::memcpy(&scale, block + 16 * width + 4 * (i % 16), 4);
    std::memcpy(&rest_norm, block + 16 * width + 64 + 4 * (i % 16), 4);
    std::int32_t sum = 0;
    for (index_t d = 0; d < width; ++d) sum += static_cast<std::int32_t>(query[d]) * block[(d / 4) * 64 + (i % 16) * 4 + d % 4];
    float extra = rest * rest_norm;
    SPLITNET_KERNELS_NO_CONTRACTION(extra);
    out[i] = score_i8(static_cast<float>(sum), query_scale, scale, bias) + extra;
  }
}

inline std::uint64_t sum_u64_scalar(const std::uint64_t* words, index_t n) {
  std::uint64_t sum = 0;
  for (index_t i = 0; i < n; ++i) sum += words[i];
  return sum;
}

inline constexpr KernelTable kScalarTable = [] {
  KernelTable t{};
  t.isa = Isa::scalar;
  SPLITNET_KERNELS_FILL(t, score_rows_f32, scalar);
  SPLITNET_KERNELS_FILL(t, score_tile_f32, scalar);
  SPLITNET_KERNELS_FILL(t, not_below_bits_f32, scalar);
  SPLITNET_KERNELS_FILL(t, first_not_below_f32, scalar);
  SPLITNET_KERNELS_FILL(t, max_lanes_f32, scalar);
  SPLITNET_KERNELS_FILL(t, score_rows_f16, scalar);
  SPLITNET_KERNELS_FILL(t, score_rows_bf16, scalar);
  SPLITNET_KERNELS_FILL(t, widen_f16, scalar);
  SPLITNET_KERNELS_FILL(t, widen_bf16, scalar);
  SPLITNET_KERNELS_FILL(t, score_rows_i8, scalar);
  SPLITNET_KERNELS_FILL(t, score_heads_i8, scalar);
  SPLITNET_KERNELS_FILL(t, score_pairs_f32, scalar);
  SPLITNET_KERNELS_FILL(t, sum_u64, scalar);
  return t;  // score_tile_i8 stays null: no byte dot product to tile with
}();

}  // namespace splitnet
