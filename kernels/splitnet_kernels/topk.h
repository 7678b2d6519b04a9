// The top-k order (order_key, ranks_before) and exact top-k selection in it: a threshold-gated
// heap for small k and partial selection for large k. Both give the same answer; results come out
// best first.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "filter.h"
#include "isa.h"

namespace splitnet {

// The top-k order: scores rank by value, descending; NaN ranks below every number (below -inf);
// equal scores (and +0 / -0) rank by the lower candidate index first. order_key maps a float to
// an int32 that sorts the same way, so comparisons are exact and total.
inline std::int32_t order_key(float score) {
  if (std::isnan(score)) return INT32_MIN;
  score += 0.0f;  // -0 becomes +0: equal scores must tie
  std::int32_t bits;
  std::memcpy(&bits, &score, sizeof bits);
  return bits ^ ((bits >> 31) & 0x7FFFFFFF);
}

inline bool ranks_before(float score_a, index_t id_a, float score_b, index_t id_b) {
  const std::int32_t ka = order_key(score_a), kb = order_key(score_b);
  return ka > kb || (ka == kb && id_a < id_b);
}

namespace detail {
constexpr float kInf = std::numeric_limits<float>::infinity();
}  // namespace detail

// Slots [count, k) of a best-k list: padding, score NaN and id -1 (a user allowed fewer than k
// candidates gets them, then padding).
inline void pad(index_t count, index_t k, float* scores, index_t* ids) {
  for (index_t i = count; i < k; ++i) scores[i] = std::numeric_limits<float>::quiet_NaN(), ids[i] = -1;
}

// The best k of everything pushed, by one of two means. For small k, a binary heap whose top is
// the worst kept entry: the gate rises with every accepted entry, which matters when there are
// few candidates (a 1,000-ad request). For larger k, entries that pass the gate are appended to
// a buffer of 2k and partial selection keeps the best k when it fills: amortized O(1) per entry,
// without the mispredicted branches of sifting a deep heap. gate() is the cheap pre-test: a
// score s can enter only if !(s < gate()) (NaN passes; the exact order decides).
class TopK {
 public:
  static constexpr index_t kHeapMaxK = 32;
  static constexpr index_t kLanes = 16;

  // Small k (the serving case) keeps its heap inside the object: a small call allocates nothing.
  TopK(float* out_scores, index_t* out_ids, index_t k)
      : out_scores_(out_scores), out_ids_(out_ids), k_(k), capacity_(k <= kHeapMaxK ? k : 2 * k) {
    if (capacity_ > kHeapMaxK) spill_.resize(static_cast<size_t>(capacity_));
  }

  float gate() const { return gate_; }
  // A lower bound on the k-th best of everything pushed: the gate, or -inf while it is NaN.
  float floor() const { return std::isnan(gate_) ? -std::numeric_limits<float>::infinity() : gate_; }

  void push(float score, index_t id) {
    const Entry entry{order_key(score), score, id};
    if (k_ <= kHeapMaxK) {
      if (size_ < k_) {
        begin()[size_++] = entry;
        std::push_heap(begin(), end(), before);
      } else if (before(entry, *begin())) {
        std::pop_heap(begin(), end(), before);
        end()[-1] = entry;
        std::push_heap(begin(), end(), before);
      } else {
        return;
      }
      if (size_ == k_) set_gate(begin()->score);
      return;
    }
    if (size_ == capacity_) {
      keep_best(k_);  // begin()[k - 1] is now the k-th best
      set_gate(begin()[k_ - 1].score);
    }
    begin()[size_++] = entry;
  }

  // Offers the scores of candidates first, first + 1, ... (or ids[first], ids[first + 1], ...
  // when ids is set); the kernel table's vectorized pre-test skips the scores below the gate, so
  // only those that may enter are looked at one by one.
  // With a filter (ids null), only the candidates it allows are offered (and the lane bound,
  // which counts every score of the block, is not taken).
  void scan(const float* scores, index_t n, index_t first, const index_t* ids, const KernelTable& table,
            Filter filter = {}) {
    if (std::isnan(gate_) && k_ <= kLanes && !filter) set_floor(lane_bound(scores, n, table));
    const auto offer = [&](index_t i) {
      if (!filter || filter.allows(first + i)) push(scores[i], ids ? ids[first + i] : first + i);
    };
    index_t i = 0;
    for (; i < n && std::isnan(gate_); ++i) offer(i);  // all enter
    for (i += table.first_not_below_f32(scores + i, n - i, gate_); i < n;) {
      offer(i);
      ++i;
      i += table.first_not_below_f32(scores + i, n - i, gate_);
    }
  }

  // Writes the kept entries best first to the outputs, then padding (score NaN, id -1) up to k;
  // returns how many were kept (min(k, pushed)).
  index_t finish() {
    const index_t count = std::min(k_, size_);
    keep_best(count);
    std::sort(begin(), end(), before);
    for (index_t i = 0; i < count; ++i) {
      out_scores_[i] = begin()[i].score;
      out_ids_[i] = begin()[i].id;
    }
    pad(count, k_, out_scores_, out_ids_);
    return count;
  }

 private:
  struct Entry {
    std::int32_t key;
    float score;
    index_t id;
  };
  static bool before(const Entry& a, const Entry& b) { return a.key > b.key || (a.key == b.key && a.id < b.id); }

  Entry* begin() { return spill_.empty() ? inline_ : spill_.data(); }
  Entry* end() { return begin() + size_; }

  void keep_best(index_t count) {
    if (size_ > count) {
      std::nth_element(begin(), begin() + (count - 1), end(), before);
      size_ = count;
    }
  }

  // A lower bound on the k-th best score of a block (k <= 16): the k-th largest of its 16 lane
  // maxima, the maxima of 16 disjoint subsets, so k distinct scores reach it and no score below
  // it can be in the top k. Before the heap is full it stands in for the gate, which spares most
  // of the pushes of a small request (1,000 candidates, k = 10: about 17 instead of about 56).
  float lane_bound(const float* scores, index_t n, const KernelTable& table) const {
    float lanes[kLanes];
    table.max_lanes_f32(scores, n, lanes);
    std::nth_element(lanes, lanes + (k_ - 1), lanes + kLanes, [](float a, float b) { return a > b; });
    return lanes[k_ - 1];
  }

  void set_floor(float bound) {
    floor_ = bound;
    if (bound > -std::numeric_limits<float>::infinity()) gate_ = bound;
  }

  void set_gate(float kth) { gate_ = std::isnan(kth) ? floor_ : std::max(floor_, kth); }

  float* out_scores_;
  index_t* out_ids_;
  index_t k_, capacity_, size_ = 0;
  Entry inline_[kHeapMaxK];   // the entries while capacity <= kHeapMaxK,
  std::vector<Entry> spill_;  // else here
  float floor_ = -std::numeric_limits<float>::infinity();  // a lower bound on the k-th best
  float gate_ = std::numeric_limits<float>::quiet_NaN();  // NaN: not yet k entries, all may enter
};

// The best k of (scores[i], ids[i]), i < n, written best first to out_scores / out_ids, then
// padding up to k slots. Returns min(k, n). O(n + k log k).
inline index_t select_best(const float* scores, const index_t* ids, index_t n, index_t slots,
                           float* out_scores, index_t* out_ids) {
  const index_t k = std::min(slots, n);
  std::vector<index_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), index_t{0});
  auto better = [&](index_t a, index_t b) { return ranks_before(scores[a], ids[a], scores[b], ids[b]); };
  if (k < n) std::nth_element(order.begin(), order.begin() + k, order.end(), better);
  std::sort(order.begin(), order.begin() + k, better);
  for (index_t i = 0; i < k; ++i) {
    out_scores[i] = scores[order[i]];
    out_ids[i] = ids[order[i]];
  }
  pad(k, slots, out_scores, out_ids);
  return k;
}

}  // namespace splitnet
