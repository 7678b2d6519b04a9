// Operand preparation for the drivers (ops.h): users transposed for the cross tile, weight
// matrices padded for it, 16-bit candidates widened, users quantized for int8 candidates, the
// query buffer, and how one query scores a range of candidates of any storage type.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "convert.h"
#include "dispatch.h"
#include "rows.h"
#include "tuning.h"

namespace splitnet {
namespace detail {

constexpr index_t kTileCandidates = 64;  // candidates per cross tile (score_tile_f32's n_rows limit)

inline index_t min_rows_per_task(index_t dim, index_t work_per_row = 1) {
  return std::max<index_t>(1, kMinWorkPerTask / std::max<index_t>(1, dim * work_per_row));
}

// Users per cross tile: their transposed block (dim x users) should stay within L1.
inline index_t users_per_block(index_t dim) {
  const index_t fit = (index_t{8192} / std::max<index_t>(dim, 1)) / 16 * 16;
  return std::clamp<index_t>(fit, 16, kMaxBlockUsers);
}

inline index_t lanes_of(index_t count) { return (count + 15) / 16 * 16; }

// users[begin:end] transposed into `out` (dim, pad), padding lanes zero; pad, a multiple of 16,
// is returned. The cross tile reads users this way.
inline index_t transpose_users(const Rows& users, index_t begin, index_t end, std::vector<float>& out) {
  const index_t count = end - begin, pad = lanes_of(count);
  out.assign(static_cast<size_t>(users.dim * pad), 0.0f);
  for (index_t u = 0; u < count; ++u) {
    const float* user = users.row(begin + u);
    for (index_t d = 0; d < users.dim; ++d) out[d * pad + u] = user[d];
  }
  return pad;
}

// w (rows, cols) row-major, with its rows padded to `pad` (a multiple of 16) columns, the form in
// which the cross tile multiplies by w: w itself when cols is one already, else a zero-padded
// copy in `copy`.
inline const float* pad_columns(const float* w, index_t rows, index_t cols, std::vector<float>& copy, index_t& pad) {
  pad = lanes_of(cols);
  if (pad == cols) return w;
  copy.assign(static_cast<size_t>(rows * pad), 0.0f);
  for (index_t r = 0; r < rows; ++r) std::copy(w + r * cols, w + (r + 1) * cols, copy.begin() + r * pad);
  return copy.data();
}

// w^T for w (rows, cols) row-major, as pad_columns would give it: (cols, pad) in `copy`, pad =
// rows rounded up to 16, padding zero.
inline const float* transpose_columns(const float* w, index_t rows, index_t cols, std::vector<float>& copy,
                                      index_t& pad) {
  pad = lanes_of(rows);
  copy.assign(static_cast<size_t>(cols * pad), 0.0f);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) copy[c * pad + r] = w[r * cols + c];
  return copy.data();
}

// Asks for rows [begin, end) to be brought into the cache. The compute-bound loops (cross tiles,
// full pairs) call it a block ahead: the hardware prefetcher alone leaves them waiting on memory.
inline void prefetch_rows(const StoredRows& rows, index_t begin, index_t end) {
  const index_t size = element_size(rows.dtype);
  for (index_t r = begin; r < end; ++r) prefetch_bytes(rows.row_bytes(r), rows.dim * size);
}

inline void prefetch_rows(const Rows& rows, index_t begin, index_t end) { prefetch_rows(stored(rows), begin, end); }

// Candidates [first, first + count) as float32 rows for the cross tile: the stored rows for
// float32, else float16 / bfloat16 widened (exactly) into scratch. Not for int8 rows, which are
// scored against quantized users (UserBlock).
inline Rows float_rows(const KernelTable& table, const StoredRows& rows, index_t first, index_t count,
                       std::vector<float>& scratch) {
  if (rows.dtype == Dtype::f32)
    return {static_cast<const float*>(rows.data) + first * rows.stride, count, rows.dim, rows.stride};
  scratch.resize(static_cast<size_t>(count * rows.dim));
  const auto widen = rows.dtype == Dtype::f16 ? table.widen_f16 : table.widen_bf16;
  const auto* data = static_cast<const std::uint16_t*>(rows.data) + first * rows.stride;
  for (index_t i = 0; i < count; ++i) widen(data + i * rows.stride, rows.dim, scratch.data() + i * rows.dim);
  return {scratch.data(), count, rows.dim, rows.dim};
}

// Users [begin, end) prepared for the cross tile of the candidates' storage type: transposed as
// float32, or quantized (as OneQuery quantizes one user) into the int8 tile's words. score()
// fills a tile of candidates [c0, c0 + count) against all of them.
class UserBlock {
 public:
  UserBlock(const KernelTable& table, const Rows& users, index_t begin, index_t end, const StoredRows& rows)
      : table_(table), rows_(rows) {
    if (rows.dtype != Dtype::i8) {
      pad_ = transpose_users(users, begin, end, transposed_);
      return;
    }
    const index_t count = end - begin, groups = (users.dim + 3) / 4;
    pad_ = lanes_of(count);
    words_.assign(static_cast<size_t>(groups * pad_), 0);
    offsets_.assign(static_cast<size_t>(pad_), 0);
    scales_.assign(static_cast<size_t>(pad_), 0.0f);
    std::vector<std::int8_t> bytes(static_cast<size_t>(groups * 4), 0);
    for (index_t u = 0; u < count; ++u) {
      scales_[u] = quantize_query_i8(users.row(begin + u), users.dim, bytes.data());
      for (index_t d = 0; d < users.dim; ++d) offsets_[u] += 128 * bytes[d];
      for (index_t g = 0; g < groups; ++g) std::memcpy(&words_[g * pad_ + u], bytes.data() + 4 * g, 4);
    }
  }

  index_t pad() const { return pad_; }

  std::uint64_t score(index_t c0, index_t count, float bias, const float* gates, float* tile,
                      std::vector<float>& scratch) const {
    if (rows_.dtype == Dtype::i8)
      return table_.score_tile_i8(words_.data(), pad_, offsets_.data(), scales_.data(),
                                  static_cast<const std::int8_t*>(rows_.data) + c0 * rows_.stride, rows_.scales + c0,
                                  count, rows_.dim, rows_.stride, bias, gates, tile);
    const Rows r = float_rows(table_, rows_, c0, count, scratch);
    return table_.score_tile_f32(transposed_.data(), pad_, r.data, count, rows_.dim, r.stride, bias, gates, tile);
  }

 private:
  const KernelTable& table_;
  const StoredRows& rows_;
  index_t pad_ = 0;
  std::vector<float> transposed_;              // float32 users
  std::vector<std::int32_t> words_, offsets_;  // int8 users
  std::vector<float> scales_;
};

// Scores candidates against one query, for any storage type, in the order of `ids` (a subset,
// ascending) or of the rows themselves: the one place that knows how each type is scored.
class OneQuery {
 public:
  OneQuery(const KernelTable& table, const float* query, const StoredRows& rows, float bias, const index_t* ids)
      : table_(table), query_(query), rows_(rows), bias_(bias), ids_(ids) {
    if (rows.dtype == Dtype::i8) {
      quantized_.resize(static_cast<size_t>(rows.dim));
      query_scale_ = quantize_query_i8(query, rows.dim, quantized_.data());
    }
  }

  const KernelTable& table() const { return table_; }
  const index_t* ids() const { return ids_; }
  index_t dim() const { return rows_.dim; }
  // int8 rows: the query as quantize_query_i8 made it, and its scale.
  const std::int8_t* quantized() const { return quantized_.data(); }
  float query_scale() const { return query_scale_; }

  // out[i] = score of candidate position first + i, i < count.
  void operator()(index_t first, index_t count, float* out) const {
    if (ids_ == nullptr) return contiguous(rows_.data, rows_.scales, first, count, out);
    gathered(ids_ + first, count, out);
  }

  // out[i] = score of row rows[i], i < count. The rows are gathered into one buffer (the next
  // rows prefetched as they are copied) and scored in one call: a kernel call per row cost more
  // than the row's arithmetic. The bits are the same either way: each row is scored alone, in
  // one summation order.
  void gathered(const index_t* rows, index_t count, float* out) const {
    constexpr index_t kAhead = 8;
    const auto row_bytes = static_cast<size_t>(rows_.stride * element_size(rows_.dtype));
    thread_local std::vector<std::uint8_t> buffer;
    thread_local std::vector<float> scales;
    buffer.resize(static_cast<size_t>(count) * row_bytes + 64);
    auto* copies = buffer.data() + (-reinterpret_cast<std::uintptr_t>(buffer.data()) & 63);  // 64-byte aligned
    const auto* data = static_cast<const std::uint8_t*>(rows_.data);
    for (index_t i = 0; i < count; ++i) {
      if (i + kAhead < count) prefetch_bytes(data + rows[i + kAhead] * row_bytes, static_cast<index_t>(row_bytes));
      std::memcpy(copies + i * row_bytes, data + rows[i] * row_bytes, row_bytes);
    }
    if (rows_.dtype == Dtype::i8) {
      scales.resize(static_cast<size_t>(count));
      for (index_t i = 0; i < count; ++i) scales[i] = rows_.scales[rows[i]];
    }
    contiguous(copies, scales.data(), 0, count, out);
  }

 private:
  void contiguous(const void* data, const float* row_scales, index_t first, index_t count, float* out) const {
    const index_t offset = first * rows_.stride;
    switch (rows_.dtype) {
      case Dtype::f32:
        return table_.score_rows_f32(query_, static_cast<const float*>(data) + offset, count, rows_.dim,
                                     rows_.stride, bias_, out);
      case Dtype::f16:
        return table_.score_rows_f16(query_, static_cast<const std::uint16_t*>(data) + offset, count,
                                     rows_.dim, rows_.stride, bias_, out);
      case Dtype::bf16:
        return table_.score_rows_bf16(query_, static_cast<const std::uint16_t*>(data) + offset, count,
                                      rows_.dim, rows_.stride, bias_, out);
      case Dtype::i8:
        return table_.score_rows_i8(quantized_.data(), query_scale_, static_cast<const std::int8_t*>(data) + offset,
                                    row_scales + first, count, rows_.dim, rows_.stride, bias_, out);
    }
  }

  const KernelTable& table_;
  const float* query_;
  const StoredRows& rows_;
  float bias_;
  const index_t* ids_;
  std::vector<std::int8_t> quantized_;
  float query_scale_ = 0.0f;
};

// A float buffer that holds up to kInline values in itself, so a serving call (one user of a
// few hundred dimensions) folds its query without allocating; larger ones go to the heap.
class FloatBuffer {
 public:
  static constexpr index_t kInline = 1024;
  explicit FloatBuffer(index_t size) {
    if (size > kInline) heap_.resize(static_cast<size_t>(size));
  }
  FloatBuffer(const FloatBuffer&) = delete;
  FloatBuffer& operator=(const FloatBuffer&) = delete;
  float* data() { return heap_.empty() ? inline_ : heap_.data(); }

 private:
  alignas(64) float inline_[kInline];
  std::vector<float> heap_;
};

}  // namespace detail
}  // namespace splitnet
