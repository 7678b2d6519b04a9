// Tuning, in one place: how far ahead the streaming kernels prefetch (and the prefetch itself),
// how much work pays for a thread, and the sizes of the blocks the scans score at a time. Each
// trades speed alone: no score and no ranking depends on one.
#pragma once
#include <algorithm>

#include "build.h"

namespace splitnet {

// Asks for the bytes [p, p + bytes) to be brought into the cache. GCC 12 takes a function that
// holds nothing but prefetches for pure and deletes the calls to it (which once cost the
// full-pair loop half its speed); the empty volatile asm tells it otherwise.
// Locality 3 asks for L1 (prefetcht0), 2 for L2 (prefetcht1).
template <int Locality = 3>
inline void prefetch_bytes(const void* p, index_t bytes) {
  asm volatile("");
  const char* first = static_cast<const char*>(p);
  for (index_t b = 0; b < bytes; b += 64) __builtin_prefetch(first + b, 0, Locality);
  if (bytes > 0) __builtin_prefetch(first + bytes - 1, 0, Locality);  // a row that straddles one more line
}

// The streaming kernels ask for the four rows kPrefetchBytes ahead of the four they read, and
// at least kPrefetchRows: the hardware prefetcher alone left up to 10 % of the read floor unused
// on this project's Zen 5 host (bench/RESULTS.md, W1). The distance is in bytes so that short
// rows (int8, 16-bit) keep as many bytes in flight as float32 ones: 16 rows (1 KiB) ahead of an
// int8 scan at n = 64 lost 10 % on the Zen 3 host when its neighbours loaded the memory. Rows
// past n_rows are not asked.
constexpr index_t kPrefetchRows = 16, kPrefetchBytes = 4096;

// The full-pair loop (score_pairs_full_f32) computes for about 250 cycles per pair, and L1
// holds S (16 KiB at n = 64) and the fold's lanes (8 KiB): its rows go to L2 only, twice as far
// ahead. Into L1 at 4 KiB they evicted those, 114 against 160 GFLOP/s on 1M pairs (Zen 4).
constexpr index_t kComputeBoundPrefetchBytes = 8192;

template <int Locality = 3, class T>
inline void prefetch_four_rows(const T* rows, index_t i, index_t n_rows, index_t dim, index_t row_stride,
                               index_t ahead_bytes = kPrefetchBytes) {
  // ahead_bytes over the row's bytes rounded up to a power of two: a shift, not a division
  const auto row_bytes = static_cast<unsigned long long>(std::max<index_t>(2, row_stride * static_cast<index_t>(sizeof(T))));
  const index_t ahead = std::max(kPrefetchRows, ahead_bytes >> (64 - __builtin_clzll(row_bytes - 1)));
  if (i + ahead + 4 > n_rows) return;
  for (index_t j = 0; j < 4; ++j)
    prefetch_bytes<Locality>(rows + (i + ahead + j) * row_stride, dim * static_cast<index_t>(sizeof(T)));
}

namespace detail {

// Below this many multiply-adds per task, waking a worker costs more than it saves.
constexpr index_t kMinWorkPerTask = index_t{1} << 18;
constexpr index_t kMaxBlockUsers = 256;  // users per cross tile, at most

constexpr index_t kBlock = 1024;         // candidates scored per top-k block (4 KiB of scores)
constexpr index_t kSelectAboveK = 2048;  // above this k (and k > n / 8), score all, then select

}  // namespace detail

// Users from which many-user int8 top-k on an exact set takes the certified int8 tile.
constexpr index_t kExactTileUsers = 4;

}  // namespace splitnet
