// The operands' types: float32 rows (Rows), candidate rows in any storage type (StoredRows; the
// types are dtypes.h's) and a metric's canonical form (MetricForm).
#pragma once
#include "build.h"
#include "dtypes.h"

namespace splitnet {

// float32 rows, each contiguous along dim; pointers need only float alignment.
struct Rows {
  const float* data;
  index_t count;
  index_t dim;
  index_t stride;  // elements between consecutive rows
  const float* row(index_t i) const { return data + i * stride; }
};

// Candidates in any storage type: rows contiguous along dim, `stride` elements apart.
struct StoredRows {
  Dtype dtype;
  const void* data;
  index_t count;
  index_t dim;
  index_t stride;
  const float* scales = nullptr;  // int8 only

  const char* row_bytes(index_t i) const {
    return static_cast<const char*>(data) + i * stride * element_size(dtype);
  }
};

// float32 rows as stored candidates (no copy).
inline StoredRows stored(const Rows& rows) { return {Dtype::f32, rows.data, rows.count, rows.dim, rows.stride}; }

// A metric's canonical form: S = diag(diag) + left right^T, (dim, dim). Null diag: no diagonal
// term. Null left: no factor term (right is then null too). Null right with left: the identity,
// so left is all of S (dim, dim). left and right are (dim, rank) row-major.
//   dot: diag = ones; scaled: diag = w; diagonal: diag = s; full: left = S;
//   low_rank: left = P, right = Q, diag = d or null.
struct MetricForm {
  index_t dim = 0;
  const float* diag = nullptr;
  const float* left = nullptr;
  const float* right = nullptr;
  index_t rank = 0;  // columns of left (dim when right is null)
};

}  // namespace splitnet
