// The storage types' conversions, one definition each so every ISA sees the same numbers:
// bfloat16 and IEEE half bits widened exactly to float32, and a float32 query quantized to int8.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "build.h"

namespace splitnet {

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

}  // namespace splitnet
