// Exact top-k from reduced-precision rows: a certified scan. The small rows (int8, bfloat16,
// float16) are scanned as usual; each approximate score s~ comes with a rigorous bound E on its
// distance from the float32 set's score s (from a norm and a residual stored per row and a few
// numbers per query), so the scan knows which rows could still be in the float32 top k: those
// whose upper bound s~ + E reaches the k-th best lower bound s~ - E. Only those are re-scored,
// from the float32 rows, with the float32 kernels and their one summation order (order.h),
// so ids and scores are bit for bit the float32 set's. The bound is derived in docs/design.md
// ("Exact sets").
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <tuple>
#include <utility>
#include <vector>

#include "convert.h"
#include "ops.h"
#include "order.h"
#include "tuning.h"

namespace splitnet {

// An exact set's heads for the progressive scan (docs/design.md, "The progressive scan"): the
// float32 rows turned by an orthogonal rotation fitted to them, b = R a (R: dim x dim, row-major,
// float64, orthogonality >= ||I - R^T R||_2), so that their energy comes first; each turned
// row's first `width` values (a multiple of 4) as int8 with a scale of their own, and its rest
// norm >= the norm of the rest of b, in score_heads_i8's blocks of 16 rows (isa.h); per stored
// block of rows (ExactRows::block), the largest ||b1 - b1~|| of their heads. +inf bounds for a
// row the heads cannot stand for.
struct Levels {
  const double* rotation = nullptr;  // null: no heads
  index_t dim = 0;
  double orthogonality = 0;
  const std::int8_t* blocks = nullptr;
  index_t width = 0;
  const float* block_head_residuals = nullptr;

  explicit operator bool() const { return rotation != nullptr; }
};

// What the re-score needs: the float32 rows (as the float32 set stores them) and, per row, an
// upper bound on ||a||_2 (norms) and on ||a - a~||_2, a~ the row as stored in the small type
// (residuals; +inf for a row the small type cannot stand for, which is then always re-scored).
// block_norms / block_residuals[q], when set, are the largest of rows [q block, (q + 1) block),
// so that a scan over all rows can gate a block without reading every row's bounds.
struct ExactRows {
  Rows rows;
  const float* norms;
  const float* residuals;
  const float* block_norms = nullptr;
  const float* block_residuals = nullptr;
  index_t block = 0;
  Levels levels = {};  // needs the stored blocks (block > 0)

  // The largest norm and residual of rows [first, first + n), n >= 1, from the stored maxima of
  // the blocks they span (block > 0).
  std::pair<float, float> stored_maxima(index_t first, index_t n) const {
    float norm = 0, residual = 0;
    for (index_t q = first / block; q <= (first + n - 1) / block; ++q)
      norm = std::max(norm, block_norms[q]), residual = std::max(residual, block_residuals[q]);
    return {norm, residual};
  }
};

namespace detail {

// Rows whose norm or residual reaches this, and queries whose norm (or bias) does, are never
// bounded: below it every term, lane and product of both scores stays far inside the float32
// range (|q| |a| < 2^121, docs/design.md), beyond it a lane could overflow where the exact sum
// does not. Such rows are always re-scored; such queries go to the float32 rows.
constexpr float kBoundedNorm = 0x1p60f;

// Whether rows whose norms and residuals are at most these can be bounded (false for NaN).
inline bool bounded(float norm, float residual) { return norm < kBoundedNorm && residual < kBoundedNorm; }

// E = alpha * norm + beta * residual + tau + rel * |s~| bounds |s - s~| for every row of one query.
// A head's bound (head_bound) has rest * rest_norm more: what the values past the head can add.
struct ScoreBound {
  float alpha = 0, beta = 0, rel = 0, tau = 0, rest = 0;
  bool usable = false;  // false: the query is not finite or too large; re-score everything

  // M: the largest E, less its relative term, of rows whose norms and residuals are at most
  // these; +inf where such rows cannot be bounded.
  float most(float norm, float residual) const {
    return bounded(norm, residual) ? alpha * norm + beta * residual + tau : kInf;
  }
  float operator()(float approx, float norm, float residual) const {
    return most(norm, residual) + rel * std::fabs(approx);
  }
};

inline double norm2(const float* x, index_t n) {
  double sum = 0;
  for (index_t d = 0; d < n; ++d) sum += static_cast<double>(x[d]) * x[d];
  return std::sqrt(sum);
}

namespace bound_terms {
constexpr double u = 0x1p-24, inflate = 1.0 + 0x1p-16, gamma3 = 3 * u / (1 - 3 * u);

// gamma_L of the float32 order over `dim` values (score_bound).
inline double gamma(index_t dim) {
  const double terms = static_cast<double>((dim + kSumLanes - 1) / kSumLanes + 3);
  return terms * u / (1.0 - terms * u);
}

// The int8 terms of a bound: p, the query's `dim` values in float64 (within `slack` of the exact
// ones), its first `width` quantized into q8 (*q_scale) as the scan quantizes them, against rows
// whose reduced part b has ||b|| <= (1 + delta) ||a||: alpha and beta of E for a query of norm q
// (the float32 one), and the norm of p past width (the rest a head leaves out).
struct Int8 {
  double alpha, beta, rest;
};
inline Int8 int8(const std::vector<double>& p, index_t width, double q, double delta, double slack, std::int8_t* q8,
                 float* q_scale) {
  const std::vector<float> narrow(p.begin(), p.begin() + width);
  const double scale = *q_scale = quantize_query_i8(narrow.data(), width, q8);
  double err = 0, hat = 0, norm = 0, tail = 0;
  for (size_t d = 0; d < p.size(); ++d) {
    const double x = p[d];
    if (static_cast<index_t>(d) >= width) {
      tail += x * x;
      continue;
    }
    const double qh = scale * q8[d];
    err += (x - qh) * (x - qh), hat += qh * qh, norm += x * x;
  }
  // the double sums' own error, then p's
  err = std::sqrt(err) * (1 + 1e-12) + slack, hat = std::sqrt(hat) * (1 + 1e-12);
  norm = std::sqrt(norm) * (1 + 1e-12) + slack, tail = std::sqrt(tail) * (1 + 1e-12) + slack;
  return {gamma(static_cast<index_t>(p.size())) * q + delta * q + (1 + delta) * (err + gamma3 * hat),
          norm + err + gamma3 * hat, tail};
}

// The bound's float32 constants, every one inflated by 2^-16 and rounded up, never down, and
// whether it holds (see score_bound).
inline ScoreBound rounded_up(double alpha, double beta, double rest, double underflow, double q, float bias) {
  ScoreBound b;
  b.alpha = static_cast<float>(alpha * inflate * (1 + 1e-12));
  b.beta = static_cast<float>(beta * inflate * (1 + 1e-12));
  b.rest = static_cast<float>(rest * inflate);
  b.rel = static_cast<float>(2 * u * inflate);
  b.tau = static_cast<float>(underflow);
  for (float* c : {&b.alpha, &b.beta, &b.tau, &b.rest}) *c = std::nextafter(*c, std::numeric_limits<float>::infinity());
  b.usable = q < kBoundedNorm && std::fabs(bias) < 0x1p120f && std::isfinite(b.alpha) && std::isfinite(b.beta) &&
             std::isfinite(b.rest);
  return b;
}
}  // namespace bound_terms

// The bound's constants for one float32 query of `dim` values (the stored width) against rows of
// `dtype`, and a score bias. With u = 2^-24 and gamma_m = m u / (1 - m u): the float32 order sums
// each term through at most L = ceil(dim / 8) + 3 roundings, so |fl(q.x) - q.x| <= gamma_L ||q|| ||x||.
//   16-bit:  s~ is the float32 order on a~:   |s - s~| <= ||q|| r + gamma_L ||q|| (||a|| + ||a~||)
//   int8:    s~ = fl(fl(I) fl(sq sr)) for the exact integer I = q8 . r8, q^ = sq q8, a~ = sr r8:
//            |s - s~| <= ||q|| r + ||q - q^|| ||a~|| + gamma_L ||q|| ||a|| + gamma_3 ||q^|| ||a~||
//            + |I| 2^-150, the underflow of a subnormal fl(sq sr) carried by the integer
//            (|I| <= 127^2 dim)
// with ||a~|| <= ||a|| + r, plus the two bias additions (u |s| + u |s~| <= 2u |s~| + u E) and
// 2^-150 of underflow per rounding. Every constant is inflated by 2^-16, which covers 1 / (1 - u)
// and evaluating E in float32 (four roundings of non-negative terms). None of it holds where a
// lane overflows: usable needs ||q|| and |bias| below kBoundedNorm (and 2^120), rows need
// bounded(norm, residual).
inline ScoreBound score_bound(const float* query, index_t dim, Dtype dtype, float bias) {
  const double gamma = bound_terms::gamma(dim), q = norm2(query, dim);
  double alpha = 2 * gamma * q, beta = q * (1 + gamma), underflow = (4.0 * dim + 64) * 0x1p-150 * 2;
  if (dtype == Dtype::i8) {
    std::vector<std::int8_t> q8(static_cast<size_t>(dim));
    float scale;
    const auto terms = bound_terms::int8(std::vector<double>(query, query + dim), dim, q, 0, 0, q8.data(), &scale);
    alpha = terms.alpha, beta = terms.beta;
    underflow += 127.0 * 127.0 * static_cast<double>(dim) * 0x1p-150 * 2;
  }
  return bound_terms::rounded_up(alpha, beta, 0, underflow, q, bias);
}

// The head test's bound for one float32 query of `dim` values (the stored width) and a bias: E1 =
// alpha * norm + beta * head residual + rest * rest_norm + tau + rel * |s~1| bounds |s - s~1|,
// s~1 the int8 score of a row's head (score_heads_i8) against q8, the head of the turned query
// p = R q quantized (written to q8, its scale to *q_scale). With delta the rotation's
// orthogonality, q . a = p . b + q^T (I - R^T R) a, and p . b = p1 . b1 + p2 . b2, so
//   |s - s~1| <= gamma_L ||q|| ||a|| + delta ||q|| ||a|| + |p1 . b1 - p1^ . b1~| + ||p2|| ||b2||
// and the head's part is score_bound's int8 case with p1 for q (||b1|| <= (1 + delta) ||a||).
// p is made in float64, within gamma_n ||R||_F ||q|| of R q (n = levels.dim, any order;
// ||R||_F^2 <= n (1 + delta)): that slack joins ||p1||, ||p1 - p1^|| and ||p2||. rest is ||p2||
// raised by 2^-16, which covers the relative term of the rest and the rounding of s~1 + rest
// * rest_norm, as the scan sums it (docs/design.md, "The progressive scan").
inline ScoreBound head_bound(const float* query, index_t dim, float bias, const Levels& levels, std::int8_t* q8,
                             float* q_scale) {
  const index_t n = levels.dim;
  const double q = norm2(query, dim), delta = levels.orthogonality;
  const double gn = n * 0x1p-53 / (1 - n * 0x1p-53), slack = gn * std::sqrt(n * (1 + delta)) * q * (1 + 1e-12);
  std::vector<double> p(static_cast<size_t>(dim));
  for (index_t i = 0; i < dim; ++i) {  // past n the rows are zero, and p is q
    double sum = i < n ? 0.0 : query[i];
    for (index_t j = 0; i < n && j < n; ++j) sum += levels.rotation[i * n + j] * query[j];
    p[static_cast<size_t>(i)] = sum;
  }
  const auto terms = bound_terms::int8(p, levels.width, q, delta, slack, q8, q_scale);
  const double underflow = ((4.0 * dim + 64) + 127.0 * 127.0 * static_cast<double>(levels.width)) * 0x1p-150 * 2;
  return bound_terms::rounded_up(terms.alpha, terms.beta, terms.rest * bound_terms::inflate, underflow, q, bias);
}

// The rows a task kept: its best k lower bounds (a heap) and every row whose upper bound reached
// the k-th lower bound when it was scanned (pruned as that bound rises).
struct Survivors {
  std::vector<float> lower_scores;
  std::vector<index_t> lower_ids, rows;
  std::vector<float> uppers;
  index_t lower_count = 0;
  size_t limit = 0;  // keep() prunes when the rows pass it

  // Room for k lower bounds; the heap over them writes here.
  TopK lower_heap(index_t k) {
    lower_scores.resize(static_cast<size_t>(k));
    lower_ids.resize(static_cast<size_t>(k));
    limit = static_cast<size_t>(std::max<index_t>(4 * k, 4096));
    return TopK(lower_scores.data(), lower_ids.data(), k);
  }
  // Keeps a row; once the rows pass the limit, drops those whose upper bound the floor (the k-th
  // lower bound) has passed, and doubles the limit if half of them are left (O(1) a row when
  // the bound cannot tell the rows apart). Returns whether it pruned.
  bool keep(index_t row, float upper, float floor) {
    rows.push_back(row);
    uppers.push_back(upper);
    if (rows.size() <= limit) return false;
    size_t w = 0;
    for (size_t j = 0; j < rows.size(); ++j)
      if (!(uppers[j] < floor)) rows[w] = rows[j], uppers[w++] = uppers[j];
    rows.resize(w);
    uppers.resize(w);
    limit = std::max(limit, 2 * w);
    return true;
  }
};

// The end of every certified scan: the joint k-th lower bound of what the tasks kept, then every
// survivor whose upper bound reaches it, re-scored from the float32 rows and selected. Survivor
// rows are positions (into ids when set). Returns how many rows were re-scored.
inline index_t rescore(const KernelTable& table, const float* query, const ExactRows& exact,
                       const std::vector<Survivors>& kept, index_t k, float bias, float* out_scores, index_t* out_ids,
                       int threads, const index_t* ids = nullptr) {
  std::vector<float> lows;
  for (const Survivors& s : kept) lows.insert(lows.end(), s.lower_scores.begin(), s.lower_scores.begin() + s.lower_count);
  float floor = -kInf;
  if (static_cast<index_t>(lows.size()) >= k) {
    std::nth_element(lows.begin(), lows.begin() + (k - 1), lows.end(), std::greater<float>());
    floor = lows[k - 1];  // the lower bounds are never NaN
  }
  std::vector<index_t> positions;
  for (const Survivors& s : kept)
    for (size_t j = 0; j < s.rows.size(); ++j)
      if (!(s.uppers[j] < floor)) positions.push_back(ids ? ids[s.rows[j]] : s.rows[j]);
  std::sort(positions.begin(), positions.end());
  const index_t m = static_cast<index_t>(positions.size());
  std::vector<float> scores(static_cast<size_t>(m));
  if (m > 0)  // none (a user a filter allows nothing): an empty list, then padding
    score_one(table, query, stored(exact.rows), bias, scores.data(), threads, positions.data(), m);
  select_best(scores.data(), positions.data(), m, k, out_scores, out_ids);
  return m;
}

// The pre-test gate of a block of rows (a one-user block, a tile of the certified tile) for a
// floor F and the largest bound M of its rows: F - M - 2^-14 (|F| + M) - 2^-126 in float32. The
// margin is far more than the rounding of the gate itself, of s + E and the relative term
// (2^-23 |s|), so a score s below the gate has s + E < F: the row can neither enter the heap of
// lower bounds nor survive. NaN (from inf - inf) lets every score pass.
inline float tile_gate(float floor, float most) {
  return floor - most - 0x1p-14f * (std::fabs(floor) + most) - 0x1p-126f;
}

// The largest of n >= 0 norms or residuals (NaN skipped; 0 for none).
inline float largest(const KernelTable& table, const float* values, index_t n) {
  float lanes[16];
  table.max_lanes_f32(values, n, lanes);
  return std::max(0.0f, *std::max_element(lanes, lanes + 16));
}

// Many users on the int8 cross tile (a cross sink, sinks.h): for each user of a block, the best
// k lower bounds and the survivors of one task's candidates, as topk_exact_one keeps them. The
// tile's pre-test gate of user u for candidates [first, first + n) is tile_gate of its floor and
// of the largest bound those rows can have, M = alpha max(norm) + beta max(residual) + tau, with
// the maxima of the stored blocks the tile spans (made once a span, the gate raised with every
// push) or, where there are none or they are not finite, of the tile's own rows. A row that
// passes is bounded with its own norm and residual (unlike topk_exact_one: with many users the
// passing rows are dense and in order, so those reads are cheap, and the tighter bounds keep the
// floors higher). Rows the small type cannot stand for (a residual or a norm that is not finite)
// survive for every user without a test (an infinite one also opens its tile's gates).
// Once the survivors of some user pass `most` (ties: the bound cannot tell the rows apart), the
// sink sets *overflow and every sink stops: re-scoring that many rows one by one would cost more
// than the float32 cross tile, which the caller then takes.
class CertifiedTile {
 public:
  CertifiedTile(const KernelTable& table, index_t k, const ScoreBound* bounds, index_t n_users, index_t pad,
                const ExactRows& exact, const std::vector<index_t>& unbounded, Survivors* kept, index_t most,
                std::atomic<bool>* overflow, Filter filter)
      : table_(table), filter_(filter), bounds_(bounds), n_users_(n_users), exact_(exact), unbounded_(unbounded),
        kept_(kept), most_(most), overflow_(overflow), gates_(static_cast<size_t>(pad), kInf),
        floors_(gates_.size(), -kInf), bound_most_(gates_.size(), kInf) {
    heaps_.reserve(static_cast<size_t>(n_users));
    for (index_t u = 0; u < n_users; ++u) {
      heaps_.push_back(kept_[u].lower_heap(k));
      kept_[u].limit = std::min(kept_[u].limit, static_cast<size_t>(most));  // pruned before overflowing
    }
  }

  const float* gates(index_t first, index_t n) {
    if (overflow_->load(std::memory_order_relaxed)) return nullptr;  // no hits: the sink idles to the end
    if (exact_.block > 0) {
      const index_t q0 = first / exact_.block, q1 = (first + n - 1) / exact_.block;
      if (q0 == span_[0] && q1 == span_[1]) return gates_.data();
      const auto [norm, residual] = exact_.stored_maxima(first, n);
      if (bounded(norm, residual)) {
        span_[0] = q0, span_[1] = q1;
        return open(norm, residual);
      }
    }
    span_[0] = span_[1] = -1;  // this tile only
    return open(largest(table_, exact_.norms + first, n), largest(table_, exact_.residuals + first, n));
  }

  void add_tile(const float* tile, index_t pad, index_t first, index_t n, std::uint64_t hits) {
    if (overflow_->load(std::memory_order_relaxed)) return;
    hits &= filter_.some(first, n, n_users_);  // what it leaves out is never kept
    for (; next_ < unbounded_.size() && unbounded_[next_] < first + n; ++next_) {
      if (unbounded_[next_] < first) continue;
      hits &= ~(std::uint64_t{1} << (unbounded_[next_] - first));
      for (index_t u = 0; u < n_users_; ++u)
        if (filter_.lets(u, unbounded_[next_])) survive(u, unbounded_[next_], kInf);
    }
    std::uint64_t bits[(kMaxBlockUsers + 63) / 64];
    for (; hits != 0; hits &= hits - 1) {
      const index_t c = __builtin_ctzll(hits), row = first + c;
      const float* scores = tile + c * pad;
      if (!table_.not_below_bits_f32(scores, gates_.data(), n_users_, bits)) continue;
      const float norm = exact_.norms[row], residual = exact_.residuals[row];
      for (index_t w = 0; w * 64 < n_users_; ++w)
        for (std::uint64_t word = bits[w]; word != 0; word &= word - 1) {
          const index_t u = w * 64 + __builtin_ctzll(word);
          if (!filter_.lets(u, row)) continue;
          const float e = bounds_[u](scores[u], norm, residual), low = scores[u] - e, high = scores[u] + e;
          TopK& heap = heaps_[u];
          if (!(low < heap.gate())) {
            heap.push(low == low ? low : -kInf, row);
            floors_[u] = heap.floor();
            gates_[u] = tile_gate(floors_[u], bound_most_[u]);
          }
          if (!(high < floors_[u])) survive(u, row, high == high ? high : kInf);
        }
    }
  }

  void finish() {
    for (index_t u = 0; u < n_users_; ++u) kept_[u].lower_count = heaps_[u].finish();
  }

 private:
  void survive(index_t u, index_t row, float upper) {
    if (kept_[u].keep(row, upper, floors_[u]) && static_cast<index_t>(kept_[u].rows.size()) > most_)
      overflow_->store(true, std::memory_order_relaxed);
  }

  // The gates for rows whose largest norm and residual are these.
  const float* open(float norm, float residual) {
    for (index_t u = 0; u < n_users_; ++u) {
      bound_most_[u] = bounds_[u].most(norm, residual);
      gates_[u] = tile_gate(floors_[u], bound_most_[u]);
    }
    return gates_.data();
  }

  const KernelTable& table_;
  Filter filter_;
  const ScoreBound* bounds_;
  index_t n_users_;
  const ExactRows& exact_;
  const std::vector<index_t>& unbounded_;
  Survivors* kept_;
  index_t most_;
  std::atomic<bool>* overflow_;
  std::vector<TopK> heaps_;
  std::vector<float> gates_, floors_, bound_most_;  // per user (padding lanes: +inf gates)
  index_t span_[2] = {-1, -1};  // the stored blocks the gates were opened for
  size_t next_ = 0;  // the first unbounded row not yet reached (tiles come in order)
};

}  // namespace detail

// What a certified top-k did: the rows it re-scored in float32, the rows whose whole reduced row
// the progressive scan read past their head, and the bytes it read of the reduced rows and
// their per-row values (scales, rest norms, bounds), summed over users.
struct Certified {
  index_t rescored = 0, refined = 0;
  double bytes = 0;
  Certified& operator+=(const Certified& other) {
    rescored += other.rescored, refined += other.refined, bytes += other.bytes;
    return *this;
  }
};

// The best k (k <= the candidates) of query . a + bias over the float32 rows, best first, as
// topk_one on exact.rows gives them (the same ids and bits), computed by scanning `small` (the
// same candidates in a reduced type) and re-scoring only the rows that may enter. ids: the
// allowed subset (ascending) or null; or a filter (every row read, those it leaves out never
// kept). With levels and no subset, the scan is progressive: the heads of every row first, then
// only the rows whose head can still reach the k-th score read whole, best first, and bounded as
// the flat scan bounds them (docs/design.md, "The progressive scan").
inline Certified topk_exact_one(const KernelTable& table, const float* query, const StoredRows& small,
                                const ExactRows& exact, index_t k, float bias, float* out_scores, index_t* out_ids,
                                int threads, const index_t* ids = nullptr, index_t n_ids = 0, Filter filter = {}) {
  using namespace detail;
  const index_t n = ids ? n_ids : small.count;
  const ScoreBound bound = score_bound(query, small.dim, small.dtype, bias);
  const double row_bytes = static_cast<double>(small.dim * element_size(small.dtype) + (small.scales ? 4 : 0));
  if (!bound.usable) {  // nothing to certify with: the float32 rows, every one
    topk_one(table, query, stored(exact.rows), k, bias, out_scores, out_ids, threads, ids, n_ids, filter);
    return {n, 0, static_cast<double>(n) * exact.rows.dim * 4};
  }
  const OneQuery approx(table, query, small, bias, ids);
  const Levels& levels = exact.levels;
  std::vector<std::int8_t> head_query(static_cast<size_t>(levels.width));
  float head_scale = 0;
  const ScoreBound head =
      levels && ids == nullptr ? head_bound(query, small.dim, bias, levels, head_query.data(), &head_scale) : ScoreBound{};
  const bool progressive = head.usable && exact.block > 0;
  const index_t min_chunk = std::max(min_rows_per_task(small.dim), 4 * k);
  const index_t tasks = std::max<index_t>(1, std::min<index_t>(threads, n / min_chunk));
  const bool stored = ids == nullptr && exact.block > 0;  // blocks gated by their stored maxima
  std::vector<Survivors> kept(static_cast<size_t>(tasks));
  std::vector<index_t> refined(static_cast<size_t>(tasks));
  parallel_chunks(n, static_cast<int>(tasks), min_chunk, kBlock, [&](int t, index_t begin, index_t end) {
    Survivors& s = kept[t];
    TopK lower = s.lower_heap(k);
    // A row that reaches its block's gate: its bound (at the block's stored maxima where they are
    // finite: reading the bounds of the rows that pass, a cache miss each, cost more than
    // re-scoring the few more rows it keeps), then a lower bound and maybe a survivor.
    const auto settle = [&](index_t row, float score, float norm, float residual, bool at_maxima) {
      const float e = at_maxima ? bound(score, norm, residual) : bound(score, exact.norms[row], exact.residuals[row]);
      const float low = score - e, high = score + e;
      if (!(low < lower.gate())) lower.push(low == low ? low : -kInf, row);  // positions; ids come in below
      if (!(high < lower.floor())) s.keep(row, high == high ? high : kInf, lower.floor());
    };
    float scores[kBlock];
    if (progressive) {
      // First the heads of every row: each head bounds its row's score both ways, s~1 - E1 -
      // 2 rest * rest_norm <= s <= s~1 + E1 (t = s~1 + rest * rest_norm from the kernel, E1 at
      // the block's maxima, margins as tile_gate's), so a heap of the heads' lower bounds gives
      // a floor from every row, and the rows whose upper bound reaches it are kept. Then those
      // rows are read whole best upper bound first: the first few raise the flat scan's floor to
      // near the k-th score, and the rest stop at the first whose upper bound is below it.
      std::vector<float> head_lows(static_cast<size_t>(k));
      std::vector<index_t> head_ids(static_cast<size_t>(k));
      TopK heads(head_lows.data(), head_ids.data(), k);
      Survivors reach;  // rows whose head reached the heads' floor, with their upper bounds
      reach.limit = static_cast<size_t>(std::max<index_t>(4 * k, 4096));
      const index_t block_bytes = 16 * levels.width + 128;
      for (index_t b = begin; b < end; b += kBlock) {
        const index_t count = std::min(kBlock, end - b);
        const auto [norm, residual] = exact.stored_maxima(b, count);
        float head_residual = 0;
        for (index_t q = b / exact.block; q <= (b + count - 1) / exact.block; ++q)
          head_residual = std::max(head_residual, levels.block_head_residuals[q]);
        const float most = head.most(norm, head_residual);
        const std::int8_t* blocks = levels.blocks + b / 16 * block_bytes;
        table.score_heads_i8(head_query.data(), head_scale, blocks, head.rest, count, levels.width, bias, scores);
        const float gate = tile_gate(heads.floor(), most);
        for (index_t i = table.first_not_below_f32(scores, count, gate); i < count;) {
          if (!filter || filter.allows(b + i)) {
            float rest_norm;
            std::memcpy(&rest_norm, blocks + i / 16 * block_bytes + 16 * levels.width + 64 + 4 * (i % 16), 4);
            const float t = scores[i], twice = 2 * (head.rest * rest_norm);
            const float low = t - twice - most - 0x1p-14f * (std::fabs(t) + twice + most) - 0x1p-126f;
            const float high = t + most + 0x1p-14f * (std::fabs(t) + most) + 0x1p-126f;
            if (!(low < heads.gate())) heads.push(low == low ? low : -kInf, b + i);
            if (!(high < heads.floor())) reach.keep(b + i, high == high ? high : kInf, heads.floor());
          }
          ++i;
          i += table.first_not_below_f32(scores + i, count - i, gate);
        }
      }
      std::vector<std::pair<float, index_t>> order;  // the rows still above the heads' final floor, best first
      for (size_t j = 0; j < reach.rows.size(); ++j)
        if (!(reach.uppers[j] < heads.floor())) order.emplace_back(reach.uppers[j], reach.rows[j]);
      std::sort(order.begin(), order.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
      constexpr index_t kBatch = 64;
      index_t rows[kBatch];
      float whole[kBatch];
      const index_t stored_bytes = small.dim * element_size(small.dtype);
      for (size_t j = 0; j < order.size();) {
        const float floor = std::max(heads.floor(), lower.floor());
        index_t m = 0;
        for (; j < order.size() && m < kBatch && !(order[j].first < floor); ++j) {
          rows[m] = order[j].second;
          prefetch_bytes(small.row_bytes(rows[m]), stored_bytes);  // the batch's misses at once
          if (small.scales != nullptr) __builtin_prefetch(small.scales + rows[m]);
          ++m;
        }
        if (m == 0) break;  // the rest are below the floor: best first
        approx.gathered(rows, m, whole);
        refined[t] += m;
        for (index_t r = 0; r < m; ++r) {
          const index_t q = rows[r] / exact.block;
          const float norm = exact.block_norms[q], residual = exact.block_residuals[q], most = bound.most(norm, residual);
          if (!(whole[r] < tile_gate(lower.floor(), most))) settle(rows[r], whole[r], norm, residual, std::isfinite(most));
        }
      }
    } else {
      float gathered[2][kBlock];
      for (index_t b = begin; b < end; b += kBlock) {
        const index_t count = std::min(kBlock, end - b);
        const float *norms = exact.norms + b, *residuals = exact.residuals + b;
        if (ids != nullptr) {
          for (index_t i = 0; i < count; ++i)
            gathered[0][i] = exact.norms[ids[b + i]], gathered[1][i] = exact.residuals[ids[b + i]];
          norms = gathered[0], residuals = gathered[1];
        }
        // the block's largest norm and residual, from the stored maxima where there are some
        const auto [norm, residual] = stored ? exact.stored_maxima(b, count)
                                             : std::pair(largest(table, norms, count), largest(table, residuals, count));
        // the block's gate, as the certified tile's: a score below it has s~ + E below the floor
        const float most = bound.most(norm, residual), gate = tile_gate(lower.floor(), most);
        const bool at_maxima = stored && std::isfinite(most);
        approx(b, count, scores);
        for (index_t i = table.first_not_below_f32(scores, count, gate); i < count;) {
          if (!filter || filter.allows(b + i)) {  // left out: neither a lower bound nor a survivor
            if (at_maxima || ids == nullptr) settle(b + i, scores[i], norm, residual, at_maxima);
            else settle(b + i, scores[i], norms[i], residuals[i], true);  // a subset's own bounds, gathered
          }
          ++i;
          i += table.first_not_below_f32(scores + i, count - i, gate);
        }
      }
    }
    s.lower_count = lower.finish();
  });
  Certified done;
  done.rescored = rescore(table, query, exact, kept, k, bias, out_scores, out_ids, threads, ids);
  for (const index_t r : refined) done.refined += r;
  done.bytes = progressive ? static_cast<double>(n) * (levels.width + 8) + static_cast<double>(done.refined) * row_bytes
                           : static_cast<double>(n) * row_bytes;
  return done;
}

// Many users against int8 rows on the int8 cross tile, certified as topk_exact_one certifies
// one: the rows read once for all users, each user's lower bounds and survivors kept per task
// (CertifiedTile), then each user's survivors re-scored. users are folded queries as wide as the
// rows. Returns the rows re-scored, summed over users; -1 when some user's bound is unusable
// or the survivors of some user outgrow what re-scoring one by one can beat (the caller then
// takes another way).
inline index_t topk_exact_tile(const KernelTable& table, const Rows& users, const StoredRows& small,
                               const ExactRows& exact, float bias, index_t k, float* out_scores, index_t* out_ids,
                               int threads, Filter filter = {}) {
  using namespace detail;
  std::vector<ScoreBound> bounds(static_cast<size_t>(users.count));
  for (index_t u = 0; u < users.count; ++u) {
    bounds[u] = score_bound(users.row(u), small.dim, small.dtype, bias);
    if (!bounds[u].usable) return -1;
  }
  std::vector<index_t> unbounded;  // looked for only in blocks whose stored maxima are not bounded
  const index_t block = exact.block > 0 ? exact.block : std::max<index_t>(small.count, 1);
  for (index_t b = 0; b < small.count; b += block) {
    const index_t q = b / block;
    if (exact.block > 0 && bounded(exact.block_norms[q], exact.block_residuals[q])) continue;
    for (index_t r = b; r < std::min(small.count, b + block); ++r)
      if (!bounded(exact.norms[r], exact.residuals[r])) unbounded.push_back(r);
  }
  const index_t block_users = std::min(users_per_block(users.dim), users.count);
  const index_t tasks =
      std::max<index_t>(1, std::min<index_t>(threads, small.count / std::max<index_t>(4 * k, kTileCandidates)));
  std::vector<Survivors> kept(static_cast<size_t>(tasks * block_users));
  // about where re-scoring one by one (a gathered row each) costs what the cross tile costs
  const index_t most = std::max<index_t>(16 * k, small.count / tasks / 16);
  std::atomic<bool> overflow{false};
  index_t rescored = 0;
  sweep_tiles(
      table, users, small, bias, static_cast<int>(tasks),
      [&](index_t pad) { return std::max(min_rows_per_task(small.dim, pad), 4 * k); },
      [&](int t, index_t u0, index_t u1, index_t pad) {
        return CertifiedTile(table, k, bounds.data() + u0, u1 - u0, pad, exact, unbounded,
                             kept.data() + t * (u1 - u0), most, &overflow, filter.from(u0));
      },
      [&](index_t u0, index_t u1) {  // each user's survivors re-scored, users in parallel
        if (overflow) return;
        const index_t n_users = u1 - u0;
        std::vector<index_t> counts(static_cast<size_t>(threads));
        parallel_chunks(n_users, threads, 1, 1, [&](int part, index_t begin, index_t end) {
          std::vector<Survivors> lists(static_cast<size_t>(tasks));
          for (index_t u = begin; u < end; ++u) {
            for (index_t t = 0; t < tasks; ++t) lists[t] = std::exchange(kept[t * n_users + u], Survivors{});
            counts[part] += rescore(table, users.row(u0 + u), exact, lists, k, bias, out_scores + (u0 + u) * k,
                                    out_ids + (u0 + u) * k, 1);
          }
        });
        for (const index_t c : counts) rescored += c;
      });
  return overflow ? -1 : rescored;
}

// Many users: each user's query folded once (as topk folds). Without an allowed subset (a
// filter keeps every way: each reads it where it keeps rows), int8
// rows go through the certified int8 tile (topk_exact_tile) where the table has one; other rows,
// once the scans would read more bytes than the float32 rows hold (users x the reduced element
// size >= 4 bytes), through the float32 rows' cross tile, as the float32 set's many-user top-k
// does (exact by construction, the rows read once for all users); the rest user by user.
// The cross tiles read the rows once a block of users (users_per_block).
inline Certified topk_exact(const KernelTable& table, const Rows& users, const StoredRows& small,
                            const ExactRows& exact, const MetricForm& form, float bias, const index_t* ids,
                            index_t n_ids, index_t k, float* out_scores, index_t* out_ids, int threads,
                            Filter filter = {}) {
  if (k == 0 || users.count == 0) return {};
  const index_t per_block = detail::users_per_block(small.dim), blocks = (users.count + per_block - 1) / per_block;
  const auto read = [&](index_t bytes_per_row) { return static_cast<double>(blocks) * small.count * bytes_per_row; };
  if (ids == nullptr && users.count >= kExactTileUsers && small.dtype == Dtype::i8 && table.score_tile_i8 != nullptr) {
    detail::Queries queries(table, form, users, small.dim, threads);
    const index_t rescored =
        topk_exact_tile(table, queries.rows(), small, exact, bias, k, out_scores, out_ids, threads, filter);
    if (rescored >= 0) return {rescored, 0, read(small.dim + 4)};
  }
  if (ids == nullptr && users.count * element_size(small.dtype) >= element_size(Dtype::f32)) {
    topk(table, users, stored(exact.rows), form, bias, nullptr, 0, k, out_scores, out_ids, threads, filter);
    return {users.count * exact.rows.count, 0, read(exact.rows.dim * 4)};
  }
  detail::Queries queries(table, form, users, small.dim, threads);
  Certified done;
  for (index_t u = 0; u < users.count; ++u)
    done += topk_exact_one(table, queries.row(u), small, exact, k, bias, out_scores + u * k, out_ids + u * k,
                           threads, ids, n_ids, filter.user(u));
  return done;
}

}  // namespace splitnet
