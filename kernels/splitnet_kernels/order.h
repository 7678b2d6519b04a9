// The one summation order that every float32 score of the scans follows (ordered_dot, with the
// scalar kernels' way onto the FMA instruction), and how every ISA ends an int8 score (score_i8).
#pragma once
#include <cmath>

#include "build.h"

namespace splitnet {

// Every float32 score of the scans (one user, many users, an allowed subset, every ISA and every
// storage type, whose rows widen exactly to float32) has the bits of this order, so score, topk,
// one user and many agree bit for bit and an exact set's re-score is the float32 set's score:
// eight lanes, lane j the FMA chain q[d] * r[d] + lane over d = j, j + 8, ... < dim rounded up
// to 8 (zero terms past dim), from +0 in increasing d; then ((l0 + l1) + (l2 + l3)) + ((l4 + l5)
// + (l6 + l7)); then + bias. AVX2's eight-lane registers give it directly (avx2.h); the scalar
// reference and the cross tiles emulate it. load(d) is the candidate's value d as float32.
constexpr index_t kSumLanes = 8;

SPLITNET_KERNELS_INLINE float sum_lanes(const float* l) { return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7])); }

template <class Query, class Load>
SPLITNET_KERNELS_INLINE float ordered_dot(Query query, Load load, index_t dim) {
  float lanes[kSumLanes] = {};
  index_t d = 0;
  for (; d + kSumLanes <= dim; d += kSumLanes)
    for (index_t j = 0; j < kSumLanes; ++j) lanes[j] = std::fma(query(d + j), load(d + j), lanes[j]);
  for (index_t j = 0; d < dim && j < kSumLanes; ++j)  // the last, partial group: zero terms past dim
    lanes[j] = d + j < dim ? std::fma(query(d + j), load(d + j), lanes[j]) : lanes[j] + 0.0f;
  return sum_lanes(lanes);
}

// The scalar kernels run their FMAs on the FMA instruction where the CPU has one (the same bits
// as the library call std::fma makes elsewhere, many times faster, and vectorized): body, an
// always-inline lambda, is inlined into a function built for FMA, or into a baseline one.
#if SPLITNET_KERNELS_HAVE_X86
template <class Body>
__attribute__((target("fma"))) inline void with_fma_instruction(Body&& body) { body(); }

template <class Body>
inline void with_fma(Body&& body) {
  static const bool has_fma = __builtin_cpu_supports("fma");
  if (has_fma) return with_fma_instruction(body);
  body();
}
#else
template <class Body>
inline void with_fma(Body&& body) { body(); }
#endif

// The int8 score from its exact integer sum, as every ISA's int8 kernels end (the cross tile
// does the same operations on 16 lanes, see avx512vnni.h): float(sum) * (query_scale *
// row_scale) + bias, the product rounded before the add. sum is the exact integer converted
// once to float (the same float from an int32 or an int64).
inline float score_i8(float sum, float query_scale, float row_scale, float bias) {
  float product = sum * (query_scale * row_scale);
  SPLITNET_KERNELS_NO_CONTRACTION(product);
  return product + bias;
}

}  // namespace splitnet
