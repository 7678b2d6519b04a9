// What happens to scores once computed (FAISS's ResultHandler): the drivers (ops.h) sweep
// candidates and hand each finished block (one user) or tile (many users) to a sink, which
// stores the scores or keeps the top k. The sweeps are templates on the sink: no virtual call
// in a loop. One sink per task; the drivers merge what the tasks kept.
//
// A one-user sink takes the scores of consecutive candidate positions a block at a time:
//   index_t block_size() const              the most positions per block
//   float* block(index_t first, index_t n)  where the sweep writes positions [first, first + n)
//   void add(const float* scores, index_t first, index_t n, const index_t* ids)
//                                           the finished block; position p is candidate
//                                           ids[p] (the allowed subset), or p when ids is null
//   void finish()                           the task's last block is in
// A cross sink takes tiles: the scores of candidates [first, first + n) against a block of users,
// tile[c * pad + u] for candidate first + c and user u of the block:
//   const float* gates(index_t first, index_t n)
//                                           per-user thresholds for the tile kernel's pre-test of
//                                           candidates [first, first + n): bit c of `hits` says
//                                           whether candidate first + c has !(score < gate) for
//                                           some user; null when every score is wanted (hits is
//                                           then 0)
//   void add_tile(const float* tile, index_t pad, index_t first, index_t n, std::uint64_t hits)
//   void finish()
// A sink that keeps a threshold (top-k: its gate) returns it through gates() or applies it in
// add(). (The scan by expected value, values.h, has its own loops: it stops at a bid and
// claims blocks in order across tasks.)
#pragma once
#include <algorithm>
#include <limits>
#include <vector>

#include "operands.h"
#include "topk.h"
#include "tuning.h"

namespace splitnet {
namespace detail {

// One user: the scores written straight into out (position p at out[p]), in one block.
class StoreScores {
 public:
  explicit StoreScores(float* out) : out_(out) {}
  index_t block_size() const { return std::numeric_limits<index_t>::max(); }
  float* block(index_t first, index_t) { return out_ + first; }
  void add(const float*, index_t, index_t, const index_t*) {}
  void finish() {}

 private:
  float* out_;
};

// One user: the best k of positions [begin, end) (those the filter allows, where there is one),
// best first, into out_scores / out_ids (ids are candidate ids), and how many into *kept when
// kept is set. Small k: a gated heap over blocks of kBlock; a large k against few candidates:
// every score kept, then selected.
class KeepTopK {
 public:
  KeepTopK(const KernelTable& table, index_t k, index_t begin, index_t end, float* out_scores, index_t* out_ids,
           index_t* kept = nullptr, Filter filter = {})
      : table_(table), heap_(out_scores, out_ids, select_all_of(k, begin, end) ? 0 : k),
        select_all_(select_all_of(k, begin, end)), k_(k), begin_(begin), out_scores_(out_scores), out_ids_(out_ids),
        kept_(kept), filter_(filter) {
    if (select_all_) {
      all_scores_.resize(static_cast<size_t>(end - begin));
      all_ids_.resize(all_scores_.size());
    }
  }
  index_t block_size() const { return select_all_ ? std::numeric_limits<index_t>::max() : kBlock; }
  float* block(index_t first, index_t) { return select_all_ ? all_scores_.data() + (first - begin_) : buffer_; }
  void add(const float* scores, index_t first, index_t n, const index_t* ids) {
    if (!select_all_) return heap_.scan(scores, n, first, ids, table_, filter_);
    for (index_t i = 0; i < n; ++i) all_ids_[first - begin_ + i] = ids ? ids[first + i] : first + i;
  }
  void finish() {
    index_t n = static_cast<index_t>(all_scores_.size());
    if (select_all_ && filter_) {  // the allowed ones alone
      index_t m = 0;
      for (index_t i = 0; i < n; ++i)
        if (filter_.allows(all_ids_[i])) all_scores_[m] = all_scores_[i], all_ids_[m++] = all_ids_[i];
      n = m;
    }
    const index_t count = select_all_ ? select_best(all_scores_.data(), all_ids_.data(), n, k_, out_scores_, out_ids_)
                                      : heap_.finish();
    if (kept_ != nullptr) *kept_ = count;
  }

 private:
  static bool select_all_of(index_t k, index_t begin, index_t end) { return k > kSelectAboveK && k * 8 > end - begin; }

  const KernelTable& table_;
  TopK heap_;
  bool select_all_;
  index_t k_, begin_;
  float* out_scores_;
  index_t* out_ids_;
  index_t* kept_;
  Filter filter_;
  std::vector<float> all_scores_;
  std::vector<index_t> all_ids_;
  float buffer_[kBlock];
};

// Many users: each tile copied into the (users x candidates) matrix, user u0 + u at out +
// (u0 + u) * out_stride.
class StoreTile {
 public:
  StoreTile(float* out, index_t out_stride, index_t u0, index_t n_users)
      : out_(out + u0 * out_stride), out_stride_(out_stride), n_users_(n_users) {}
  const float* gates(index_t, index_t) const { return nullptr; }
  void add_tile(const float* tile, index_t pad, index_t first, index_t n, std::uint64_t) {
    for (index_t u = 0; u < n_users_; ++u) {
      float* dst = out_ + u * out_stride_ + first;
      const float* src = tile + u;
      for (index_t c = 0; c < n; ++c) dst[c] = src[c * pad];
    }
  }
  void finish() {}

 private:
  float* out_;
  index_t out_stride_, n_users_;
};

// Many users: the best k of each user of the block, into slots of k in scores / ids (user u's
// at slot first_slot + u), counts[first_slot + u] the number kept. Tiles are pre-tested against
// every user's gate on the registers (the tile kernel's hit bits, and the filter's where there
// is one: the block's users' own, from the block's first user on), then per user.
class KeepTopKTile {
 public:
  KeepTopKTile(const KernelTable& table, index_t k, index_t n_users, index_t pad, index_t first_slot,
               float* scores, index_t* ids, index_t* counts, Filter filter = {})
      // the padding lanes' gates are +inf: their scores pass only as NaN, which the exact
      // per-user test then drops
      : table_(table), filter_(filter), n_users_(n_users), counts_(counts + first_slot),
        gates_(static_cast<size_t>(pad), std::numeric_limits<float>::infinity()) {
    heaps_.reserve(static_cast<size_t>(n_users));
    for (index_t u = 0; u < n_users; ++u) {
      heaps_.emplace_back(scores + (first_slot + u) * k, ids + (first_slot + u) * k, k);
      gates_[u] = heaps_.back().gate();
    }
  }
  const float* gates(index_t, index_t) const { return gates_.data(); }
  void add_tile(const float* tile, index_t pad, index_t first, index_t n, std::uint64_t hits) {
    hits &= filter_.some(first, n, n_users_);
    std::uint64_t bits[(kMaxBlockUsers + 63) / 64];
    for (; hits != 0; hits &= hits - 1) {
      const index_t c = __builtin_ctzll(hits);
      const float* row_scores = tile + c * pad;
      if (!table_.not_below_bits_f32(row_scores, gates_.data(), n_users_, bits)) continue;
      for (index_t w = 0; w * 64 < n_users_; ++w)
        for (std::uint64_t word = bits[w]; word != 0; word &= word - 1) {
          const index_t u = w * 64 + __builtin_ctzll(word);
          if (!filter_.lets(u, first + c)) continue;
          heaps_[u].push(row_scores[u], first + c);
          gates_[u] = heaps_[u].gate();
        }
    }
  }
  void finish() {
    for (index_t u = 0; u < n_users_; ++u) counts_[u] = heaps_[u].finish();
  }


 private:
  const KernelTable& table_;
  Filter filter_;
  index_t n_users_;
  index_t* counts_;
  std::vector<TopK> heaps_;
  std::vector<float> gates_;
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

}  // namespace detail
}  // namespace splitnet
