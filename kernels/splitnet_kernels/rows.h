// The operands' vocabulary: float32 rows (Rows), candidate rows in any storage type
// (StoredRows), the storage types and their names, and a metric's canonical form (MetricForm).
#pragma once
#include <cstring>

#include "common.h"

namespace splitnet {

// float32 rows, each contiguous along dim; pointers need only float alignment.
struct Rows {
  const float* data;
  index_t count;
  index_t dim;
  index_t stride;  // elements between consecutive rows
  const float* row(index_t i) const { return data + i * stride; }
};

// How candidates are stored. f16 and bf16 rows are 16-bit patterns (IEEE half, bfloat16); int8
// rows carry one float32 scale each (row ~= scale * stored).
enum class Dtype : int { f32, f16, bf16, i8 };

// The storage types' names and element sizes, the one list of them.
struct DtypeInfo {
  Dtype dtype;
  const char* name;
  index_t size;  // bytes per element
};
inline constexpr DtypeInfo kDtypes[] = {
    {Dtype::f32, "float32", 4}, {Dtype::f16, "float16", 2}, {Dtype::bf16, "bfloat16", 2}, {Dtype::i8, "int8", 1}};

inline const DtypeInfo& dtype_info(Dtype dtype) { return kDtypes[static_cast<int>(dtype)]; }
inline const char* dtype_name(Dtype dtype) { return dtype_info(dtype).name; }
inline index_t element_size(Dtype dtype) { return dtype_info(dtype).size; }

// Sets *dtype and returns true when `name` (`length` chars) is one of kDtypes' names.
inline bool dtype_from_name(const char* name, std::size_t length, Dtype* dtype) {
  for (const DtypeInfo& entry : kDtypes)
    if (std::strlen(entry.name) == length && std::memcmp(entry.name, name, length) == 0) {
      *dtype = entry.dtype;
      return true;
    }
  return false;
}

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
