// The operations callers use: score and top-k for one user, many users (cross) and pairs, on
// any kernel table, split across the thread pool when the work is large enough to pay for it.
// score / topk / score_pairs with a MetricForm fold the users first (fold.h); the rest take
// queries already folded. Each sweep over candidates is one loop handing its scores to a sink
// (sinks.h). Rows are contiguous along dim, with a row stride in elements.
#pragma once
#include <algorithm>
#include <vector>

#include "fold.h"
#include "operands.h"
#include "parallel.h"
#include "sinks.h"
#include "topk.h"
#include "tuning.h"

namespace splitnet {
namespace detail {

// One user: candidate positions [0, n) split into at most `tasks` chunks of at least min_chunk
// (aligned to granule); each chunk is scored a block at a time into the sink make_sink(task,
// begin, end) gives it. Returns nothing: the sinks hold the results.
template <class MakeSink>
void sweep_blocks(const OneQuery& score, index_t n, int tasks, index_t min_chunk, index_t granule,
                  MakeSink&& make_sink) {
  parallel_chunks(n, tasks, min_chunk, granule, [&](int t, index_t begin, index_t end) {
    auto sink = make_sink(t, begin, end);
    const index_t step = sink.block_size();
    for (index_t b = begin; b < end; b += std::min(step, end - b)) {
      const index_t count = std::min(step, end - b);
      float* scores = sink.block(b, count);
      score(b, count, scores);
      sink.add(scores, b, count, score.ids());
    }
    sink.finish();
  });
}

// Many users: for each block of users, candidates [0, rows.count) split into at most `tasks`
// chunks of at least min_chunk(pad), each swept a tile (kTileCandidates) at a time with the next
// tile prefetched; every finished tile goes to the chunk's sink, make_sink(task, u0, u1, pad).
// after_block(u0, u1, n_tasks) runs once each user block is done (to merge the tasks' results).
template <class MinChunk, class MakeSink, class AfterBlock>
void sweep_tiles(const KernelTable& table, const Rows& users, const StoredRows& rows, float bias, int tasks,
                 MinChunk&& min_chunk, MakeSink&& make_sink, AfterBlock&& after_block) {
  const index_t block_users = users_per_block(users.dim);
  for (index_t u0 = 0; u0 < users.count; u0 += block_users) {
    const index_t u1 = std::min(users.count, u0 + block_users);
    const UserBlock block(table, users, u0, u1, rows);
    const index_t pad = block.pad();
    parallel_chunks(rows.count, tasks, min_chunk(pad), kTileCandidates, [&](int t, index_t begin, index_t end) {
      auto sink = make_sink(t, u0, u1, pad);
      std::vector<float> tile(static_cast<size_t>(kTileCandidates * pad)), scratch;
      for (index_t c0 = begin; c0 < end; c0 += kTileCandidates) {
        const index_t count = std::min(kTileCandidates, end - c0);
        prefetch_rows(rows, c0 + kTileCandidates, std::min(end, c0 + 2 * kTileCandidates));
        const std::uint64_t hits = block.score(c0, count, bias, sink.gates(c0, count), tile.data(), scratch);
        sink.add_tile(tile.data(), pad, c0, count, hits);
      }
      sink.finish();
    });
    after_block(u0, u1);
  }
}

// Whether the cross tile can score this storage type on this table (int8 needs a byte dot
// product; without one the cross operations go user by user).
inline bool has_tile(const KernelTable& table, const StoredRows& rows) {
  return rows.dtype != Dtype::i8 || table.score_tile_i8 != nullptr;
}

}  // namespace detail

// out[i] = query . candidate i + bias, for the candidates ids[0..n_ids) when ids is set (the
// allowed subset, ascending) or for every row.
inline void score_one(const KernelTable& table, const float* query, const StoredRows& rows, float bias,
                      float* out, int threads, const index_t* ids = nullptr, index_t n_ids = 0) {
  using namespace detail;
  const OneQuery score(table, query, rows, bias, ids);
  sweep_blocks(score, ids ? n_ids : rows.count, threads, min_rows_per_task(rows.dim), 16,
               [&](int, index_t, index_t) { return StoreScores(out); });
}

inline void score_one(const KernelTable& table, const float* query, const Rows& rows, float bias,
                      float* out, int threads) {
  score_one(table, query, stored(rows), bias, out, threads);
}

// The best k (k <= number of candidates) of query . candidate + bias, best first, over every
// row, over the candidates ids[0..n_ids) (ascending) when ids is set, or over those the filter
// allows (every row read, the others left out where results are collected).
inline void topk_one(const KernelTable& table, const float* query, const StoredRows& rows, index_t k,
                     float bias, float* out_scores, index_t* out_ids, int threads,
                     const index_t* ids = nullptr, index_t n_ids = 0, Filter filter = {}) {
  using namespace detail;
  const OneQuery score(table, query, rows, bias, ids);
  const index_t n = ids ? n_ids : rows.count;
  const index_t min_chunk = std::max(min_rows_per_task(rows.dim), 4 * k);
  const index_t tasks = std::max<index_t>(1, std::min<index_t>(threads, n / min_chunk));
  if (tasks <= 1) {  // straight into the outputs: a serving call allocates nothing
    sweep_blocks(score, n, 1, min_chunk, kBlock, [&](int, index_t begin, index_t end) {
      return KeepTopK(table, k, begin, end, out_scores, out_ids, nullptr, filter);
    });
    return;
  }
  std::vector<float> scores(static_cast<size_t>(tasks * k));
  std::vector<index_t> found(static_cast<size_t>(tasks * k)), counts(static_cast<size_t>(tasks), 0);
  sweep_blocks(score, n, static_cast<int>(tasks), min_chunk, kBlock, [&](int t, index_t begin, index_t end) {
    return KeepTopK(table, k, begin, end, scores.data() + t * k, found.data() + t * k, &counts[t], filter);
  });
  merge_lists(scores, found, counts, 0, 1, tasks, k, out_scores, out_ids);
}

inline void topk_one(const KernelTable& table, const float* query, const Rows& rows, index_t k, float bias,
                     float* out_scores, index_t* out_ids, int threads) {
  topk_one(table, query, stored(rows), k, bias, out_scores, out_ids, threads);
}

// out[u * out_stride + c] = users[u] . rows[c] + bias, for candidates in any storage type.
inline void score_cross(const KernelTable& table, const Rows& users, const StoredRows& rows, float bias,
                        float* out, index_t out_stride, int threads) {
  using namespace detail;
  if (!has_tile(table, rows)) {
    for (index_t u = 0; u < users.count; ++u) score_one(table, users.row(u), rows, bias, out + u * out_stride, threads);
    return;
  }
  sweep_tiles(
      table, users, rows, bias, threads, [&](index_t pad) { return min_rows_per_task(rows.dim, pad); },
      [&](int, index_t u0, index_t u1, index_t) { return StoreTile(out, out_stride, u0, u1 - u0); },
      [](index_t, index_t) {});
}

inline void score_cross(const KernelTable& table, const Rows& users, const Rows& rows, float bias, float* out,
                        index_t out_stride, int threads) {
  score_cross(table, users, stored(rows), bias, out, out_stride, threads);
}

// For each user u, the best k (k <= rows.count) of users[u] . rows[c] + bias, best first, in
// out_scores[u * k ...]. The (users x rows) score matrix is never formed: tiles of it are
// scanned into per-user heaps as they are computed. The candidates are read once for all
// users in any storage type (16-bit rows widened a tile at a time, int8 rows on the int8 tile),
// except int8 on an ISA without a byte dot product, which goes user by user. A filter leaves
// out what it does not allow (one for every user, or each user's own). A user allowed fewer
// than k candidates gets them, then padding: score NaN, id -1 (TopK::finish).
inline void topk_cross(const KernelTable& table, const Rows& users, const StoredRows& rows, index_t k,
                       float bias, float* out_scores, index_t* out_ids, int threads, Filter filter = {}) {
  using namespace detail;
  if (!has_tile(table, rows)) {
    for (index_t u = 0; u < users.count; ++u)
      topk_one(table, users.row(u), rows, k, bias, out_scores + u * k, out_ids + u * k, threads, nullptr, 0,
               filter.user(u));
    return;
  }
  const index_t block_users = users_per_block(users.dim);
  const index_t max_tasks =
      std::max<index_t>(1, std::min<index_t>(threads, rows.count / std::max<index_t>(4 * k, kTileCandidates)));
  const index_t slots = max_tasks * std::min(block_users, users.count);
  std::vector<float> scores(static_cast<size_t>(slots * k));
  std::vector<index_t> ids(scores.size()), counts(static_cast<size_t>(slots));
  sweep_tiles(
      table, users, rows, bias, static_cast<int>(max_tasks),
      [&](index_t pad) { return std::max(min_rows_per_task(rows.dim, pad), 4 * k); },
      [&](int t, index_t u0, index_t u1, index_t pad) {
        return KeepTopKTile(table, k, u1 - u0, pad, t * (u1 - u0), scores.data(), ids.data(), counts.data(),
                            filter.from(u0));
      },
      [&](index_t u0, index_t u1) {
        const index_t n_users = u1 - u0;
        for (index_t u = 0; u < n_users; ++u)
          merge_lists(scores, ids, counts, u, n_users, max_tasks, k, out_scores + (u0 + u) * k, out_ids + (u0 + u) * k);
        std::fill(counts.begin(), counts.end(), 0);  // a task the next block leaves idle kept nothing
      });
}

inline void topk_cross(const KernelTable& table, const Rows& users, const Rows& rows, index_t k, float bias,
                       float* out_scores, index_t* out_ids, int threads) {
  topk_cross(table, users, stored(rows), k, bias, out_scores, out_ids, threads);
}

// out[i] = sum_d users[i][d] * weights[d] * rows[i][d] + bias; weights null means all ones.
inline void score_pairs(const KernelTable& table, const Rows& users, const Rows& rows,
                        const float* weights, float bias, float* out, int threads) {
  parallel_chunks(rows.count, threads, detail::min_rows_per_task(rows.dim, 2), 16,
                  [&](int, index_t begin, index_t end) {
                    table.score_pairs_f32(users.row(begin), users.stride, rows.row(begin), rows.stride,
                                          weights, end - begin, rows.dim, bias, out + begin);
                  });
}

// out[i] = (users[i] L) . (rows[i] R) + sum_d users[i][d] diag[d] rows[i][d] + bias, with L and R
// (dim, rank) row-major: a low-rank S = L R^T + diag(d). Null R stands for the identity (rank =
// dim), so L alone is a full S; null diag adds nothing. Steps of pairs go through the cross tile
// (L, R padded where the users stand) and a row-wise dot: a GEMM fused with the dot, no (B, n)
// array, and the next rows prefetched a block ahead (the loop is compute-bound). A full S alone
// (no R, no diag) takes the table's fused score_pairs_full_f32 where it has one: the same bits.
inline void score_pairs_factored(const KernelTable& table, const Rows& users, const Rows& rows, const float* left,
                                 const float* right, index_t rank, const float* diag, float bias, float* out,
                                 int threads) {
  using namespace detail;
  constexpr index_t kStep = 8, kAhead = 64;
  const index_t dim = rows.dim;
  std::vector<float> left_copy, right_copy;
  index_t pad = 0;
  const float* left_padded = pad_columns(left, dim, rank, left_copy, pad);
  const float* right_padded = right ? pad_columns(right, dim, rank, right_copy, pad) : nullptr;
  if (right == nullptr && diag == nullptr && table.score_pairs_full_f32 != nullptr)
    return parallel_chunks(rows.count, threads, min_rows_per_task(dim, rank), kAhead,
                           [&](int, index_t begin, index_t end) {
                             table.score_pairs_full_f32(left_padded, pad, users.row(begin), users.stride,
                                                        rows.row(begin), rows.stride, end - begin, dim, bias,
                                                        out + begin);
                           });
  parallel_chunks(rows.count, threads, min_rows_per_task(dim, right ? 2 * rank : rank), kAhead,
                  [&](int, index_t begin, index_t end) {
                    std::vector<float> x(static_cast<size_t>(kStep * pad)), y(right ? x.size() : 0);
                    float extra[kStep];
                    for (index_t s = begin; s < end; s += kStep) {
                      const index_t step = std::min(kStep, end - s);
                      const index_t ahead = std::min(end, s + kAhead), ahead_end = std::min(end, s + kAhead + step);
                      prefetch_rows(users, ahead, ahead_end);
                      prefetch_rows(rows, ahead, ahead_end);
                      table.score_tile_f32(left_padded, pad, users.row(s), step, dim, users.stride, 0.0f,
                                           nullptr, x.data());
                      if (right != nullptr) {
                        table.score_tile_f32(right_padded, pad, rows.row(s), step, dim, rows.stride, 0.0f,
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

// ---- Under a metric form: fold, then score ------------------------------------------------
namespace detail {
// The users folded (fold_users) into queries as wide as the stored rows; one short user folds
// into the object itself, so a serving call allocates nothing here.
class Queries {
 public:
  Queries(const KernelTable& table, const MetricForm& form, const Rows& users, index_t width, int threads)
      : buffer_(users.count * width), width_(width), count_(users.count) {
    fold_users(table, form, users, buffer_.data(), width, width, threads);
  }
  const float* row(index_t u) { return buffer_.data() + u * width_; }
  Rows rows() { return Rows{buffer_.data(), count_, width_, width_}; }

 private:
  FloatBuffer buffer_;
  index_t width_, count_;
};
}  // namespace detail

// Scores users (count >= 1 rows of form.dim) against stored candidates (rows.dim >= form.dim,
// zero past form.dim) under S = form, + bias: out[u * n + c] for candidate c of the allowed
// subset ids[0..n_ids) (ascending; n = n_ids) or of all rows (ids null; n = rows.count).
inline void score(const KernelTable& table, const Rows& users, const StoredRows& rows, const MetricForm& form,
                  float bias, const index_t* ids, index_t n_ids, float* out, int threads) {
  detail::Queries queries(table, form, users, rows.dim, threads);
  if (users.count == 1) return score_one(table, queries.row(0), rows, bias, out, threads, ids, n_ids);
  if (ids == nullptr) return score_cross(table, queries.rows(), rows, bias, out, rows.count, threads);
  for (index_t u = 0; u < users.count; ++u)  // an allowed subset: user by user
    score_one(table, queries.row(u), rows, bias, out + u * n_ids, threads, ids, n_ids);
}

// The best k (k <= the number of allowed candidates) of each user's scores as in score(), best
// first, at out_scores / out_ids + u * k; ids are candidate ids (indices into rows). The allowed
// candidates: ids[0..n_ids) (ascending) when ids is set, those the filter allows when it is set
// (not both), else every row.
inline void topk(const KernelTable& table, const Rows& users, const StoredRows& rows, const MetricForm& form,
                 float bias, const index_t* ids, index_t n_ids, index_t k, float* out_scores, index_t* out_ids,
                 int threads, Filter filter = {}) {
  if (k == 0 || users.count == 0) return;
  detail::Queries queries(table, form, users, rows.dim, threads);
  if (users.count == 1)
    return topk_one(table, queries.row(0), rows, k, bias, out_scores, out_ids, threads, ids, n_ids, filter.user(0));
  if (ids == nullptr) return topk_cross(table, queries.rows(), rows, k, bias, out_scores, out_ids, threads, filter);
  for (index_t u = 0; u < users.count; ++u)
    topk_one(table, queries.row(u), rows, k, bias, out_scores + u * k, out_ids + u * k, threads, ids, n_ids);
}

// out[i] = users[i]^T S ads[i] + bias under S = form: diagonal forms in one streaming pass
// (weights = form.diag), factored ones through score_pairs_factored's fused GEMM.
// All-ones weights (the dot form) take the unweighted pass: multiplying by one is exact, so the
// bits are the same, and the weighted pass read 10-20 % slower on 1M pairs (W5 dot, Zen 3).
inline void score_pairs(const KernelTable& table, const Rows& users, const Rows& ads, const MetricForm& form,
                        float bias, float* out, int threads) {
  if (form.left != nullptr)
    return score_pairs_factored(table, users, ads, form.left, form.right, form.rank, form.diag, bias, out, threads);
  const bool ones = std::all_of(form.diag, form.diag + form.dim, [](float w) { return w == 1.0f; });
  score_pairs(table, users, ads, ones ? nullptr : form.diag, bias, out, threads);
}

// Reads every byte of [data, data + bytes) once (bytes / 8 words), across threads: the
// memory-read floor that the benchmarks compare the streaming kernels against. Returns a
// checksum so nothing is elided.
inline std::uint64_t read_bytes(const KernelTable& table, const void* data, index_t bytes, int threads) {
  const auto* words = static_cast<const std::uint64_t*>(data);
  std::vector<std::uint64_t> partial(static_cast<size_t>(std::max(threads, 1)), 0);
  parallel_chunks(bytes / 8, threads, index_t{1} << 16, 64, [&](int t, index_t begin, index_t end) {
    partial[t] = table.sum_u64(words + begin, end - begin);
  });
  std::uint64_t sum = 0;
  for (auto p : partial) sum += p;
  return sum;
}

}  // namespace splitnet
