// A dense allowed subset as the kernels read it beside the rows: one bit per candidate position,
// bit c % 64 of word c / 64, shared by every user or one bitmap per user (as the exact sets' hit
// bits: a test where results are collected, the rows read as they are). A sparse subset is a
// list of ids instead: a gather of its rows (OneQuery). The caller picks by density
// (python/splitnet_kernels/_checks.py, check_allowed).
#pragma once
#include <cstdint>

#include "build.h"

namespace splitnet {

struct Filter {
  const std::uint64_t* words = nullptr;  // null: every candidate is allowed
  index_t stride = 0;                    // words per user: one bitmap per user; 0: one for every user

  explicit operator bool() const { return words != nullptr; }
  bool per_user() const { return stride != 0; }
  // User u's filter, as a shared one (a shared filter's is itself).
  Filter user(index_t u) const { return {words == nullptr ? nullptr : words + u * stride, 0}; }
  // The filter of users [u0, ...): per user, from user u0 on; a shared one as it is.
  Filter from(index_t u0) const { return {words == nullptr ? nullptr : words + u0 * stride, stride}; }
  bool allows(index_t c) const { return (words[c >> 6] >> (c & 63)) & 1u; }
  // The bits of candidates [first, first + n), n <= 64, as one word (bit i: candidate first + i);
  // reads no word past the one holding candidate first + n - 1.
  std::uint64_t span(index_t first, index_t n) const {
    const index_t w = first >> 6, s = first & 63;
    std::uint64_t bits = words[w] >> s;
    if (s != 0 && s + n > 64) bits |= words[w + 1] << (64 - s);
    return n >= 64 ? bits : bits & ((std::uint64_t{1} << n) - 1);
  }
  // The candidates [first, first + n), n <= 64, that some of users [0, n_users) may get, as one
  // word (every bit without a filter): what a cross tile's hit bits are ANDed with.
  std::uint64_t some(index_t first, index_t n, index_t n_users) const {
    if (words == nullptr) return ~std::uint64_t{0};
    if (!per_user()) return span(first, n);
    std::uint64_t bits = 0;
    for (index_t u = 0; u < n_users; ++u) bits |= user(u).span(first, n);
    return bits;
  }
  // Whether user u may get candidate c (always, without a filter).
  bool lets(index_t u, index_t c) const { return words == nullptr || user(u).allows(c); }
};

}  // namespace splitnet
