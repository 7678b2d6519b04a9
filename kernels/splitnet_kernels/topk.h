// Exact top-k selection in the package's order (common.h): a threshold-gated heap for small k
// and partial selection for large k. Both give the same answer; results come out best first.
#pragma once
#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "common.h"

namespace splitnet {

// The best k of everything pushed, kept in caller-owned storage as a heap whose top is the
// worst kept entry. gate() is the cheap pre-test: a score s can enter only if !(s < gate()).
class TopK {
 public:
  TopK(float* scores, index_t* ids, index_t k) : scores_(scores), ids_(ids), k_(k) {}

  float gate() const { return gate_; }
  index_t size() const { return size_; }

  void push(float score, index_t id) {
    if (size_ < k_) {
      scores_[size_] = score;
      ids_[size_] = id;
      ++size_;
      sift_up(size_ - 1);
    } else if (ranks_before(score, id, scores_[0], ids_[0])) {
      scores_[0] = score;
      ids_[0] = id;
      sift_down(0);
    } else {
      return;
    }
    if (size_ == k_) gate_ = std::isnan(scores_[0]) ? -std::numeric_limits<float>::infinity() : scores_[0];
  }

  // Offers the scores of candidates first, first + 1, ... (or ids[first], ids[first + 1], ...
  // when ids is set); first_not_below is the kernel table's vectorized pre-test, so only the
  // scores that may enter are looked at one by one.
  template <class FirstNotBelow>
  void scan(const float* scores, index_t n, index_t first, const index_t* ids, FirstNotBelow first_not_below) {
    for (index_t i = first_not_below(scores, n, gate_); i < n;) {
      push(scores[i], ids ? ids[first + i] : first + i);
      ++i;
      i += first_not_below(scores + i, n - i, gate_);
    }
  }

  // Sorts the kept entries best first, in place; returns how many there are.
  index_t finish() {
    for (index_t end = size_; end > 1; --end) {  // heapsort: the worst goes to the back
      std::swap(scores_[0], scores_[end - 1]);
      std::swap(ids_[0], ids_[end - 1]);
      sift_down(0, end - 1);
    }
    return size_;
  }

 private:
  // Heap order: a parent ranks after (is worse than) its children.
  bool worse(index_t a, index_t b) const { return ranks_before(scores_[b], ids_[b], scores_[a], ids_[a]); }
  void swap_entries(index_t a, index_t b) {
    std::swap(scores_[a], scores_[b]);
    std::swap(ids_[a], ids_[b]);
  }
  void sift_up(index_t i) {
    while (i > 0) {
      const index_t parent = (i - 1) / 2;
      if (!worse(i, parent)) break;
      swap_entries(i, parent);
      i = parent;
    }
  }
  void sift_down(index_t i) { sift_down(i, size_); }
  void sift_down(index_t i, index_t n) {
    for (;;) {
      index_t worst = i;
      const index_t left = 2 * i + 1, right = left + 1;
      if (left < n && worse(left, worst)) worst = left;
      if (right < n && worse(right, worst)) worst = right;
      if (worst == i) return;
      swap_entries(i, worst);
      i = worst;
    }
  }

  float* scores_;
  index_t* ids_;
  index_t k_;
  index_t size_ = 0;
  float gate_ = std::numeric_limits<float>::quiet_NaN();  // NaN: not full, everything may enter
};

// The best k of (scores[i], ids[i]), i < n, written best first to out_scores / out_ids.
// Returns min(k, n). O(n + k log k).
inline index_t select_best(const float* scores, const index_t* ids, index_t n, index_t k,
                           float* out_scores, index_t* out_ids) {
  k = std::min(k, n);
  std::vector<index_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), index_t{0});
  auto better = [&](index_t a, index_t b) { return ranks_before(scores[a], ids[a], scores[b], ids[b]); };
  if (k < n) std::nth_element(order.begin(), order.begin() + k, order.end(), better);
  std::sort(order.begin(), order.begin() + k, better);
  for (index_t i = 0; i < k; ++i) {
    out_scores[i] = scores[order[i]];
    out_ids[i] = ids[order[i]];
  }
  return k;
}

}  // namespace splitnet
