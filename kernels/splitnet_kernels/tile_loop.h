// The loop every ISA's cross tile shares (over_candidate_blocks).
#pragma once
#include <cstdint>

#include "build.h"

namespace splitnet {

// The loop every ISA's cross tile shares: tile.columns<NC>(c) scores candidates [c, c + NC)
// against all users and returns their hit bits (see score_tile_f32). It runs over n_rows <= 64
// candidates in blocks of Block and one tail block of the rest, and gathers the bits at their rows.
template <int NC, class Tile>
inline unsigned tail_columns(const Tile& tile, index_t c, index_t count) {
  if constexpr (NC == 0) {
    return 0;
  } else {
    return count == NC ? tile.template columns<NC>(c) : tail_columns<NC - 1>(tile, c, count);
  }
}

template <int Block, class Tile>
inline std::uint64_t over_candidate_blocks(index_t n_rows, const Tile& tile) {
  std::uint64_t hits = 0;
  index_t c = 0;
  for (; c + Block <= n_rows; c += Block) hits |= std::uint64_t{tile.template columns<Block>(c)} << c;
  if (c < n_rows) hits |= std::uint64_t{tail_columns<Block - 1>(tile, c, n_rows - c)} << c;  // c < 64 here
  return hits;
}

}  // namespace splitnet
