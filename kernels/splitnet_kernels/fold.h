// Folding: a user u becomes the query q = u^T S (S = diag(diag) + left right^T, see MetricForm)
// once per user, so every candidate costs one dot product whatever the metric. One function,
// fold_users, folds one user, many users and the users of pairs alike, so every path sees the
// same bits; its products go through the cross tile (matmul), not a BLAS.
#pragma once
#include <algorithm>
#include <vector>

#include "operands.h"
#include "parallel.h"

namespace splitnet {
namespace detail {

// out[i * out_stride + j] = sum_d x[i][d] w[d][j] for j < cols, with w given as the cross tile
// reads it: (x.dim, pad) row-major, pad a multiple of 16 (pad_columns, transpose_columns).
inline void matmul_padded(const KernelTable& table, const Rows& x, const float* w, index_t pad, index_t cols,
                          float* out, index_t out_stride, int threads) {
  parallel_chunks(x.count, threads, min_rows_per_task(x.dim, pad), kTileCandidates,
                  [&](int, index_t begin, index_t end) {
                    std::vector<float> tile(static_cast<size_t>(std::min(kTileCandidates, end - begin) * pad));
                    for (index_t r0 = begin; r0 < end; r0 += kTileCandidates) {
                      const index_t count = std::min(kTileCandidates, end - r0);
                      table.score_tile_f32(w, pad, x.row(r0), count, x.dim, x.stride, 0.0f, nullptr, tile.data());
                      for (index_t i = 0; i < count; ++i)
                        std::copy(tile.data() + i * pad, tile.data() + i * pad + cols, out + (r0 + i) * out_stride);
                    }
                  });
}

}  // namespace detail

// out[i * out_stride + j] = sum_d x[i][d] w[d][j] for j < cols, w (x.dim, cols) row-major: a
// small GEMM on the cross tile, which folds users without a BLAS whose idle threads would spin
// on the cores that the scoring needs next.
inline void matmul(const KernelTable& table, const Rows& x, const float* w, index_t cols, float* out,
                   index_t out_stride, int threads) {
  std::vector<float> copy;
  index_t pad = 0;
  const float* padded = detail::pad_columns(w, x.dim, cols, copy, pad);
  detail::matmul_padded(table, x, padded, pad, cols, out, out_stride, threads);
}

// Folds users (count, form.dim) into out: row u (out + u * out_stride) holds q_u = u^T S in its
// first form.dim values and zeros up to `width` (>= form.dim): the width of zero-padded
// candidate rows, so the kernels run on whole padded rows. In float32:
//   q = u * diag + (u left) right^T       (u left when right is null),
// the product u * diag rounded before it is added (never fused into one FMA), so the bits do
// not depend on the ISA's FMA or on how many users fold together. NaN and infinity fold by
// IEEE rules. At least one of form.diag and form.left is set.
inline void fold_users(const KernelTable& table, const MetricForm& form, const Rows& users, float* out,
                       index_t out_stride, index_t width, int threads) {
  const index_t dim = form.dim;
  if (form.left != nullptr && form.right != nullptr) {  // (u left) right^T: rank-wide, then back to dim
    std::vector<float> inner(static_cast<size_t>(users.count * form.rank)), copy;
    matmul(table, users, form.left, form.rank, inner.data(), form.rank, threads);
    index_t pad = 0;
    const float* right_t = detail::transpose_columns(form.right, dim, form.rank, copy, pad);
    detail::matmul_padded(table, Rows{inner.data(), users.count, form.rank, form.rank}, right_t, pad, dim, out,
                          out_stride, threads);
  } else if (form.left != nullptr) {  // left is all of S
    matmul(table, users, form.left, dim, out, out_stride, threads);
  }
  for (index_t u = 0; u < users.count; ++u) {
    const float* user = users.row(u);
    float* q = out + u * out_stride;
    if (form.diag != nullptr && form.left != nullptr) {
      for (index_t d = 0; d < dim; ++d) {
        float product = user[d] * form.diag[d];
        SPLITNET_KERNELS_NO_CONTRACTION(product);
        q[d] += product;
      }
    } else if (form.diag != nullptr) {
      for (index_t d = 0; d < dim; ++d) q[d] = user[d] * form.diag[d];
    }
    std::fill(q + dim, q + width, 0.0f);
  }
}

}  // namespace splitnet
