// Exact top-k from reduced-precision rows: a certified scan. The small rows (int8, bfloat16,
// float16) are scanned as usual; each approximate score s~ comes with a rigorous bound E on its
// distance from the float32 set's score s (from a norm and a residual stored per row and a few
// numbers per query), so the scan knows which rows could still be in the float32 top k: those
// whose upper bound s~ + E reaches the k-th best lower bound s~ - E. Only those are re-scored,
// from the float32 rows, with the float32 kernels and their one summation order (common.h),
// so ids and scores are bit for bit the float32 set's. The bound is derived in docs/design.md
// ("Exact sets").
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "ops.h"

namespace splitnet {

// What the re-score needs: the float32 rows (as the float32 set stores them) and, per row, an
// upper bound on ||a||_2 (norms) and on ||a - a~||_2, a~ the row as stored in the small type
// (residuals; +inf for a row the small type cannot stand for, which is then always re-scored).
struct ExactRows {
  Rows rows;
  const float* norms;
  const float* residuals;
};

namespace detail {

// E = alpha * norm + beta * residual + rel * |s~| + tau bounds |s - s~| for every row of one query.
struct ScoreBound {
  float alpha = 0, beta = 0, rel = 0, tau = 0;
  bool usable = false;  // false: the query is not finite or the bound overflows; re-score everything

  float operator()(float approx, float norm, float residual) const {
    return alpha * norm + beta * residual + rel * std::fabs(approx) + tau;
  }
};

inline double norm2(const float* x, index_t n) {
  double sum = 0;
  for (index_t d = 0; d < n; ++d) sum += static_cast<double>(x[d]) * x[d];
  return std::sqrt(sum);
}

// The bound's constants for one float32 query of `dim` values (the stored width) against rows of
// `dtype`. With u = 2^-24 and gamma_m = m u / (1 - m u): the float32 order sums each term
// through at most L = ceil(dim / 8) + 3 roundings, so |fl(q.x) - q.x| <= gamma_L ||q|| ||x||.
//   16-bit:  s~ is the float32 order on a~:   |s - s~| <= ||q|| r + gamma_L ||q|| (||a|| + ||a~||)
//   int8:    s~ = fl(fl(I) fl(sq sr)) for the exact integer I = q8 . r8, q^ = sq q8, a~ = sr r8:
//            |s - s~| <= ||q|| r + ||q - q^|| ||a~|| + gamma_L ||q|| ||a|| + gamma_3 ||q^|| ||a~||
// with ||a~|| <= ||a|| + r, plus the two bias additions (u |s| + u |s~| <= 2u |s~| + u E) and
// 2^-150 of underflow per rounding. Every constant is inflated by 2^-16, which covers 1 / (1 - u)
// and evaluating E in float32 (four roundings of non-negative terms).
inline ScoreBound score_bound(const float* query, index_t dim, Dtype dtype) {
  constexpr double u = 0x1p-24, inflate = 1.0 + 0x1p-16;
  const double terms = static_cast<double>((dim + kSumLanes - 1) / kSumLanes + 3);
  const double gamma = terms * u / (1.0 - terms * u), gamma3 = 3 * u / (1 - 3 * u);
  const double q = norm2(query, dim);
  double alpha = 2 * gamma * q, beta = q * (1 + gamma);
  if (dtype == Dtype::i8) {
    std::vector<std::int8_t> q8(static_cast<size_t>(dim));
    const double scale = quantize_query_i8(query, dim, q8.data());
    double err = 0, hat = 0;
    for (index_t d = 0; d < dim; ++d) {
      const double qh = scale * q8[d];
      err += (query[d] - qh) * (query[d] - qh);
      hat += qh * qh;
    }
    err = std::sqrt(err) * (1 + 1e-12), hat = std::sqrt(hat) * (1 + 1e-12);  // the double sums' own error
    alpha = err + gamma * q + gamma3 * hat;
    beta = q + err + gamma3 * hat;
  }
  ScoreBound b;
  b.alpha = static_cast<float>(alpha * inflate * (1 + 1e-12));
  b.beta = static_cast<float>(beta * inflate * (1 + 1e-12));
  b.rel = static_cast<float>(2 * u * inflate);
  b.tau = static_cast<float>((4.0 * dim + 64) * 0x1p-150 * 2);
  // the float32 constants rounded up, never down
  for (float* c : {&b.alpha, &b.beta}) *c = std::nextafter(*c, std::numeric_limits<float>::infinity());
  b.tau = std::max(b.tau, std::numeric_limits<float>::denorm_min() * (4.0f * static_cast<float>(dim) + 64));
  b.usable = std::isfinite(q) && std::isfinite(b.alpha) && std::isfinite(b.beta);
  return b;
}

// lows / highs[i] = scores[i] -/+ the bound; NaN (a NaN score, inf - inf) means unknown: -inf / +inf.
inline void bounds(const ScoreBound& bound, const float* __restrict scores, const float* __restrict norms,
                   const float* __restrict residuals, index_t n, float* __restrict lows, float* __restrict highs) {
  for (index_t i = 0; i < n; ++i) {
    const float e = bound(scores[i], norms[i], residuals[i]);
    const float low = scores[i] - e, high = scores[i] + e;
    lows[i] = low == low ? low : -kInf;
    highs[i] = high == high ? high : kInf;
  }
}

// The rows a task kept: its best k lower bounds (a heap) and every row whose upper bound reached
// the k-th lower bound when it was scanned (pruned as that bound rises).
struct Survivors {
  std::vector<float> lower_scores;
  std::vector<index_t> lower_ids, rows;
  std::vector<float> uppers;
  index_t lower_count = 0;
};

}  // namespace detail

// The best k (k <= the candidates) of query . a + bias over the float32 rows, best first, as
// topk_one on exact.rows gives them (the same ids and bits), computed by scanning `small` (the
// same candidates in a reduced type) and re-scoring only the rows that may enter. ids: the
// allowed subset (ascending) or null. Returns how many rows were re-scored.
inline index_t topk_exact_one(const KernelTable& table, const float* query, const StoredRows& small,
                              const ExactRows& exact, index_t k, float bias, float* out_scores, index_t* out_ids,
                              int threads, const index_t* ids = nullptr, index_t n_ids = 0) {
  using namespace detail;
  const index_t n = ids ? n_ids : small.count;
  const ScoreBound bound = score_bound(query, small.dim, small.dtype);
  if (!bound.usable) {  // nothing to certify with: the float32 rows, every one
    topk_one(table, query, stored(exact.rows), k, bias, out_scores, out_ids, threads, ids, n_ids);
    return n;
  }
  const OneQuery approx(table, query, small, bias, ids);
  const index_t min_chunk = std::max(min_rows_per_task(small.dim), 4 * k);
  const index_t tasks = std::max<index_t>(1, std::min<index_t>(threads, n / min_chunk));
  std::vector<Survivors> kept(static_cast<size_t>(tasks));
  parallel_chunks(n, static_cast<int>(tasks), min_chunk, kBlock, [&](int t, index_t begin, index_t end) {
    Survivors& s = kept[t];
    s.lower_scores.resize(static_cast<size_t>(k));
    s.lower_ids.resize(static_cast<size_t>(k));
    TopK lower(s.lower_scores.data(), s.lower_ids.data(), k);
    float scores[kBlock], lows[kBlock], highs[kBlock];
    for (index_t b = begin; b < end; b += kBlock) {
      const index_t count = std::min(kBlock, end - b);
      approx(b, count, scores);
      if (ids == nullptr) {  // two loops, so that the contiguous one vectorizes
        bounds(bound, scores, exact.norms + b, exact.residuals + b, count, lows, highs);
      } else {
        float norms[kBlock], residuals[kBlock];
        for (index_t i = 0; i < count; ++i) norms[i] = exact.norms[ids[b + i]], residuals[i] = exact.residuals[ids[b + i]];
        bounds(bound, scores, norms, residuals, count, lows, highs);
      }
      lower.scan(lows, count, b, nullptr, table);  // positions; ids come in below
      const float floor = lower.floor();
      for (index_t i = table.first_not_below_f32(highs, count, floor); i < count;) {
        s.rows.push_back(b + i);
        s.uppers.push_back(highs[i]);
        ++i;
        i += table.first_not_below_f32(highs + i, count - i, floor);
      }
      if (static_cast<index_t>(s.rows.size()) > std::max<index_t>(4 * k, 4096)) {  // drop what the floor passed
        index_t w = 0;
        for (size_t j = 0; j < s.rows.size(); ++j)
          if (!(s.uppers[j] < floor)) s.rows[w] = s.rows[j], s.uppers[w++] = s.uppers[j];
        s.rows.resize(static_cast<size_t>(w));
        s.uppers.resize(static_cast<size_t>(w));
      }
    }
    s.lower_count = lower.finish();
  });
  // the joint k-th lower bound, then every survivor whose upper bound reaches it
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
  score_one(table, query, stored(exact.rows), bias, scores.data(), threads, positions.data(), m);
  select_best(scores.data(), positions.data(), m, k, out_scores, out_ids);
  return m;
}

// Many users: each user's query folded once (as topk folds), then scanned as above. Once the
// scans would read more bytes than the float32 rows hold (users x the reduced element size >= 4
// bytes), and without an allowed subset, the users go through the float32 rows' cross tile
// instead, as the float32 set's many-user top-k does, reading the rows once for all of them.
// Returns the rows scored in float32, summed over users.
inline index_t topk_exact(const KernelTable& table, const Rows& users, const StoredRows& small, const ExactRows& exact,
                          const MetricForm& form, float bias, const index_t* ids, index_t n_ids, index_t k,
                          float* out_scores, index_t* out_ids, int threads) {
  if (k == 0 || users.count == 0) return 0;
  if (ids == nullptr && users.count * element_size(small.dtype) >= element_size(Dtype::f32)) {
    topk(table, users, stored(exact.rows), form, bias, nullptr, 0, k, out_scores, out_ids, threads);
    return users.count * exact.rows.count;
  }
  detail::Queries queries(table, form, users, small.dim, threads);
  index_t rescored = 0;
  for (index_t u = 0; u < users.count; ++u)
    rescored += topk_exact_one(table, queries.row(u), small, exact, k, bias, out_scores + u * k, out_ids + u * k,
                               threads, ids, n_ids);
  return rescored;
}

}  // namespace splitnet
