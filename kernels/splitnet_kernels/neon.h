// NEON kernels for 64-bit Arm (Graviton, Ampere, Apple): four lanes, FMA always present. The
// streaming dot products are vectorized; the cross tile and weighted pairs reuse the scalar
// reference until an Arm machine is there to tune them on.
#pragma once
#include "scalar.h"

#if SPLITNET_KERNELS_HAVE_NEON
#include <arm_neon.h>

namespace splitnet {

inline float dot_f32_neon(const float* a, const float* b, index_t dim) {
  float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
  index_t d = 0;
  for (; d + 8 <= dim; d += 8) {
    acc0 = vfmaq_f32(acc0, vld1q_f32(a + d), vld1q_f32(b + d));
    acc1 = vfmaq_f32(acc1, vld1q_f32(a + d + 4), vld1q_f32(b + d + 4));
  }
  float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
  for (; d < dim; ++d) sum += a[d] * b[d];
  return sum;
}

inline void score_pairs_f32_neon(const float* a, index_t a_stride, const float* b, index_t b_stride,
                                 const float* weights, index_t n_pairs, index_t dim, float bias, float* out) {
  if (weights != nullptr) {
    score_pairs_f32_scalar(a, a_stride, b, b_stride, weights, n_pairs, dim, bias, out);
    return;
  }
  for (index_t i = 0; i < n_pairs; ++i)
    out[i] = dot_f32_neon(a + i * a_stride, b + i * b_stride, dim) + bias;
}

// The scalar table with NEON kernels in the entries that have one. The scans keep the scalar
// kernels (the one summation order, order.h, with aarch64's FMA instruction): a NEON row
// kernel in that order is work for a host that can test it.
inline constexpr KernelTable kNeonTable = [] {
  KernelTable t = kScalarTable;
  t.isa = Isa::neon;
  SPLITNET_KERNELS_FILL(t, score_pairs_f32, neon);
  return t;
}();

}  // namespace splitnet
#endif  // SPLITNET_KERNELS_HAVE_NEON
