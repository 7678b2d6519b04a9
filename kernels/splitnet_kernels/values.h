// Campaign objectives: the best k by expected value, bid * sigmoid(logit), fused into the scan.
// A candidate set with objectives is packed by objective, and within one objective by bid,
// descending (python/splitnet_kernels/_objectives.py, Grouping). A value never exceeds its bid,
// so a scan over one objective's rows stops at the first row whose bid is below every user's
// k-th best value, and it forms a value (a double exp) only for the rows whose logit passes a
// gate: the k-th value turned back into a logit bound for the highest bid still ahead.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "ops.h"
#include "tuning.h"

namespace splitnet {

// The probability as the package reports it: the sigmoid in double, rounded once to float32, so
// it is monotone in x and keeps small probabilities (python/.../_objectives.py, _sigmoid_, is
// the same formula for builds without these kernels).
inline float probability(float x) {
  const double wide = x, e = std::exp(-std::fabs(wide));
  return static_cast<float>(wide >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e));
}

// The expected value: the float32 product of the bid and the probability (never above the bid).
inline float expected_value(float logit, float bid) { return bid * probability(logit); }

namespace detail {

// A logit below which no candidate of bid <= bid_max reaches the value `floor`:
// x < logit_gate(floor, bid_max) implies expected_value(x, bid) < floor. Each float32 rounding
// (of the probability, then of the product) raises a number by at most a factor 1 + 2^-24 and,
// where the result is subnormal, by 2^-150; the double sigmoid errs by ~1e-16. So the bound is
// taken at the probability those allow, less a margin of 2^-20 (far more than they need), and
// rounded down to float32. (derived in docs/design.md, "Ranking by value")
inline float logit_gate(float floor, float bid_max) {
  if (!(floor > 0.0f)) return -kInf;  // every value >= 0 >= floor may enter (NaN logits pass too)
  if (!(bid_max > 0.0f)) return kInf;  // every value is 0 (or NaN), below a positive floor
  const double p = ((static_cast<double>(floor) - 0x1p-150) / (static_cast<double>(bid_max) * (1.0 + 0x1p-23)) -
                    0x1p-150) * (1.0 - 0x1p-20);
  if (!(p > 0.0)) return -kInf;
  if (p >= 1.0) return kInf;  // only +inf and NaN logits pass, and the exact test drops them
  const double g = std::log(p) - std::log1p(-p);
  float gate = static_cast<float>(g);
  if (static_cast<double>(gate) > g) gate = std::nextafter(gate, -kInf);
  return gate;
}

// Floors shared by the tasks of one scan: each task's k-th value bounds the joint k-th from
// below, so every task may stop at, and gate on, the largest of them.
class SharedFloors {
 public:
  explicit SharedFloors(index_t n) : floors_(static_cast<size_t>(n)) {
    for (auto& f : floors_) f.store(-kInf, std::memory_order_relaxed);
  }
  float get(index_t u) const { return floors_[u].load(std::memory_order_relaxed); }
  void raise(index_t u, float value) {
    float current = get(u);
    while (value > current && !floors_[u].compare_exchange_weak(current, value, std::memory_order_relaxed)) {
    }
  }

 private:
  std::vector<std::atomic<float>> floors_;
};

// A user's logit gate, recomputed (two logs) only when its floor has risen by 1/64 or the highest
// bid ahead has fallen by 1/64 since the last time: a stale gate is lower, so still sound.
struct CachedGate {
  float floor = -kInf, bid = kInf, gate = -kInf;

  float update(float new_floor, float bid_max) {
    const bool floor_rose = new_floor > 0.0f && !(new_floor <= floor + floor * (1.0f / 64));
    if (floor_rose || bid_max < bid - bid * (1.0f / 64) || std::isinf(bid)) {
      floor = new_floor, bid = bid_max;
      gate = logit_gate(floor, bid);
    }
    return gate;
  }
};

// Rows [begin, end) of one objective in blocks that the tasks claim in order (bids descend along
// them), until one task finds a block whose first bid is below the floor: then no row from there
// to the objective's last can enter, and no task claims another block.
class Blocks {
 public:
  Blocks(index_t begin, index_t end, index_t size) : begin_(begin), end_(end), size_(size) {}
  // The next block as [first, last); false when there is none.
  bool claim(index_t& first, index_t& last) {
    if (stopped_.load(std::memory_order_relaxed)) return false;
    first = begin_ + next_.fetch_add(1, std::memory_order_relaxed) * size_;
    if (first >= end_) return false;
    last = std::min(end_, first + size_);
    return true;
  }
  // Rows a task scored: the part of a claimed block before its first bid below the floor.
  void scored(index_t rows) { scored_.fetch_add(rows, std::memory_order_relaxed); }
  index_t scored() const { return scored_.load(std::memory_order_relaxed); }
  void stop() { stopped_.store(true, std::memory_order_relaxed); }
  bool stopped() const { return stopped_.load(std::memory_order_relaxed); }

 private:
  index_t begin_, end_, size_;
  std::atomic<index_t> next_{0}, scored_{0};
  std::atomic<bool> stopped_{false};
};

// The users' lists (counts[u] entries at scores / ids + u * k, best first) merged with what the
// tasks kept (task t, user u at slot t * n_users + u), written back best first.
inline void merge_into(index_t n_users, index_t k, index_t tasks, float* scores, index_t* ids, index_t* counts,
                       const std::vector<float>& task_scores, const std::vector<index_t>& task_ids,
                       const std::vector<index_t>& task_counts) {
  std::vector<float> all_scores;
  std::vector<index_t> all_ids;
  for (index_t u = 0; u < n_users; ++u) {
    all_scores.assign(scores + u * k, scores + u * k + counts[u]);
    all_ids.assign(ids + u * k, ids + u * k + counts[u]);
    for (index_t t = 0; t < tasks; ++t) {
      const index_t slot = t * n_users + u;
      all_scores.insert(all_scores.end(), task_scores.begin() + slot * k, task_scores.begin() + slot * k + task_counts[slot]);
      all_ids.insert(all_ids.end(), task_ids.begin() + slot * k, task_ids.begin() + slot * k + task_counts[slot]);
    }
    counts[u] = select_best(all_scores.data(), all_ids.data(), static_cast<index_t>(all_scores.size()), k,
                            scores + u * k, ids + u * k);
  }
}

// The k-th of each full list, as the scan's starting floors.
inline void seed_floors(SharedFloors& floors, index_t n_users, index_t k, const float* scores, const index_t* counts) {
  for (index_t u = 0; u < n_users; ++u)
    if (counts[u] == k && !std::isnan(scores[u * k + k - 1])) floors.raise(u, scores[u * k + k - 1]);
}

// The lowest floor of users [0, n): a row whose bid is below it enters no list.
inline float lowest_floor(const SharedFloors& floors, index_t n) {
  float lowest = kInf;
  for (index_t u = 0; u < n; ++u) lowest = std::min(lowest, floors.get(u));
  return lowest;
}

}  // namespace detail

// One objective's rows in a top-k by value. rows: the objective's packed rows (all of them);
// bids[r] (descending in r) and ids[r] (the id a result reports) per row; positions, when set,
// the allowed rows (ascending, n_positions of them), else every row. Scanned: positions (or rows)
// [begin, end), against queries (the users folded under the objective's metric) + bias.
struct ValueScan {
  const StoredRows& rows;
  const float* bids;
  const index_t* ids;
  const index_t* positions;
  index_t n_positions;
  index_t begin, end;
  float bias;
  index_t row(index_t i) const { return positions ? positions[i] : i; }
  index_t size() const { return positions ? n_positions : rows.count; }  // positions to scan in all
};

// Continues each user's best-k list by value (counts[u] entries at scores / ids + u * k, best
// first, ties to the lower id, NaN last) with the scan's rows. Returns where a later scan of the
// objective resumes (`end`, or scan.size() when every user stopped at a bid below its k-th
// value: nothing from there on can enter) and how many rows were scored (a row read once for a
// block of users counts once). One user streams blocks of rows; many users go through the cross
// tile (without an allowed subset), its pre-test on the registers against each user's logit gate.
struct ValueScanned {
  index_t resume, scored;
};
inline ValueScanned topk_value(const KernelTable& table, const Rows& queries, const ValueScan& scan, index_t k,
                               float* scores, index_t* ids, index_t* counts, int threads);

namespace detail {

inline index_t value_tasks(int threads, index_t rows, index_t min_rows) {
  return std::max<index_t>(1, std::min<index_t>(threads, rows / std::max<index_t>(min_rows, 1)));
}

// One user: blocks of kBlock rows, each scored into a buffer, values formed where the logit
// passes the gate, pushed into the task's heap.
// Returns whether it stopped at a bid; adds the rows it scored to *scored.
inline bool value_one(const KernelTable& table, const float* query, const ValueScan& scan, index_t k,
                      float* scores, index_t* ids, index_t* count, int threads, index_t* scored) {
  const OneQuery score(table, query, scan.rows, scan.bias, scan.positions);
  const index_t tasks = value_tasks(threads, scan.end - scan.begin, std::max(min_rows_per_task(scan.rows.dim), 4 * k));
  SharedFloors floors(1);
  seed_floors(floors, 1, k, scores, count);
  Blocks blocks(scan.begin, scan.end, kBlock);
  std::vector<float> task_scores(static_cast<size_t>(tasks * k));
  std::vector<index_t> task_ids(task_scores.size()), task_counts(static_cast<size_t>(tasks), 0);
  parallel_chunks(tasks, static_cast<int>(tasks), 1, 1, [&](int t, index_t, index_t) {
    TopK heap(task_scores.data() + t * k, task_ids.data() + t * k, k);
    CachedGate gate;
    float logits[kBlock];
    index_t first, last;
    while (blocks.claim(first, last)) {
      const float floor = std::max(heap.floor(), floors.get(0));
      if (scan.bids[scan.row(first)] < floor) {
        blocks.stop();
        break;
      }
      const float g = gate.update(floor, scan.bids[scan.row(first)]);
      score(first, last - first, logits);
      blocks.scored(last - first);
      for (index_t i = table.first_not_below_f32(logits, last - first, g); i < last - first;) {
        const index_t r = scan.row(first + i);
        heap.push(expected_value(logits[i], scan.bids[r]), scan.ids[r]);
        ++i;
        i += table.first_not_below_f32(logits + i, last - first - i, g);
      }
      floors.raise(0, heap.floor());
    }
    task_counts[t] = heap.finish();
  });
  merge_into(1, k, tasks, scores, ids, count, task_scores, task_ids, task_counts);
  *scored += blocks.scored();
  return blocks.stopped();
}

// Many users, no allowed subset: per block of users, tiles of kTileCandidates rows claimed in
// order by the tasks, each task with a heap per user. Returns whether every block of users
// stopped at a bid; adds the rows it scored (once per block of users) to *scored.
inline bool value_cross(const KernelTable& table, const Rows& queries, const ValueScan& scan, index_t k,
                        float* scores, index_t* ids, index_t* counts, int threads, index_t* scored) {
  const index_t block_users = users_per_block(queries.dim);
  bool stopped = true;
  for (index_t u0 = 0; u0 < queries.count; u0 += block_users) {
    const index_t u1 = std::min(queries.count, u0 + block_users), n_users = u1 - u0;
    const UserBlock block(table, queries, u0, u1, scan.rows);
    const index_t pad = block.pad();
    const index_t tasks = value_tasks(threads, scan.end - scan.begin,
                                      std::max(min_rows_per_task(scan.rows.dim, pad), std::max(4 * k, kTileCandidates)));
    SharedFloors floors(n_users);
    seed_floors(floors, n_users, k, scores + u0 * k, counts + u0);
    Blocks tiles(scan.begin, scan.end, kTileCandidates);
    std::vector<float> task_scores(static_cast<size_t>(tasks * n_users * k));
    std::vector<index_t> task_ids(task_scores.size()), task_counts(static_cast<size_t>(tasks * n_users), 0);
    parallel_chunks(tasks, static_cast<int>(tasks), 1, 1, [&](int t, index_t, index_t) {
      std::vector<TopK> heaps;
      heaps.reserve(static_cast<size_t>(n_users));
      for (index_t u = 0; u < n_users; ++u)
        heaps.emplace_back(task_scores.data() + (t * n_users + u) * k, task_ids.data() + (t * n_users + u) * k, k);
      std::vector<CachedGate> cached(static_cast<size_t>(n_users));
      // padding lanes: +inf gates, passed only by NaN, which the per-user test drops
      std::vector<float> gates(static_cast<size_t>(pad), kInf), tile(static_cast<size_t>(kTileCandidates * pad)), scratch;
      std::uint64_t bits[(kMaxBlockUsers + 63) / 64];
      index_t first, last;
      while (tiles.claim(first, last)) {
        const float bid_max = scan.bids[first];
        if (bid_max < lowest_floor(floors, n_users)) {
          tiles.stop();
          break;
        }
        for (index_t u = 0; u < n_users; ++u)
          gates[u] = cached[u].update(std::max(heaps[u].floor(), floors.get(u)), bid_max);
        prefetch_rows(scan.rows, last, std::min(scan.end, last + kTileCandidates));
        tiles.scored(last - first);
        for (std::uint64_t hits = block.score(first, last - first, scan.bias, gates.data(), tile.data(), scratch);
             hits != 0; hits &= hits - 1) {
          const index_t c = __builtin_ctzll(hits);
          const float* logits = tile.data() + c * pad;
          if (!table.not_below_bits_f32(logits, gates.data(), n_users, bits)) continue;
          for (index_t w = 0; w * 64 < n_users; ++w)
            for (std::uint64_t word = bits[w]; word != 0; word &= word - 1) {
              const index_t u = w * 64 + __builtin_ctzll(word);
              heaps[u].push(expected_value(logits[u], scan.bids[first + c]), scan.ids[first + c]);
            }
        }
        for (index_t u = 0; u < n_users; ++u) floors.raise(u, heaps[u].floor());
      }
      for (index_t u = 0; u < n_users; ++u) task_counts[t * n_users + u] = heaps[u].finish();
    });
    merge_into(n_users, k, tasks, scores + u0 * k, ids + u0 * k, counts + u0, task_scores, task_ids, task_counts);
    stopped = stopped && tiles.stopped();
    *scored += tiles.scored();
  }
  return stopped;
}

}  // namespace detail

inline ValueScanned topk_value(const KernelTable& table, const Rows& queries, const ValueScan& scan, index_t k,
                               float* scores, index_t* ids, index_t* counts, int threads) {
  using namespace detail;
  if (k == 0 || queries.count == 0 || scan.begin >= scan.end) return {std::max(scan.begin, scan.end), 0};
  bool stopped = true;
  index_t scored = 0;
  if (queries.count > 1 && scan.positions == nullptr && has_tile(table, scan.rows)) {
    stopped = value_cross(table, queries, scan, k, scores, ids, counts, threads, &scored);
  } else {
    for (index_t u = 0; u < queries.count; ++u)
      stopped = value_one(table, queries.row(u), scan, k, scores + u * k, ids + u * k, counts + u, threads, &scored) &&
                stopped;
  }
  return {stopped ? scan.size() : scan.end, scored};
}

}  // namespace splitnet
