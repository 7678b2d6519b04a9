// Embedding the header-only kernels in C++ serving code, no Python: scores and top-k for one user
// and a batch of users on the detected ISA, checked against a naive double-precision loop.
// Build: g++ -std=c++17 -O2 -I<repo>/kernels score_example.cpp -pthread   (or `make` here)
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "splitnet_kernels/ops.h"

namespace {

using splitnet::index_t;

// Deterministic data in [-1, 1): a 64-bit LCG, the top 24 bits as the mantissa.
std::vector<float> make_data(index_t count, std::uint64_t seed) {
  std::vector<float> values(static_cast<size_t>(count));
  for (float& v : values) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    v = static_cast<float>(seed >> 40) / static_cast<float>(1 << 23) - 1.0f;
  }
  return values;
}

double exact_score(const float* query, const float* row, index_t dim, float bias) {
  double sum = bias;
  for (index_t d = 0; d < dim; ++d) sum += static_cast<double>(query[d]) * row[d];
  return sum;
}

// float32 accumulation over dim terms of magnitude <= 1: an error bound with room to spare.
double tolerance(index_t dim) { return 1e-6 * static_cast<double>(dim); }

// A top-k list is right if it has k distinct ids, its scores are the exact ones (within
// tolerance) in descending order, and nothing left out beats the worst kept by more than that.
bool check_topk(const char* what, const float* query, const splitnet::Rows& ads, index_t k, float bias,
                const float* scores, const index_t* ids) {
  std::vector<char> kept(static_cast<size_t>(ads.count), 0);
  double worst_kept = INFINITY;
  for (index_t i = 0; i < k; ++i) {
    const double exact = exact_score(query, ads.row(ids[i]), ads.dim, bias);
    const bool bad_id = ids[i] < 0 || ids[i] >= ads.count || kept[ids[i]];
    if (bad_id || std::fabs(scores[i] - exact) > tolerance(ads.dim) || (i > 0 && scores[i] > scores[i - 1])) {
      std::printf("%s: MISMATCH at rank %lld (id %lld, score %.7g, exact %.7g)\n", what,
                  static_cast<long long>(i), static_cast<long long>(ids[i]), scores[i], exact);
      return false;
    }
    kept[ids[i]] = 1;
    worst_kept = std::fmin(worst_kept, exact);
  }
  for (index_t c = 0; c < ads.count; ++c)
    if (!kept[c] && exact_score(query, ads.row(c), ads.dim, bias) > worst_kept + 2 * tolerance(ads.dim)) {
      std::printf("%s: MISMATCH, candidate %lld belongs in the top %lld\n", what,
                  static_cast<long long>(c), static_cast<long long>(k));
      return false;
    }
  return true;
}

}  // namespace

int main() {
  const index_t n_ads = 100003, n_users = 7, dim = 67, k = 10;  // not lane multiples, on purpose
  const float bias = -0.25f;
  const std::vector<float> ad_data = make_data(n_ads * dim, 1), user_data = make_data(n_users * dim, 2);
  const splitnet::Rows ads{ad_data.data(), n_ads, dim, dim}, users{user_data.data(), n_users, dim, dim};

  const splitnet::Isa isa = splitnet::detect_isa();  // once, outside every loop
  const splitnet::KernelTable& table = splitnet::kernel_table(isa);
  const int threads = splitnet::hardware_threads();
  std::printf("isa %s, threads %d, %lld ads x dim %lld\n", splitnet::isa_name(isa), threads,
              static_cast<long long>(n_ads), static_cast<long long>(dim));
  bool ok = true;

  std::vector<float> scores(static_cast<size_t>(n_ads));
  splitnet::score_one(table, users.row(0), ads, bias, scores.data(), threads);
  double max_error = 0;
  for (index_t c = 0; c < n_ads; ++c)
    max_error = std::fmax(max_error, std::fabs(scores[c] - exact_score(users.row(0), ads.row(c), dim, bias)));
  std::printf("score_one: max |error| %.3g\n", max_error);
  ok = ok && max_error <= tolerance(dim);

  std::vector<float> top_scores(static_cast<size_t>(n_users * k));
  std::vector<index_t> top_ids(top_scores.size());
  splitnet::topk_one(table, users.row(0), ads, k, bias, top_scores.data(), top_ids.data(), threads);
  ok = check_topk("topk_one", users.row(0), ads, k, bias, top_scores.data(), top_ids.data()) && ok;
  std::printf("topk_one: best id %lld score %.6f; k-th id %lld score %.6f\n",
              static_cast<long long>(top_ids[0]), top_scores[0],
              static_cast<long long>(top_ids[k - 1]), top_scores[k - 1]);

  splitnet::topk_cross(table, users, ads, k, bias, top_scores.data(), top_ids.data(), threads);
  for (index_t u = 0; u < n_users; ++u) {
    ok = check_topk("topk_cross", users.row(u), ads, k, bias, top_scores.data() + u * k,
                    top_ids.data() + u * k) && ok;
    std::printf("topk_cross user %lld: best id %lld score %.6f\n", static_cast<long long>(u),
                static_cast<long long>(top_ids[u * k]), top_scores[u * k]);
  }

  std::printf("%s\n", ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}
