// The specification as a test: every KernelTable entry of every ISA this machine runs, checked
// against scalar.h (the reference) and a float64 oracle at sizes that are not lane multiples.
// The scans' float32 scores (rows of every storage type, one at a time or in blocks, and the
// cross tile) have the reference's bits: the one summation order (order.h). Pairwise sums may
// differ from it by their order (a bound from the terms' magnitudes); int8, widening, the gates
// and bits, max_lanes and sum_u64 have the reference's bits too. Plus the folding contract: one user folds with the bits of
// a batch, and one user's scores have the same bits in score and topk. And the value gate
// (values.h): no logit below it gives a value that reaches the floor.
// Build: g++ -std=c++17 -O2 -Wall -Wextra -Werror -I<repo>/kernels test_kernels.cpp -pthread
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include <numeric>

#include "splitnet_kernels/exact.h"
#include "splitnet_kernels/values.h"

namespace {

using namespace splitnet;

const index_t kSizes[] = {1, 3, 7, 15, 17, 33, 65, 127, 300};

long checks = 0, failures = 0;
std::string context;

void expect(bool ok, const char* what) {
  ++checks;
  if (ok) return;
  if (++failures <= 20) std::printf("FAIL %s: %s\n", context.c_str(), what);
}

struct Random {
  std::uint64_t state;
  std::uint64_t next() { return state = state * 6364136223846793005ULL + 1442695040888963407ULL; }
  float uniform() { return static_cast<float>(next() >> 40) / static_cast<float>(1 << 23) - 1.0f; }  // [-1, 1)
  std::vector<float> floats(index_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = uniform();
    return v;
  }
};

// Rows of `dim` values `stride` apart, the buffer ending right after the last row (so a read
// past a row shows under AddressSanitizer).
template <class T>
std::vector<T> strided(index_t n_rows, index_t dim, index_t stride, Random& random) {
  std::vector<T> v(static_cast<size_t>(n_rows == 0 ? 0 : (n_rows - 1) * stride + dim));
  for (auto& x : v) {
    if constexpr (std::is_same_v<T, float>) x = random.uniform();
    else if constexpr (std::is_same_v<T, std::int8_t>) x = static_cast<std::int8_t>(static_cast<int>(random.next() >> 56) % 128);
    else x = static_cast<T>(random.next() >> 48);
  }
  return v;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0 || (std::isnan(a) && std::isnan(b)); }

// |got - exact| within float32 summation error over terms of total magnitude `magnitude`.
bool near(float got, double exact, double magnitude, index_t terms) {
  return std::fabs(got - exact) <= 2.0 * static_cast<double>(terms + 2) * 0x1p-24 * (magnitude + std::fabs(exact)) + 1e-30;
}

float half_bits_to_float(std::uint16_t h) { return f16_to_f32(h); }
float bf16_bits_to_float(std::uint16_t h) { return bf16_to_f32(h); }

// Half-precision rows of finite values: random bits with the exponent kept moderate.
std::uint16_t finite_half(std::uint64_t bits) { return static_cast<std::uint16_t>((bits & 0x83FF) | (((bits >> 10) % 8 + 11) << 10)); }
std::uint16_t finite_bf16(std::uint64_t bits) { return static_cast<std::uint16_t>((bits & 0x807F) | (((bits >> 7) % 8 + 123) << 7)); }

void check_streaming(const KernelTable& t, Random& random) {
  const float bias = 0.375f;
  for (index_t n_rows : kSizes)
    for (index_t dim : kSizes) {
      const index_t stride = dim + 3;
      context = std::string(isa_name(t.isa)) + " rows=" + std::to_string(n_rows) + " dim=" + std::to_string(dim);
      const std::vector<float> query = random.floats(dim), rows = strided<float>(n_rows, dim, stride, random);
      std::vector<float> out(static_cast<size_t>(n_rows));
      t.score_rows_f32(query.data(), rows.data(), n_rows, dim, stride, bias, out.data());
      bool ok = true;
      for (index_t i = 0; i < n_rows; ++i) {
        double exact = bias, magnitude = std::fabs(bias);
        for (index_t d = 0; d < dim; ++d) {
          exact += static_cast<double>(query[d]) * rows[i * stride + d];
          magnitude += std::fabs(static_cast<double>(query[d]) * rows[i * stride + d]);
        }
        ok = ok && near(out[i], exact, magnitude, dim);
      }
      expect(ok, "score_rows_f32 within rounding of the float64 oracle");
      // the one summation order (order.h): the reference's bits, row by row or all at once
      std::vector<float> want(static_cast<size_t>(n_rows));
      kScalarTable.score_rows_f32(query.data(), rows.data(), n_rows, dim, stride, bias, want.data());
      ok = true;
      for (index_t i = 0; i < n_rows; ++i) {
        float one = 0.0f;
        t.score_rows_f32(query.data(), rows.data() + i * stride, 1, dim, stride, bias, &one);
        ok = ok && same_bits(out[i], want[i]) && same_bits(one, want[i]);
      }
      expect(ok, "score_rows_f32 has the reference's bits, alone or in a block");

      // 16-bit rows
      for (int bf16 = 0; bf16 < 2; ++bf16) {
        std::vector<std::uint16_t> bits(static_cast<size_t>((n_rows - 1) * stride + dim));
        for (auto& b : bits) b = bf16 ? finite_bf16(random.next() >> 20) : finite_half(random.next() >> 20);
        (bf16 ? t.score_rows_bf16 : t.score_rows_f16)(query.data(), bits.data(), n_rows, dim, stride, bias, out.data());
        ok = true;
        for (index_t i = 0; i < n_rows; ++i) {
          double exact = bias, magnitude = std::fabs(bias);
          for (index_t d = 0; d < dim; ++d) {
            const double term = static_cast<double>(query[d]) * (bf16 ? bf16_to_f32(bits[i * stride + d]) : f16_to_f32(bits[i * stride + d]));
            exact += term;
            magnitude += std::fabs(term);
          }
          ok = ok && near(out[i], exact, magnitude, dim);
        }
        expect(ok, bf16 ? "score_rows_bf16 within rounding" : "score_rows_f16 within rounding");
        // widened exactly, then the float32 order: the float32 kernel's bits on the widened rows
        std::vector<float> wide(bits.size()), want(static_cast<size_t>(n_rows));
        for (size_t j = 0; j < bits.size(); ++j) wide[j] = bf16 ? bf16_to_f32(bits[j]) : f16_to_f32(bits[j]);
        kScalarTable.score_rows_f32(query.data(), wide.data(), n_rows, dim, stride, bias, want.data());
        ok = true;
        for (index_t i = 0; i < n_rows; ++i) ok = ok && same_bits(out[i], want[i]);
        expect(ok, bf16 ? "score_rows_bf16 has the float32 bits of its widened rows"
                        : "score_rows_f16 has the float32 bits of its widened rows");
      }

      // int8: exact integer sums, score_i8's float epilogue: the reference's bits
      std::vector<std::int8_t> q8(static_cast<size_t>(dim));
      const float query_scale = quantize_query_i8(query.data(), dim, q8.data());
      const std::vector<std::int8_t> rows8 = strided<std::int8_t>(n_rows, dim, stride, random);
      const std::vector<float> scales = random.floats(n_rows);
      want.assign(static_cast<size_t>(n_rows), 0.0f);
      kScalarTable.score_rows_i8(q8.data(), query_scale, rows8.data(), scales.data(), n_rows, dim, stride, bias, want.data());
      t.score_rows_i8(q8.data(), query_scale, rows8.data(), scales.data(), n_rows, dim, stride, bias, out.data());
      ok = true;
      for (index_t i = 0; i < n_rows; ++i) ok = ok && same_bits(out[i], want[i]);
      expect(ok, "score_rows_i8 has the reference's bits");

      // pairs, weighted and not
      const std::vector<float> other = strided<float>(n_rows, dim, stride + 2, random), weights = random.floats(dim);
      for (int weighted = 0; weighted < 2; ++weighted) {
        t.score_pairs_f32(rows.data(), stride, other.data(), stride + 2, weighted ? weights.data() : nullptr, n_rows, dim,
                          bias, out.data());
        ok = true;
        for (index_t i = 0; i < n_rows; ++i) {
          double exact = bias, magnitude = std::fabs(bias);
          for (index_t d = 0; d < dim; ++d) {
            const double term = static_cast<double>(rows[i * stride + d]) * (weighted ? weights[d] : 1.0f) *
                                other[i * (stride + 2) + d];
            exact += term;
            magnitude += std::fabs(term);
          }
          ok = ok && near(out[i], exact, magnitude, 2 * dim);
        }
        expect(ok, weighted ? "score_pairs_f32 (weights) within rounding" : "score_pairs_f32 within rounding");
      }
    }
}

// The fused full pairs, where a table has them, against the two entries they fuse: the fold of
// each user through the tile (bias 0), then the pair's dot, bit for bit; users and ads at other
// strides, S padded as the tile takes it (zero columns past dim), some users non-finite.
void check_full_pairs(const KernelTable& t, Random& random) {
  if (t.score_pairs_full_f32 == nullptr) return;
  const float bias = -0.625f;
  for (index_t n_pairs : kSizes)
    for (index_t dim : kSizes) {
      const index_t pad = (dim + 15) / 16 * 16, user_stride = dim + 1, ad_stride = dim + 2;
      context = std::string(isa_name(t.isa)) + " full pairs=" + std::to_string(n_pairs) + " dim=" + std::to_string(dim);
      std::vector<float> s_t(static_cast<size_t>(dim * pad), 0.0f);
      for (index_t d = 0; d < dim; ++d)
        for (index_t j = 0; j < dim; ++j) s_t[d * pad + j] = random.uniform();
      std::vector<float> users = strided<float>(n_pairs, dim, user_stride, random);
      const std::vector<float> ads = strided<float>(n_pairs, dim, ad_stride, random);
      if (n_pairs > 2) users[user_stride + dim / 2] = std::numeric_limits<float>::infinity();  // NaN in padding columns
      if (n_pairs > 3) users[2 * user_stride] = std::numeric_limits<float>::quiet_NaN();
      std::vector<float> folded(static_cast<size_t>(pad)), want(static_cast<size_t>(n_pairs)), got(want.size());
      for (index_t i = 0; i < n_pairs; ++i) {
        t.score_tile_f32(s_t.data(), pad, users.data() + i * user_stride, 1, dim, user_stride, 0.0f, nullptr, folded.data());
        t.score_pairs_f32(folded.data(), pad, ads.data() + i * ad_stride, ad_stride, nullptr, 1, dim, bias, &want[i]);
      }
      t.score_pairs_full_f32(s_t.data(), pad, users.data(), user_stride, ads.data(), ad_stride, n_pairs, dim, bias,
                             got.data());
      bool ok = true;
      for (index_t i = 0; i < n_pairs; ++i) ok = ok && same_bits(got[i], want[i]);
      expect(ok, "score_pairs_full_f32 has the bits of score_tile_f32 then score_pairs_f32");
    }
}

void check_tiles(const KernelTable& t, Random& random) {
  const float bias = -0.125f;
  for (index_t users : {index_t{1}, index_t{7}, index_t{17}, index_t{33}, index_t{65}, index_t{127}})
    for (index_t n_rows : {index_t{1}, index_t{3}, index_t{7}, index_t{15}, index_t{17}, index_t{33}, index_t{64}})
      for (index_t dim : kSizes) {
        const index_t pad = (users + 15) / 16 * 16, stride = dim + 1;
        context = std::string(isa_name(t.isa)) + " tile users=" + std::to_string(users) + " rows=" +
                  std::to_string(n_rows) + " dim=" + std::to_string(dim);
        std::vector<float> users_t(static_cast<size_t>(dim * pad), 0.0f);
        for (index_t d = 0; d < dim; ++d)
          for (index_t u = 0; u < users; ++u) users_t[d * pad + u] = random.uniform();
        const std::vector<float> rows = strided<float>(n_rows, dim, stride, random);
        std::vector<float> tile(static_cast<size_t>(64 * pad)), gates(static_cast<size_t>(pad));
        for (index_t u = 0; u < pad; ++u) gates[u] = u < users ? random.uniform() * 2.0f : std::numeric_limits<float>::infinity();
        if (users > 3) gates[2] = std::numeric_limits<float>::quiet_NaN();
        expect(t.score_tile_f32(users_t.data(), pad, rows.data(), n_rows, dim, stride, bias, nullptr, tile.data()) == 0,
               "score_tile_f32 without gates returns no bits");
        const std::uint64_t hits = t.score_tile_f32(users_t.data(), pad, rows.data(), n_rows, dim, stride, bias,
                                                    gates.data(), tile.data());
        bool ok = true;
        std::uint64_t want_hits = 0;
        for (index_t c = 0; c < n_rows; ++c)
          for (index_t u = 0; u < pad; ++u) {
            double exact = bias, magnitude = std::fabs(bias);
            for (index_t d = 0; d < dim; ++d) {
              exact += static_cast<double>(users_t[d * pad + u]) * rows[c * stride + d];
              magnitude += std::fabs(static_cast<double>(users_t[d * pad + u]) * rows[c * stride + d]);
            }
            const float got = tile[c * pad + u];
            ok = ok && near(got, exact, magnitude, dim);
            if (!(got < gates[u])) want_hits |= std::uint64_t{1} << c;
          }
        expect(ok, "score_tile_f32 within rounding of the float64 oracle");
        ok = true;  // the one summation order: each user's score has the one-user kernel's bits
        for (index_t u = 0; u < users; ++u) {
          std::vector<float> user(static_cast<size_t>(dim)), want(static_cast<size_t>(n_rows));
          for (index_t d = 0; d < dim; ++d) user[d] = users_t[d * pad + u];
          kScalarTable.score_rows_f32(user.data(), rows.data(), n_rows, dim, stride, bias, want.data());
          for (index_t c = 0; c < n_rows; ++c) ok = ok && same_bits(tile[c * pad + u], want[c]);
        }
        expect(ok, "score_tile_f32 has the one-user kernel's bits");
        expect(hits == want_hits, "score_tile_f32's hit bits are exactly those of its own scores");

        if (t.score_tile_i8 == nullptr) continue;
        // int8 tile: users quantized as UserBlock does, scored with the reference's bits
        const index_t groups = (dim + 3) / 4;
        std::vector<std::int32_t> words(static_cast<size_t>(groups * pad), 0), offsets(static_cast<size_t>(pad), 0);
        std::vector<float> user_scales(static_cast<size_t>(pad), 0.0f);
        std::vector<std::vector<std::int8_t>> quantized(static_cast<size_t>(users));
        for (index_t u = 0; u < users; ++u) {
          const std::vector<float> user = random.floats(dim);
          std::vector<std::int8_t> bytes(static_cast<size_t>(groups * 4), 0);
          user_scales[u] = quantize_query_i8(user.data(), dim, bytes.data());
          for (index_t d = 0; d < dim; ++d) offsets[u] += 128 * bytes[d];
          for (index_t g = 0; g < groups; ++g) std::memcpy(&words[g * pad + u], bytes.data() + 4 * g, 4);
          quantized[u] = bytes;
        }
        const std::vector<std::int8_t> rows8 = strided<std::int8_t>(n_rows, dim, stride, random);
        const std::vector<float> row_scales = random.floats(n_rows);
        t.score_tile_i8(words.data(), pad, offsets.data(), user_scales.data(), rows8.data(), row_scales.data(), n_rows, dim,
                        stride, bias, nullptr, tile.data());
        ok = true;
        for (index_t c = 0; c < n_rows; ++c)
          for (index_t u = 0; u < users; ++u) {
            float want = 0.0f;
            kScalarTable.score_rows_i8(quantized[u].data(), user_scales[u], rows8.data() + c * stride, row_scales.data() + c,
                                       1, dim, stride, bias, &want);
            ok = ok && same_bits(tile[c * pad + u], want);
          }
        expect(ok, "score_tile_i8 has score_rows_i8's bits");
        std::vector<float> gated(tile.size());
        const std::uint64_t hits_i8 = t.score_tile_i8(words.data(), pad, offsets.data(), user_scales.data(), rows8.data(),
                                                      row_scales.data(), n_rows, dim, stride, bias, gates.data(),
                                                      gated.data());
        std::uint64_t want_i8 = 0;
        ok = true;
        for (index_t c = 0; c < n_rows; ++c)
          for (index_t u = 0; u < pad; ++u) {
            ok = ok && same_bits(gated[c * pad + u], tile[c * pad + u]);
            if (!(tile[c * pad + u] < gates[u])) want_i8 |= std::uint64_t{1} << c;
          }
        expect(ok && hits_i8 == want_i8, "score_tile_i8's hit bits are exactly those of its own scores");
      }
}

void check_gates_and_widening(const KernelTable& t, Random& random) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (index_t n : {index_t{1}, index_t{3}, index_t{7}, index_t{15}, index_t{17}, index_t{33}, index_t{65},
                    index_t{127}, index_t{300}, index_t{256}}) {
    context = std::string(isa_name(t.isa)) + " n=" + std::to_string(n);
    std::vector<float> values = random.floats(n), gates = random.floats(n);
    for (index_t i = 0; i < n; i += 5) values[i] = nan;
    for (index_t i = 1; i < n; i += 7) values[i] = -inf;
    for (index_t i = 2; i < n; i += 11) gates[i] = nan;
    for (index_t i = 3; i < n; i += 13) values[i] = gates[i];  // equal passes
    std::vector<std::uint64_t> bits((n + 63) / 64), want_bits(bits.size());
    const bool any = t.not_below_bits_f32(values.data(), gates.data(), n, bits.data());
    const bool want_any = kScalarTable.not_below_bits_f32(values.data(), gates.data(), n, want_bits.data());
    expect(any == want_any && bits == want_bits, "not_below_bits_f32 equals the reference");
    std::vector<float> below(static_cast<size_t>(n), -1.0f);
    expect(!t.not_below_bits_f32(below.data(), std::vector<float>(static_cast<size_t>(n), 0.0f).data(), n, bits.data()),
           "not_below_bits_f32 is false when all are below");
    for (float gate : {-2.0f, 0.0f, 0.5f, 2.0f, nan, -inf}) {
      expect(t.first_not_below_f32(values.data(), n, gate) == kScalarTable.first_not_below_f32(values.data(), n, gate),
             "first_not_below_f32 equals the reference");
      expect(t.first_not_below_f32(below.data(), n, gate) == kScalarTable.first_not_below_f32(below.data(), n, gate),
             "first_not_below_f32 equals the reference (all below)");
    }
    float lanes[16], want_lanes[16];
    t.max_lanes_f32(values.data(), n, lanes);
    kScalarTable.max_lanes_f32(values.data(), n, want_lanes);
    bool ok = true;
    for (int j = 0; j < 16; ++j) ok = ok && same_bits(lanes[j], want_lanes[j]) && !std::isnan(lanes[j]);
    expect(ok, "max_lanes_f32 equals the reference, NaN skipped");

    std::vector<std::uint64_t> words(static_cast<size_t>(n));
    for (auto& w : words) w = random.next();
    expect(t.sum_u64(words.data(), n) == kScalarTable.sum_u64(words.data(), n), "sum_u64 equals the reference");
  }
  // widening: every 16-bit pattern, at odd offsets and lengths
  context = std::string(isa_name(t.isa)) + " widen";
  std::vector<std::uint16_t> all(65536);
  for (int i = 0; i < 65536; ++i) all[i] = static_cast<std::uint16_t>(i);
  std::vector<float> got(65536), want(65536);
  for (int bf16 = 0; bf16 < 2; ++bf16) {
    bool ok = true;
    for (index_t n : kSizes) {
      for (index_t first = 0; first + n <= 65536; first += n * 37 + 1) {
        (bf16 ? t.widen_bf16 : t.widen_f16)(all.data() + first, n, got.data());
        for (index_t i = 0; i < n; ++i)
          ok = ok && same_bits(got[i], bf16 ? bf16_bits_to_float(all[first + i]) : half_bits_to_float(all[first + i]));
      }
    }
    (bf16 ? t.widen_bf16 : t.widen_f16)(all.data(), 65536, got.data());
    (bf16 ? kScalarTable.widen_bf16 : kScalarTable.widen_f16)(all.data(), 65536, want.data());
    for (int i = 0; i < 65536; ++i) ok = ok && same_bits(got[i], want[i]);
    expect(ok, bf16 ? "widen_bf16 is exact on every pattern" : "widen_f16 is exact on every pattern");
  }
}

// The drivers' contract on this table: folding is per user (a batch folds with the bits of
// each user alone); one user's scores have the same bits in score and topk.
void check_folding(const KernelTable& t, Random& random) {
  for (index_t dim : {index_t{7}, index_t{17}, index_t{65}}) {
    context = std::string(isa_name(t.isa)) + " fold dim=" + std::to_string(dim);
    const index_t users_n = 37, rank = 3, width = dim + 5;
    const std::vector<float> users = random.floats(users_n * dim), diag = random.floats(dim),
                             left = random.floats(dim * rank), right = random.floats(dim * rank),
                             full = random.floats(dim * dim);
    MetricForm forms[4];
    forms[0].diag = diag.data();
    forms[1].left = full.data();
    forms[1].rank = dim;
    forms[2].diag = diag.data();
    forms[2].left = left.data();
    forms[2].right = right.data();
    forms[2].rank = rank;
    forms[3].left = left.data();
    forms[3].right = right.data();
    forms[3].rank = rank;
    for (MetricForm& form : forms) {
      form.dim = dim;
      std::vector<float> batch(static_cast<size_t>(users_n * width), 7.0f), one(static_cast<size_t>(width), 7.0f);
      fold_users(t, form, Rows{users.data(), users_n, dim, dim}, batch.data(), width, width, 2);
      bool ok = true, near_ok = true;
      for (index_t u = 0; u < users_n; ++u) {
        fold_users(t, form, Rows{users.data() + u * dim, 1, dim, dim}, one.data(), width, width, 1);
        for (index_t d = 0; d < width; ++d) ok = ok && same_bits(one[d], batch[u * width + d]);
        for (index_t j = 0; j < dim; ++j) {  // q_j = sum_i u_i S_ij, S = diag + left right^T
          double exact = 0, magnitude = 0;
          for (index_t i = 0; i < dim; ++i) {
            double s = (form.diag && i == j) ? form.diag[i] : 0.0;
            if (form.left && form.right)
              for (index_t r = 0; r < rank; ++r) s += static_cast<double>(form.left[i * rank + r]) * form.right[j * rank + r];
            else if (form.left)
              s += form.left[i * dim + j];
            exact += users[u * dim + i] * s;
            magnitude += std::fabs(users[u * dim + i] * s);
          }
          near_ok = near_ok && near(one[j], exact, magnitude * (1 + rank), dim * (rank + 2));
        }
        for (index_t d = dim; d < width; ++d) ok = ok && one[d] == 0.0f;
      }
      expect(ok, "fold_users: one user has the bits of the batch, zeros past dim");
      expect(near_ok, "fold_users within rounding of the float64 oracle");
    }
    // score and topk agree bit for bit, one user and many
    const index_t n_rows = 301, k = 17;
    const std::vector<float> rows = random.floats(n_rows * dim);
    const Rows candidates{rows.data(), n_rows, dim, dim};
    std::vector<float> scores(static_cast<size_t>(users_n * n_rows)), top(static_cast<size_t>(users_n * k));
    std::vector<index_t> ids(top.size());
    for (index_t count : {index_t{1}, users_n}) {
      const Rows u{users.data(), count, dim, dim};
      score(t, u, stored(candidates), forms[2], 0.25f, nullptr, 0, scores.data(), 2);
      topk(t, u, stored(candidates), forms[2], 0.25f, nullptr, 0, k, top.data(), ids.data(), 2);
      bool ok = true;
      for (index_t r = 0; r < count; ++r)
        for (index_t i = 0; i < k; ++i) {
          ok = ok && same_bits(top[r * k + i], scores[r * n_rows + ids[r * k + i]]);
          if (i > 0) ok = ok && ranks_before(top[r * k + i - 1], ids[r * k + i - 1], top[r * k + i], ids[r * k + i]);
          if (i == k - 1)
            for (index_t c = 0; c < n_rows; ++c) {  // nothing left out ranks before the k-th
              const bool kept = std::count(ids.begin() + r * k, ids.begin() + r * k + k, c) == 1;
              ok = ok && (kept || !ranks_before(scores[r * n_rows + c], c, top[r * k + i], ids[r * k + i]));
            }
        }
      expect(ok, count == 1 ? "topk of one user: the best of score's bits" : "topk of many users: the best of score's bits");
    }
  }
}

// The value gate is sound: for floors and bids from 1e-30 to 1e30 and probabilities near 0 and
// near 1, the largest float below logit_gate(floor, bid_max) gives, for every bid <= bid_max, a
// value below the floor. And the probability is monotone.
void check_values(Random& random) {
  context = "values";
  bool sound = true, monotone = true;
  for (int i = 0; i < 200000; ++i) {
    const float bid_max = std::ldexp(1.0f + std::fabs(random.uniform()), static_cast<int>(random.next() >> 58) - 32);
    const float p = i % 3 == 0 ? 1.0f - std::ldexp(std::fabs(random.uniform()), -static_cast<int>(random.next() >> 59))
                               : std::ldexp(std::fabs(random.uniform()), -static_cast<int>(random.next() >> 57));
    const float floor = bid_max * p;
    const float gate = detail::logit_gate(floor, bid_max);
    if (!std::isfinite(gate)) continue;
    const float below = std::nextafter(gate, -detail::kInf);
    for (float bid : {bid_max, std::nextafter(bid_max, 0.0f), bid_max * std::fabs(random.uniform())})
      sound = sound && !(expected_value(below, bid) >= floor);
    const float x = std::ldexp(random.uniform(), static_cast<int>(random.next() >> 60));
    monotone = monotone && probability(x) <= probability(std::nextafter(x, detail::kInf));
  }
  expect(sound, "a logit below the gate never reaches the floor");
  expect(monotone, "the probability is monotone");
  expect(detail::logit_gate(0.0f, 1.0f) == -detail::kInf && detail::logit_gate(1.0f, 0.0f) == detail::kInf &&
             detail::logit_gate(2.0f, 1.0f) == detail::kInf,
         "the gate's edges: no floor, no bid, a floor above the bid");
}

// The nearest IEEE half of x (ties to even; beyond the largest half, the largest), by bisection.
std::uint16_t nearest_half(float x) {
  const float a = std::fabs(x);
  std::uint16_t lo = 0, hi = 0x7BFF;
  while (lo < hi) {
    const std::uint16_t mid = static_cast<std::uint16_t>((lo + hi + 1) / 2);
    if (f16_to_f32(mid) <= a) lo = mid; else hi = static_cast<std::uint16_t>(mid - 1);
  }
  std::uint16_t h = lo;
  if (h < 0x7BFF) {
    const float below = a - f16_to_f32(h), above = f16_to_f32(static_cast<std::uint16_t>(h + 1)) - a;
    if (above < below || (above == below && (h & 1))) ++h;
  }
  return static_cast<std::uint16_t>(h | (std::signbit(x) ? 0x8000 : 0));
}

// The exact sets' bound (exact.h) on its own: for adversarial rows (near-ties, one huge value per
// row, magnitudes from 2^-100 to 2^148, subnormal and all-zero rows, rows and queries so small
// that the int8 scale product is subnormal, lanes that overflow where the exact sum does not) and
// queries, with and without a bias, the float32 score s and the reduced-precision score s~ are
// finite and never differ by more than score_bound's E wherever the bound claims to hold (a
// usable query, a bounded row). norms and residuals are computed as _storage.py stores them: in
// double, rounded up to float32.
void check_exact_bound(const KernelTable& t, Random& random) {
  bool ok = true;
  for (index_t dim : {index_t{1}, index_t{7}, index_t{64}, index_t{300}})
    for (int trial = 0; trial < 60; ++trial) {
      const index_t n_rows = 33;
      const float bias = trial % 2 == 0 ? 0.25f : 0.0f;  // a bias hides errors far below it
      context = std::string(isa_name(t.isa)) + " exact bound dim=" + std::to_string(dim);
      std::vector<float> query = random.floats(dim), rows = random.floats(n_rows * dim);
      // 1e-30..1e30 (and beyond), or (every third trial) the extremes: 2^-75 (the int8 scale
      // product subnormal against rows of 2^-74), 2^58 (just below the bounded norm)
      const int extreme = trial % 3 == 2 ? (trial % 4 < 2 ? -75 : 58) : 0;
      const float query_scale = std::ldexp(1.0f, extreme ? extreme : static_cast<int>(random.next() >> 59) * 8 - 100);
      for (float& q : query) q *= query_scale;
      for (index_t i = 0; i < n_rows; ++i) {
        float* row = rows.data() + i * dim;
        const int shape = static_cast<int>(random.next() >> 61);
        const float scale = extreme ? std::ldexp(1.0f + 4.0f * std::fabs(random.uniform()), extreme == 58 ? 50 : -74)
                                    : std::ldexp(1.0f, static_cast<int>(random.next() >> 58) * 3 - 96);
        for (index_t d = 0; d < dim; ++d) row[d] *= scale;
        if (shape == 1) row[random.next() % dim] *= 1e4f;                    // one huge coordinate
        if (shape == 2 && i > 0) std::memcpy(row, row - dim, dim * 4), row[0] = std::nextafter(row[0], 1e30f);
        if (shape == 3) std::fill(row, row + dim, 0.0f);
        if (shape == 4) for (index_t d = 0; d < dim; ++d) row[d] = std::numeric_limits<float>::denorm_min() * (d % 5);
        if (shape == 5)  // products of 2^126 in one lane, two up and two down: the lane overflows, the sum is 0
          for (index_t j = 0; j < 4 && 8 * j < dim; ++j)
            row[8 * j] = std::ldexp(std::copysign(1.0f, query[8 * j]) * (j < 2 ? 1.0f : -1.0f),
                                    126 - std::ilogb(query[8 * j] == 0.0f ? 1.0f : query[8 * j]));
      }
      std::vector<float> exact(static_cast<size_t>(n_rows));
      t.score_rows_f32(query.data(), rows.data(), n_rows, dim, dim, bias, exact.data());
      for (Dtype dtype : {Dtype::i8, Dtype::bf16, Dtype::f16}) {
        // the rows in the reduced type and the widened values a~ (double, exact)
        std::vector<std::uint16_t> half(static_cast<size_t>(n_rows * dim));
        std::vector<std::int8_t> bytes(half.size());
        std::vector<float> scales(static_cast<size_t>(n_rows), 1.0f), approx(static_cast<size_t>(n_rows));
        std::vector<double> stored(half.size());
        for (index_t i = 0; i < n_rows; ++i) {
          float peak = 0.0f;
          for (index_t d = 0; d < dim; ++d) peak = std::fmax(peak, std::fabs(rows[i * dim + d]));
          if (peak > 0) scales[i] = std::fmax(std::nextafter(static_cast<float>(peak / 127.0), 0.0f),
                                              std::numeric_limits<float>::denorm_min());
          for (index_t d = 0; d < dim; ++d) {
            const float x = rows[i * dim + d];
            std::uint32_t bits;
            std::memcpy(&bits, &x, 4);
            const std::uint16_t bf = static_cast<std::uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
            const std::uint16_t h = nearest_half(x);
            const auto b = static_cast<std::int8_t>(std::fmax(-127.0, std::fmin(127.0, std::nearbyint(x / static_cast<double>(scales[i])))));
            half[i * dim + d] = dtype == Dtype::bf16 ? bf : h;
            bytes[i * dim + d] = b;
            stored[i * dim + d] = dtype == Dtype::i8 ? static_cast<double>(b) * scales[i]
                                  : dtype == Dtype::bf16 ? bf16_to_f32(bf) : f16_to_f32(h);
          }
        }
        if (dtype == Dtype::i8) {
          std::vector<std::int8_t> q8(static_cast<size_t>(dim));
          const float qs = quantize_query_i8(query.data(), dim, q8.data());
          t.score_rows_i8(q8.data(), qs, bytes.data(), scales.data(), n_rows, dim, dim, bias, approx.data());
        } else {
          (dtype == Dtype::bf16 ? t.score_rows_bf16 : t.score_rows_f16)(query.data(), half.data(), n_rows, dim, dim, bias,
                                                                       approx.data());
        }
        const detail::ScoreBound bound = detail::score_bound(query.data(), dim, dtype, bias);
        if (!bound.usable) continue;
        for (index_t i = 0; i < n_rows; ++i) {
          double norm = 0, residual = 0;
          for (index_t d = 0; d < dim; ++d) {
            norm += static_cast<double>(rows[i * dim + d]) * rows[i * dim + d];
            residual += (rows[i * dim + d] - stored[i * dim + d]) * (rows[i * dim + d] - stored[i * dim + d]);
          }
          auto up = [](double x) { const float y = static_cast<float>(x); return y < x ? std::nextafter(y, 1e38f) : y; };
          const float nu = up(std::sqrt(norm)), rho = std::isfinite(stored[i * dim]) ? up(std::sqrt(residual)) : INFINITY;
          if (!detail::bounded(nu, rho)) continue;  // such rows are always re-scored
          const float e = bound(approx[i], nu, rho);
          ok = ok && std::isfinite(exact[i]) && std::isfinite(approx[i]) &&
               std::fabs(static_cast<double>(exact[i]) - approx[i]) <= e;
        }
      }
    }
  expect(ok, "|float32 score - reduced score| <= the exact sets' bound");
}

// Heads (row by row), scales and rest norms in score_heads_i8's blocks of 16 rows (isa.h).
std::vector<std::int8_t> head_blocks(const std::vector<std::int8_t>& heads, const std::vector<float>& scales,
                                     const std::vector<float>& rests, index_t n_rows, index_t width) {
  const index_t block_bytes = 16 * width + 128;
  std::vector<std::int8_t> blocks(static_cast<size_t>((n_rows + 15) / 16 * block_bytes));
  for (index_t i = 0; i < n_rows; ++i) {
    std::int8_t* block = blocks.data() + (i / 16) * block_bytes;
    for (index_t d = 0; d < width; ++d) block[(d / 4) * 64 + (i % 16) * 4 + d % 4] = heads[i * width + d];
    std::memcpy(block + 16 * width + 4 * (i % 16), &scales[i], 4);
    std::memcpy(block + 16 * width + 64 + 4 * (i % 16), &rests[i], 4);
  }
  return blocks;
}

// score_heads_i8 against the heads row by row: exact integer sums, score_i8's operations, then
// + rest * rest norm, at row counts around the block of 16 (the buffer ends with the last block).
void check_heads(const KernelTable& t, Random& random) {
  for (index_t width : {index_t{4}, index_t{8}, index_t{16}, index_t{24}})
    for (index_t n_rows : {index_t{1}, index_t{15}, index_t{16}, index_t{17}, index_t{33}, index_t{100}}) {
      context = std::string(isa_name(t.isa)) + " heads width=" + std::to_string(width) + " rows=" + std::to_string(n_rows);
      std::vector<std::int8_t> heads = strided<std::int8_t>(n_rows, width, width, random), query(static_cast<size_t>(width));
      for (std::int8_t& q : query) q = static_cast<std::int8_t>(static_cast<int>(random.next() >> 56) % 128);
      std::vector<float> scales = random.floats(n_rows), rests = random.floats(n_rows), out(static_cast<size_t>(n_rows));
      for (float& x : rests) x = std::fabs(x);
      const float query_scale = 0.01f, rest = 0.75f, bias = 0.125f;
      const std::vector<std::int8_t> blocks = head_blocks(heads, scales, rests, n_rows, width);
      t.score_heads_i8(query.data(), query_scale, blocks.data(), rest, n_rows, width, bias, out.data());
      bool ok = true;
      for (index_t i = 0; i < n_rows; ++i) {
        std::int32_t sum = 0;
        for (index_t d = 0; d < width; ++d) sum += query[d] * heads[i * width + d];
        float extra = rest * rests[i];
        SPLITNET_KERNELS_NO_CONTRACTION(extra);
        ok = ok && same_bits(out[i], score_i8(static_cast<float>(sum), query_scale, scales[i], bias) + extra);
      }
      expect(ok, "score_heads_i8 has the row-by-row reference's bits");
    }
}

// The head test's bound (exact.h, head_bound) on adversarial rows: a random rotation (orthogonal
// to float64 rounding), rows at magnitudes from 2^-90 to 2^50 whose values past the head point
// along the turned query's (where |p2 . b2| = ||p2|| ||b2||: the rest term is tight there) or
// against it, one huge head value, zero rows; heads, scales, residuals and rest norms made as
// _storage.py makes them. Wherever the bound holds (a usable query, bounded rows), s - s~1 lies
// within E1; and with the rest term at 0.9 of itself, some row falls outside (the check can fail).
void check_head_bound(const KernelTable& t, Random& random) {
  context = std::string(isa_name(t.isa)) + " head bound";
  bool ok = true, shrunk_fails = false;
  for (index_t dim : {index_t{16}, index_t{40}, index_t{64}})
    for (int trial = 0; trial < 20; ++trial) {
      const index_t width = dim / 4 / 4 * 4 == 0 ? 4 : dim / 4 / 4 * 4, n_rows = 17;
      // a rotation: Gram-Schmidt of random vectors, in float64
      std::vector<double> rotation(static_cast<size_t>(dim * dim));
      for (double& x : rotation) x = random.uniform();
      for (index_t i = 0; i < dim; ++i)
        for (int pass = 0; pass < 2; ++pass) {
          for (index_t j = 0; j < i; ++j) {
            double dot = 0;
            for (index_t d = 0; d < dim; ++d) dot += rotation[i * dim + d] * rotation[j * dim + d];
            for (index_t d = 0; d < dim; ++d) rotation[i * dim + d] -= dot * rotation[j * dim + d];
          }
          double norm = 0;
          for (index_t d = 0; d < dim; ++d) norm += rotation[i * dim + d] * rotation[i * dim + d];
          for (index_t d = 0; d < dim; ++d) rotation[i * dim + d] /= std::sqrt(norm);
        }
      double off = 0;  // ||I - R^T R||_F, with room for its own rounding
      for (index_t i = 0; i < dim; ++i)
        for (index_t j = 0; j < dim; ++j) {
          double dot = 0;
          for (index_t d = 0; d < dim; ++d) dot += rotation[d * dim + i] * rotation[d * dim + j];
          off += (dot - (i == j)) * (dot - (i == j));
        }
      const double delta = std::sqrt(off) * 2 + 4 * dim * dim * 0x1p-52;
      const float bias = trial % 2 ? 0.25f : 0.0f;
      const int magnitude = static_cast<int>(random.next() >> 58) * 2 - 90;  // 2^-90 .. 2^36
      std::vector<float> query = random.floats(dim);
      for (float& q : query) q = std::ldexp(q, trial % 3 == 0 ? 0 : magnitude / 2);
      // p = R q, to aim the rows' rests along it
      std::vector<double> p(static_cast<size_t>(dim));
      for (index_t i = 0; i < dim; ++i)
        for (index_t j = 0; j < dim; ++j) p[i] += rotation[i * dim + j] * query[j];
      std::vector<float> rows(static_cast<size_t>(n_rows * dim));
      for (index_t r = 0; r < n_rows; ++r) {
        std::vector<double> b(static_cast<size_t>(dim));  // the turned row, then a = R^T b
        const int shape = static_cast<int>(r % 4);
        const double scale = std::ldexp(1.0, magnitude + static_cast<int>(r % 5));
        for (index_t d = 0; d < dim; ++d)
          b[d] = d < width ? random.uniform() * scale : (shape == 0 ? 1 : shape == 1 ? -1 : 0.2 * random.uniform()) *
                                                         p[d] / (std::fabs(p[d]) + 1e-300) * std::fabs(p[d]) * scale /
                                                         (std::sqrt(std::inner_product(p.begin() + width, p.end(), p.begin() + width, 0.0)) + 1e-300);
        if (shape == 3) b[0] *= 1e4;
        if (r == n_rows - 1) std::fill(b.begin(), b.end(), 0.0);
        for (index_t j = 0; j < dim; ++j) {
          double a = 0;
          for (index_t i = 0; i < dim; ++i) a += rotation[i * dim + j] * b[i];
          rows[r * dim + j] = static_cast<float>(a);
        }
      }
      std::vector<float> exact(static_cast<size_t>(n_rows));
      t.score_rows_f32(query.data(), rows.data(), n_rows, dim, dim, bias, exact.data());
      // the heads as _storage.py makes them: b = R a in float64, the head quantized per row
      std::vector<std::int8_t> heads(static_cast<size_t>(n_rows * width));
      std::vector<float> scales(static_cast<size_t>(n_rows)), rests(scales.size()), residuals(scales.size()),
          norms(scales.size()), approx(scales.size());
      const double gn = dim * 0x1p-53 / (1 - dim * 0x1p-53), spread = gn * std::sqrt(dim * (1 + delta)) * (1 + 1e-9);
      auto up = [](double x) { const float y = static_cast<float>(x); return y < x ? std::nextafter(y, 1e38f) : y; };
      for (index_t r = 0; r < n_rows; ++r) {
        std::vector<double> b(static_cast<size_t>(dim));
        double norm = 0, peak = 0, tail = 0, residual = 0;
        for (index_t j = 0; j < dim; ++j) norm += static_cast<double>(rows[r * dim + j]) * rows[r * dim + j];
        for (index_t i = 0; i < dim; ++i) {
          for (index_t j = 0; j < dim; ++j) b[i] += rotation[i * dim + j] * rows[r * dim + j];
          if (i < width) peak = std::max(peak, std::fabs(b[i])); else tail += b[i] * b[i];
        }
        float s = static_cast<float>(peak / 127);
        if (s > peak / 127) s = std::nextafter(s, 0.0f);
        s = peak > 0 ? std::max(s, std::numeric_limits<float>::denorm_min()) : 1.0f;
        for (index_t d = 0; d < width; ++d) {
          const double q = std::max(-127.0, std::min(127.0, std::nearbyint(b[d] / s)));
          heads[r * width + d] = static_cast<std::int8_t>(q);
          residual += (b[d] - q * s) * (b[d] - q * s);
        }
        scales[r] = s, norms[r] = up(std::sqrt(norm));
        residuals[r] = up(std::sqrt(residual) + spread * std::sqrt(norm));
        rests[r] = up(std::sqrt(tail) + spread * std::sqrt(norm));
      }
      Levels levels{rotation.data(), dim, delta, nullptr, width, nullptr};
      std::vector<std::int8_t> q8(static_cast<size_t>(width));
      float q_scale = 0;
      const detail::ScoreBound bound = detail::head_bound(query.data(), dim, bias, levels, q8.data(), &q_scale);
      if (!bound.usable) continue;
      for (const float shrink : {1.0f, 0.9f}) {
        const std::vector<std::int8_t> blocks = head_blocks(heads, scales, rests, n_rows, width);
        t.score_heads_i8(q8.data(), q_scale, blocks.data(), bound.rest * shrink, n_rows, width, bias, approx.data());
        for (index_t r = 0; r < n_rows; ++r) {
          if (!detail::bounded(norms[r], residuals[r]) || !std::isfinite(rests[r])) continue;
          // approx holds s~1 + rest * rest_norm: the upper bound, less E1's other terms
          const float e = bound(approx[r], norms[r], residuals[r]);
          const bool within = std::isfinite(exact[r]) && static_cast<double>(exact[r]) <= static_cast<double>(approx[r]) + e;
          if (shrink == 1.0f) ok = ok && within;
          else shrunk_fails = shrunk_fails || !within;
        }
      }
    }
  expect(ok, "the float32 score never exceeds the head's s~1 + E1 + rest * rest_norm");
  expect(shrunk_fails, "with the rest term shrunk by a tenth, some adversarial row exceeds it");
}

// The certified tile's gate (exact.h, tile_gate) on its own: for floors and bounds from 1e-38 to
// 1e30 and rows whose norm and residual are at most the tile's largest, the largest score below
// the gate has an upper bound s + E (evaluated in float32, as the sink does) below the floor.
void check_tile_gate(Random& random) {
  context = "tile gate";
  bool sound = true;
  for (int i = 0; i < 200000; ++i) {
    const int scale = static_cast<int>(random.next() >> 58) - 32;
    std::vector<float> query = random.floats(8);
    for (float& q : query) q = std::ldexp(q, scale);
    const detail::ScoreBound bound = detail::score_bound(query.data(), 8, Dtype::i8, 0.0f);
    if (!bound.usable) continue;
    const float norm = std::ldexp(std::fabs(random.uniform()), static_cast<int>(random.next() >> 59) - 16);
    const float residual = norm * std::ldexp(std::fabs(random.uniform()), -static_cast<int>(random.next() >> 60));
    const float floor = std::ldexp(random.uniform(), scale + static_cast<int>(random.next() >> 60) - 8);
    const float gate = detail::tile_gate(floor, bound.most(norm, residual));
    if (!std::isfinite(gate)) continue;
    const float below = std::nextafter(gate, -detail::kInf);
    for (float f : {1.0f, std::fabs(random.uniform()), 0.0f}) {
      const float e = bound(below, norm * f, residual * f);
      sound = sound && below + e < floor;
    }
  }
  expect(sound, "a score below the tile's gate never reaches the floor");
  expect(std::isnan(detail::tile_gate(detail::kInf, detail::kInf)) && detail::tile_gate(-detail::kInf, 1.0f) == -detail::kInf,
         "the gate's edges: an unbounded tile lets every score pass, no floor yet none is stopped");
}

// The one list of levels (dispatch.h): names both ways, the old name, detection, a value that
// names no level.
void check_levels() {
  context = "levels";
  for (const IsaLevel& level : kIsaLevels) {
    Isa found = Isa::scalar;
    expect(isa_from_name(level.name, std::strlen(level.name), &found) && found == level.isa, "a level's name finds it");
    expect(std::strcmp(isa_name(level.isa), level.name) == 0, "isa_name is the row's name");
    expect(isa_supported(level.isa) == level.supported(), "isa_supported is the row's");
    expect(!level.supported() || (level.table && &kernel_table(level.isa) == level.table),
           "a supported level has its table");
  }
  Isa found = Isa::scalar;
  expect(isa_from_name("avx512bf16", 10, &found) && found == Isa::avx512vnni, "the old name avx512bf16 is avx512vnni");
  expect(std::strcmp(isa_name(Isa::avx512vnni), "avx512vnni") == 0, "the level reports its new name");
  expect(!isa_from_name("avx512", 5, &found) && !isa_from_name("sse", 3, &found), "no other name is a level");
  const Isa detected = detect_isa();
  expect(isa_supported(detected), "the detected level is supported");
  for (const IsaLevel& level : kIsaLevels)
    if (static_cast<int>(level.isa) > static_cast<int>(detected)) expect(!level.supported(), "no better level is supported");
  const Isa none = static_cast<Isa>(std::size(kIsaLevels));
  expect(std::strcmp(isa_name(none), "unknown") == 0 && !isa_supported(none) && &kernel_table(none) == &kScalarTable,
         "a value past the levels names none");
}

}  // namespace

int main() {
  check_levels();
  int isas = 0;
  for (const IsaLevel& level : kIsaLevels) {
    if (!level.supported()) continue;
    const KernelTable& t = *level.table;
    context = level.name;
    expect(t.isa == level.isa, "the table is the ISA's");
    expect(table_complete(t), "every entry is filled");
    expect((t.score_tile_i8 != nullptr) == (level.isa != Isa::scalar && level.isa != Isa::neon),
           "score_tile_i8 on every x86 SIMD table");
    expect((t.score_pairs_full_f32 != nullptr) == (level.isa == Isa::avx512 || level.isa == Isa::avx512vnni),
           "score_pairs_full_f32 on the AVX-512 tables");
    Random random{static_cast<std::uint64_t>(level.isa) + 11};
    check_streaming(t, random);
    check_tiles(t, random);
    check_full_pairs(t, random);
    check_gates_and_widening(t, random);
    check_folding(t, random);
    check_exact_bound(t, random);
    check_heads(t, random);
    check_head_bound(t, random);
    std::printf("%s: checked\n", level.name);
    ++isas;
  }
  Random random{5};
  check_values(random);
  check_tile_gate(random);
  std::printf("%ld checks on %d ISAs, %ld failed\n", checks, isas, failures);
  return failures == 0 && isas > 0 ? 0 : 1;
}
