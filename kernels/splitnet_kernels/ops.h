// The operations callers use: score and top-k for one user, many users (cross) and pairs, on
// any kernel table, split across the thread pool when the work is large enough to pay for it.
// Each takes float32 rows, contiguous along dim, with a row stride in elements.
#pragma once
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "dispatch.h"
#include "parallel.h"
#include "topk.h"

namespace splitnet {

struct Rows {
  const float* data;
  index_t count;
  index_t dim;
  index_t stride;  // elements between consecutive rows
  const float* row(index_t i) const { return data + i * stride; }
};

enum class Dtype { f32, f16, bf16, i8 };

// Candidates in any storage type: rows contiguous along dim, `stride` elements apart; int8 rows
// carry one float32 scale each (row ~= scale * stored). f16 and bf16 rows are 16-bit patterns.
struct PackedRows {
  Dtype dtype;
  const void* data;
  index_t count;
  index_t dim;
  index_t stride;
  const float* scales = nullptr;  // int8 only
};

inline PackedRows packed(const Rows& rows) { return {Dtype::f32, rows.data, rows.count, rows.dim, rows.stride}; }

namespace ops_detail {
// Below this many multiply-adds per task, waking a worker costs more than it saves.
constexpr index_t kMinWorkPerTask = index_t{1} << 18;
constexpr index_t kBlock = 1024;           // candidates scored per top-k scan (4 KiB of scores)
constexpr index_t kTileCandidates = 64;    // candidates per cross tile
constexpr index_t kSelectAboveK = 2048;    // above this k (and k > n / 8), score all, then select
constexpr index_t kMaxBlockUsers = 256;    // users per cross tile, at most

inline index_t min_rows_per_task(index_t dim, index_t work_per_row = 1) {
  return std::max<index_t>(1, kMinWorkPerTask / std::max<index_t>(1, dim * work_per_row));
}

// Users per cross tile: their transposed block (dim x users) should stay within L1.
inline index_t users_per_block(index_t dim) {
  const index_t fit = (index_t{8192} / std::max<index_t>(dim, 1)) / 16 * 16;
  return std::clamp<index_t>(fit, 16, kMaxBlockUsers);
}

// users[begin:end] transposed into (dim, pad) with zero padding lanes; pad is a multiple of 16.
inline index_t pack_users(const Rows& users, index_t begin, index_t end, std::vector<float>& packed) {
  const index_t count = end - begin, pad = (count + 15) / 16 * 16;
  packed.assign(static_cast<size_t>(users.dim * pad), 0.0f);
  for (index_t u = 0; u < count; ++u) {
    const float* user = users.row(begin + u);
    for (index_t d = 0; d < users.dim; ++d) packed[d * pad + u] = user[d];
  }
  return pad;
}

// w (dim, cols) row-major in the form in which the cross tile reads users, rows a multiple of 16
// columns wide, so the tile multiplies rows by w: w itself when cols is one already, else a
// zero-padded copy in `copy`. Returns the matrix; `pad` is its width.
inline const float* pack_columns(const float* w, index_t dim, index_t cols, std::vector<float>& copy, index_t& pad) {
  pad = (cols + 15) / 16 * 16;
  if (pad == cols) return w;
  copy.assign(static_cast<size_t>(dim * pad), 0.0f);
  for (index_t r = 0; r < dim; ++r) std::copy(w + r * cols, w + (r + 1) * cols, copy.begin() + r * pad);
  return copy.data();
}

// Asks for rows [begin, end) to be brought into the cache. The compute-bound loops (cross tiles,
// full pairs) call it a block ahead: the hardware prefetcher alone leaves them waiting on memory.
inline void prefetch_rows(const PackedRows& rows, index_t begin, index_t end) {
  const index_t size = rows.dtype == Dtype::f32 ? 4 : rows.dtype == Dtype::i8 ? 1 : 2;
  for (index_t r = begin; r < end; ++r)
    prefetch_bytes(static_cast<const char*>(rows.data) + r * rows.stride * size, rows.dim * size);
}

inline void prefetch_rows(const Rows& rows, index_t begin, index_t end) { prefetch_rows(packed(rows), begin, end); }

// Candidates [first, first + count) as float32 rows for the cross tile: the stored rows for
// float32, else float16 / bfloat16 widened (exactly) into scratch. Not for int8 rows, which are
// scored against quantized users (UserBlock).
inline Rows float_rows(const KernelTable& table, const PackedRows& rows, index_t first, index_t count,
                       std::vector<float>& scratch) {
  if (rows.dtype == Dtype::f32) return {static_cast<const float*>(rows.data) + first * rows.stride, count, rows.dim, rows.stride};
  scratch.resize(static_cast<size_t>(count * rows.dim));
  const auto widen = rows.dtype == Dtype::f16 ? table.widen_f16 : table.widen_bf16;
  const auto* data = static_cast<const std::uint16_t*>(rows.data) + first * rows.stride;
  for (index_t i = 0; i < count; ++i) widen(data + i * rows.stride, rows.dim, scratch.data() + i * rows.dim);
  return {scratch.data(), count, rows.dim, rows.dim};
}

// Users [begin, end) prepared for the cross tile of the candidates' storage type: packed
// transposed as float32, or quantized (as OneQuery quantizes one user) into the int8 tile's
// words. score() fills a tile of candidates [c0, c0 + count) against all of them.
class UserBlock {
 public:
  UserBlock(const KernelTable& table, const Rows& users, index_t begin, index_t end, const PackedRows& rows)
      : table_(table), rows_(rows) {
    if (rows.dtype != Dtype::i8) {
      pad_ = pack_users(users, begin, end, packed_);
      return;
    }
    const index_t count = end - begin, groups = (users.dim + 3) / 4;
    pad_ = (count + 15) / 16 * 16;
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
    return table_.score_tile_f32(packed_.data(), pad_, r.data, count, rows_.dim, r.stride, bias, gates, tile);
  }

 private:
  const KernelTable& table_;
  const PackedRows& rows_;
  index_t pad_ = 0;
  std::vector<float> packed_;                  // float32 users, transposed
  std::vector<std::int32_t> words_, offsets_;  // int8 users
  std::vector<float> scales_;
};

// Combines n_lists top-k lists into one: list t holds counts[first + t * step] entries at
// (first + t * step) * k in scores / ids (one list per task, or per task and user).
inline void merge_lists(const std::vector<float>& scores, const std::vector<index_t>& ids,
                        const std::vector<index_t>& counts, index_t first, index_t step, index_t n_lists,
                        index_t k, float* out_scores, index_t* out_ids) {
  std::vector<float> all_scores;
  std::vector<index_t> all_ids;
  for (index_t t = 0; t < n_lists; ++t) {
    const index_t slot = first + t * step;
    all_scores.insert(all_scores.end(), scores.begin() + slot * k, scores.begin() + slot * k + counts[slot]);
    all_ids.insert(all_ids.end(), ids.begin() + slot * k, ids.begin() + slot * k + counts[slot]);
  }
  select_best(all_scores.data(), all_ids.data(), static_cast<index_t>(all_scores.size()), k,
              out_scores, out_ids);
}

// Scores candidates against one query, for any storage type, in the order of `ids` (a subset,
// ascending) or of the rows themselves: the one place that knows how each type is scored.
class OneQuery {
 public:
  OneQuery(const KernelTable& table, const float* query, const PackedRows& rows, float bias, const index_t* ids)
      : table_(table), query_(query), rows_(rows), bias_(bias), ids_(ids) {
    if (rows.dtype == Dtype::i8) {
      quantized_.resize(static_cast<size_t>(rows.dim));
      query_scale_ = quantize_query_i8(query, rows.dim, quantized_.data());
    }
  }

  const index_t* ids() const { return ids_; }

  // out[i] = score of candidate position first + i, i < count.
  void operator()(index_t first, index_t count, float* out) const {
    if (ids_ == nullptr) return contiguous(first, count, out);
    for (index_t i = 0; i < count; ++i) contiguous(ids_[first + i], 1, out + i);
  }

 private:
  void contiguous(index_t first, index_t count, float* out) const {
    const index_t offset = first * rows_.stride;
    switch (rows_.dtype) {
      case Dtype::f32:
        return table_.score_rows_f32(query_, static_cast<const float*>(rows_.data) + offset, count, rows_.dim,
                                     rows_.stride, bias_, out);
      case Dtype::f16:
        return table_.score_rows_f16(query_, static_cast<const std::uint16_t*>(rows_.data) + offset, count,
                                     rows_.dim, rows_.stride, bias_, out);
      case Dtype::bf16:
        return table_.score_rows_bf16(query_, static_cast<const std::uint16_t*>(rows_.data) + offset, count,
                                      rows_.dim, rows_.stride, bias_, out);
      case Dtype::i8:
        return table_.score_rows_i8(quantized_.data(), query_scale_,
                                    static_cast<const std::int8_t*>(rows_.data) + offset, rows_.scales + first,
                                    count, rows_.dim, rows_.stride, bias_, out);
    }
  }

  const KernelTable& table_;
  const float* query_;
  const PackedRows& rows_;
  float bias_;
  const index_t* ids_;
  std::vector<std::int8_t> quantized_;
  float query_scale_ = 0.0f;
};

// Top-k of candidate positions [begin, end); returns how many were written (min(k, end - begin)).
inline index_t topk_range(const KernelTable& table, const OneQuery& score, index_t begin, index_t end,
                          index_t k, float* out_scores, index_t* out_ids) {
  const index_t n = end - begin;
  if (k > kSelectAboveK && k * 8 > n) {  // large k: score everything, then select
    std::vector<float> scores(static_cast<size_t>(n));
    std::vector<index_t> ids(static_cast<size_t>(n));
    score(begin, n, scores.data());
    for (index_t i = 0; i < n; ++i) ids[i] = score.ids() ? score.ids()[begin + i] : begin + i;
    return select_best(scores.data(), ids.data(), n, k, out_scores, out_ids);
  }
  TopK heap(out_scores, out_ids, k);
  float block[kBlock];
  for (index_t b = begin; b < end; b += kBlock) {
    const index_t count = std::min(kBlock, end - b);
    score(b, count, block);
    heap.scan(block, count, b, score.ids(), table);
  }
  return heap.finish();
}
}  // namespace ops_detail

// out[i] = query . candidate i + bias, for the candidates ids[0..n_ids) when ids is set (the
// allowed subset, ascending) or for every row.
inline void score_one(const KernelTable& table, const float* query, const PackedRows& rows, float bias,
                      float* out, int threads, const index_t* ids = nullptr, index_t n_ids = 0) {
  const ops_detail::OneQuery score(table, query, rows, bias, ids);
  parallel_chunks(ids ? n_ids : rows.count, threads, ops_detail::min_rows_per_task(rows.dim), 16,
                  [&](int, index_t begin, index_t end) { score(begin, end - begin, out + begin); });
}

inline void score_one(const KernelTable& table, const float* query, const Rows& rows, float bias,
                      float* out, int threads) {
  score_one(table, query, packed(rows), bias, out, threads);
}

// out[u * out_stride + c] = users[u] . rows[c] + bias, for candidates in any storage type.
inline void score_cross(const KernelTable& table, const Rows& users, const PackedRows& rows, float bias,
                        float* out, index_t out_stride, int threads) {
  using namespace ops_detail;
  if (rows.dtype == Dtype::i8 && table.score_tile_i8 == nullptr) {  // no byte dot product: user by user
    for (index_t u = 0; u < users.count; ++u) score_one(table, users.row(u), rows, bias, out + u * out_stride, threads);
    return;
  }
  const index_t block_users = users_per_block(users.dim);
  for (index_t u0 = 0; u0 < users.count; u0 += block_users) {
    const index_t u1 = std::min(users.count, u0 + block_users);
    const UserBlock block(table, users, u0, u1, rows);
    const index_t pad = block.pad();
    parallel_chunks(rows.count, threads, min_rows_per_task(rows.dim, pad), kTileCandidates,
                    [&](int, index_t begin, index_t end) {
                      std::vector<float> tile(static_cast<size_t>(kTileCandidates * pad)), scratch;
                      for (index_t c0 = begin; c0 < end; c0 += kTileCandidates) {
                        const index_t count = std::min(kTileCandidates, end - c0);
                        prefetch_rows(rows, c0 + kTileCandidates, std::min(end, c0 + 2 * kTileCandidates));
                        block.score(c0, count, bias, nullptr, tile.data(), scratch);
                        for (index_t u = u0; u < u1; ++u) {
                          float* dst = out + u * out_stride + c0;
                          const float* src = tile.data() + (u - u0);
                          for (index_t c = 0; c < count; ++c) dst[c] = src[c * pad];
                        }
                      }
                    });
  }
}

inline void score_cross(const KernelTable& table, const Rows& users, const Rows& rows, float bias, float* out,
                        index_t out_stride, int threads) {
  score_cross(table, users, packed(rows), bias, out, out_stride, threads);
}

// out[i] = sum_d users[i][d] * weights[d] * rows[i][d] + bias; weights null means all ones.
inline void score_pairs(const KernelTable& table, const Rows& users, const Rows& rows,
                        const float* weights, float bias, float* out, int threads) {
  parallel_chunks(rows.count, threads, ops_detail::min_rows_per_task(rows.dim, 2), 16,
                  [&](int, index_t begin, index_t end) {
                    table.score_pairs_f32(users.row(begin), users.stride, rows.row(begin), rows.stride,
                                          weights, end - begin, rows.dim, bias, out + begin);
                  });
}

// out[i] = (users[i] L) . (rows[i] R) + sum_d users[i][d] diag[d] rows[i][d] + bias, with L and R
// (dim, rank) row-major: a low-rank S = L R^T + diag(d). Null R stands for the identity (rank =
// dim), so L alone is a full S; null diag adds nothing. Steps of pairs go through the cross tile
// (L, R packed where the users stand) and a row-wise dot: a GEMM fused with the dot, no (B, n)
// array, and the next rows prefetched a block ahead (the loop is compute-bound).
inline void score_pairs_factored(const KernelTable& table, const Rows& users, const Rows& rows, const float* left,
                                 const float* right, index_t rank, const float* diag, float bias, float* out,
                                 int threads) {
  using namespace ops_detail;
  constexpr index_t kStep = 8, kAhead = 64;
  const index_t dim = rows.dim;
  std::vector<float> left_copy, right_copy;
  index_t pad = 0;
  const float* left_packed = pack_columns(left, dim, rank, left_copy, pad);
  const float* right_packed = right ? pack_columns(right, dim, rank, right_copy, pad) : nullptr;
  parallel_chunks(rows.count, threads, min_rows_per_task(dim, right ? 2 * rank : rank), kAhead,
                  [&](int, index_t begin, index_t end) {
                    std::vector<float> x(static_cast<size_t>(kStep * pad)), y(right ? x.size() : 0);
                    float extra[kStep];
                    for (index_t s = begin; s < end; s += kStep) {
                      const index_t step = std::min(kStep, end - s);
                      const index_t ahead = std::min(end, s + kAhead), ahead_end = std::min(end, s + kAhead + step);
                      prefetch_rows(users, ahead, ahead_end);
                      prefetch_rows(rows, ahead, ahead_end);
                      table.score_tile_f32(left_packed, pad, users.row(s), step, dim, users.stride, 0.0f,
                                           nullptr, x.data());
                      if (right != nullptr) {
                        table.score_tile_f32(right_packed, pad, rows.row(s), step, dim, rows.stride, 0.0f,
                                             nullptr, y.data());
                        table.score_pairs_f32(x.data(), pad, y.data(), pad, nullptr, step, rank, bias, out + s);
                      } else {
                        table.score_pairs_f32(x.data(), pad, rows.row(s), rows.stride, nullptr, step, dim, bias,
                                              out + s);
                      }
                      if (diag != nullptr) {
                        table.score_pairs_f32(users.row(s), users.stride, rows.row(s), rows.stride, diag, step, dim,
                                              0.0f, extra);
                        for (index_t i = 0; i < step; ++i) out[s + i] += extra[i];
                      }
                    }
                  });
}

// out[i] = users[i]^T S rows[i] + bias, S (dim, dim) row-major.
inline void score_pairs_full(const KernelTable& table, const Rows& users, const Rows& rows, const float* S,
                             float bias, float* out, int threads) {
  score_pairs_factored(table, users, rows, S, nullptr, rows.dim, nullptr, bias, out, threads);
}

// out[i * out_stride + j] = sum_d x[i][d] w[d][j] for j < cols, w (x.dim, cols) row-major: a
// small GEMM on the cross tile, which folds users (users S, users P) without a BLAS whose idle
// threads would spin on the cores that the scoring needs next.
inline void matmul(const KernelTable& table, const Rows& x, const float* w, index_t cols, float* out,
                   index_t out_stride, int threads) {
  using namespace ops_detail;
  std::vector<float> copy;
  index_t pad = 0;
  const float* packed = pack_columns(w, x.dim, cols, copy, pad);
  parallel_chunks(x.count, threads, min_rows_per_task(x.dim, pad), kTileCandidates,
                  [&](int, index_t begin, index_t end) {
                    std::vector<float> tile(static_cast<size_t>(kTileCandidates * pad));
                    for (index_t r0 = begin; r0 < end; r0 += kTileCandidates) {
                      const index_t count = std::min(kTileCandidates, end - r0);
                      table.score_tile_f32(packed, pad, x.row(r0), count, x.dim, x.stride, 0.0f, nullptr,
                                           tile.data());
                      for (index_t i = 0; i < count; ++i)
                        std::copy(tile.data() + i * pad, tile.data() + i * pad + cols, out + (r0 + i) * out_stride);
                    }
                  });
}

// The best k (k <= number of candidates) of query . candidate + bias, best first, over every
// row or over the candidates ids[0..n_ids) (ascending) when ids is set.
inline void topk_one(const KernelTable& table, const float* query, const PackedRows& rows, index_t k,
                     float bias, float* out_scores, index_t* out_ids, int threads,
                     const index_t* ids = nullptr, index_t n_ids = 0) {
  using namespace ops_detail;
  const OneQuery score(table, query, rows, bias, ids);
  const index_t n = ids ? n_ids : rows.count;
  const index_t min_chunk = std::max(min_rows_per_task(rows.dim), 4 * k);
  const index_t tasks = std::max<index_t>(1, std::min<index_t>(threads, n / min_chunk));
  if (tasks <= 1) {
    topk_range(table, score, 0, n, k, out_scores, out_ids);
    return;
  }
  std::vector<float> scores(static_cast<size_t>(tasks * k));
  std::vector<index_t> found(static_cast<size_t>(tasks * k));
  std::vector<index_t> counts(static_cast<size_t>(tasks), 0);
  parallel_chunks(n, static_cast<int>(tasks), min_chunk, kBlock, [&](int t, index_t begin, index_t end) {
    counts[t] = topk_range(table, score, begin, end, k, scores.data() + t * k, found.data() + t * k);
  });
  merge_lists(scores, found, counts, 0, 1, tasks, k, out_scores, out_ids);
}

inline void topk_one(const KernelTable& table, const float* query, const Rows& rows, index_t k, float bias,
                     float* out_scores, index_t* out_ids, int threads) {
  topk_one(table, query, packed(rows), k, bias, out_scores, out_ids, threads);
}

// For each user u, the best k (k <= rows.count) of users[u] . rows[c] + bias, best first, in
// out_scores[u * k ...]. The (users x rows) score matrix is never formed: tiles of it are
// scanned into per-user heaps as they are computed. The candidates are read once for all
// users in any storage type (16-bit rows widened a tile at a time, int8 rows on the int8 tile),
// except int8 on an ISA without a byte dot product, which goes user by user.
inline void topk_cross(const KernelTable& table, const Rows& users, const PackedRows& rows, index_t k,
                       float bias, float* out_scores, index_t* out_ids, int threads) {
  using namespace ops_detail;
  if (rows.dtype == Dtype::i8 && table.score_tile_i8 == nullptr) {  // no byte dot product: user by user
    for (index_t u = 0; u < users.count; ++u)
      topk_one(table, users.row(u), rows, k, bias, out_scores + u * k, out_ids + u * k, threads);
    return;
  }
  const index_t block_users = users_per_block(users.dim);
  const index_t max_tasks = std::max<index_t>(1, std::min<index_t>(threads, rows.count / std::max<index_t>(4 * k, kTileCandidates)));
  std::vector<float> scores;
  std::vector<index_t> ids, counts;
  for (index_t u0 = 0; u0 < users.count; u0 += block_users) {
    const index_t u1 = std::min(users.count, u0 + block_users), n_users = u1 - u0;
    const UserBlock block(table, users, u0, u1, rows);
    const index_t pad = block.pad();
    scores.assign(static_cast<size_t>(max_tasks * n_users * k), 0.0f);
    ids.assign(scores.size(), 0);
    counts.assign(static_cast<size_t>(max_tasks * n_users), 0);
    parallel_chunks(rows.count, static_cast<int>(max_tasks),
                    std::max(min_rows_per_task(rows.dim, pad), 4 * k), kTileCandidates,
                    [&](int t, index_t begin, index_t end) {
                      std::vector<TopK> heaps;
                      // the padding lanes' gates are +inf: their scores pass only as NaN, which the
                      // exact per-user test below then drops
                      std::vector<float> gates(static_cast<size_t>(pad), std::numeric_limits<float>::infinity());
                      heaps.reserve(static_cast<size_t>(n_users));
                      for (index_t u = 0; u < n_users; ++u) {
                        const index_t slot = t * n_users + u;
                        heaps.emplace_back(scores.data() + slot * k, ids.data() + slot * k, k);
                        gates[u] = heaps.back().gate();
                      }
                      std::vector<float> tile(static_cast<size_t>(kTileCandidates * pad)), scratch;
                      std::uint64_t bits[(kMaxBlockUsers + 63) / 64];
                      for (index_t c0 = begin; c0 < end; c0 += kTileCandidates) {
                        const index_t count = std::min(kTileCandidates, end - c0);
                        prefetch_rows(rows, c0 + kTileCandidates, std::min(end, c0 + 2 * kTileCandidates));
                        std::uint64_t hits = block.score(c0, count, bias, gates.data(), tile.data(), scratch);
                        for (; hits != 0; hits &= hits - 1) {
                          const index_t c = __builtin_ctzll(hits);
                          const float* row_scores = tile.data() + c * pad;
                          if (!table.not_below_bits_f32(row_scores, gates.data(), n_users, bits)) continue;
                          for (index_t w = 0; w * 64 < n_users; ++w)
                            for (std::uint64_t word = bits[w]; word != 0; word &= word - 1) {
                              const index_t u = w * 64 + __builtin_ctzll(word);
                              heaps[u].push(row_scores[u], c0 + c);
                              gates[u] = heaps[u].gate();
                            }
                        }
                      }
                      for (index_t u = 0; u < n_users; ++u) counts[t * n_users + u] = heaps[u].finish();
                    });
    for (index_t u = 0; u < n_users; ++u)
      merge_lists(scores, ids, counts, u, n_users, max_tasks, k, out_scores + (u0 + u) * k, out_ids + (u0 + u) * k);
  }
}

inline void topk_cross(const KernelTable& table, const Rows& users, const Rows& rows, index_t k, float bias,
                       float* out_scores, index_t* out_ids, int threads) {
  topk_cross(table, users, packed(rows), k, bias, out_scores, out_ids, threads);
}

namespace ops_detail {
// Sums 64-byte lines with four independent vector accumulators, so the loop is bound by memory,
// not by the adds (a baseline build's 16-byte adds fall short of DRAM bandwidth here), and with
// the same software prefetch as the streaming kernels, or the floor would be theirs to beat.
#if SPLITNET_KERNELS_HAVE_X86
__attribute__((target("avx2"))) inline std::uint64_t sum_lines_avx2(const std::uint64_t* words, index_t n) {
  __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  index_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const auto* p = reinterpret_cast<const __m256i*>(words + i);
    if (i + 528 <= n) prefetch_bytes(words + i + 512, 128);  // 4 KiB ahead, as the kernels ask
    acc0 = _mm256_add_epi64(acc0, _mm256_loadu_si256(p));
    acc1 = _mm256_add_epi64(acc1, _mm256_loadu_si256(p + 1));
    acc2 = _mm256_add_epi64(acc2, _mm256_loadu_si256(p + 2));
    acc3 = _mm256_add_epi64(acc3, _mm256_loadu_si256(p + 3));
  }
  alignas(32) std::uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_add_epi64(_mm256_add_epi64(acc0, acc1), _mm256_add_epi64(acc2, acc3)));
  std::uint64_t sum = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  for (; i < n; ++i) sum += words[i];
  return sum;
}
#endif

inline std::uint64_t sum_words(const std::uint64_t* words, index_t n) {
#if SPLITNET_KERNELS_HAVE_X86
  if (isa_supported(Isa::avx2)) return sum_lines_avx2(words, n);
#endif
  std::uint64_t sum = 0;
  for (index_t i = 0; i < n; ++i) sum += words[i];
  return sum;
}
}  // namespace ops_detail

// Reads every byte of [data, data + bytes) once, across threads: the memory-read floor that
// the benchmarks compare the streaming kernels against. Returns a checksum so nothing is elided.
inline std::uint64_t read_bytes(const void* data, index_t bytes, int threads) {
  const auto* words = static_cast<const std::uint64_t*>(data);
  std::vector<std::uint64_t> partial(static_cast<size_t>(std::max(threads, 1)), 0);
  parallel_chunks(bytes / 8, threads, index_t{1} << 16, 64, [&](int t, index_t begin, index_t end) {
    partial[t] = ops_detail::sum_words(words + begin, end - begin);
  });
  std::uint64_t sum = 0;
  for (auto p : partial) sum += p;
  return sum;
}

}  // namespace splitnet
