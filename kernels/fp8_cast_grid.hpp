// How the wide FP8 cast kernel (fp8_kernels.cu, cast_transpose_wide) spreads its 64 x 64 tiles
// over blocks: host arithmetic only, so that it is tested on any machine (test_fp8_cast_grid).
#pragma once

#include <algorithm>
#include <cstdint>

namespace wanhost::kernels {

// Row tiles a block of cast_transpose_wide takes (consecutive tiles of one tile column), given
// how many blocks run at once (`wave`: resident blocks a multiprocessor, from the kernel's
// registers, times the multiprocessors). Many waves of blocks (more than two): a wave's worth of
// tiles a block, at most 8; the multiprocessors take new blocks as they finish, so a partial last
// wave costs little. Fewer: the blocks of a wave take about the same time, so a grid of W waves,
// the last one partial, takes about W block times, each the block's tiles plus about one tile's
// time to start (scale, first loads); the choice minimises (waves, rounded up) x (tiles a block
// + 1), at most 16, the larger count on a tie. Measured on an H100, 2026-12-05 (Nsight Compute and
// the cast figures): at 12480 x 1536 (4680 tiles, 62 registers: 528 places) 8 tiles a block made
// 600 blocks, a second wave of 72, the cast at ~1.65-2.05 TB/s; 9 (528 blocks, one wave) took it
// to 2.3 TB/s (37.5 -> 33.1 us). Minimising waves x tiles without the start cost at the large
// shapes too picked 3 tiles a block for 12480 x 8960 with GELU's derivative (9100 blocks), 10 %
// slower than 8.
inline std::int64_t fp8_cast_row_tiles_per_block(std::int64_t row_tiles, std::int64_t col_tiles,
                                                 std::int64_t wave) {
  constexpr std::int64_t kMostOfMany = 8, kMost = 16;
  row_tiles = std::max<std::int64_t>(row_tiles, 1);
  col_tiles = std::max<std::int64_t>(col_tiles, 1);
  wave = std::max<std::int64_t>(wave, 1);
  const auto blocks = [&](std::int64_t t) { return col_tiles * ((row_tiles + t - 1) / t); };
  const std::int64_t many =
      std::clamp<std::int64_t>(row_tiles * col_tiles / wave, 1, std::min(kMostOfMany, row_tiles));
  if (blocks(many) > 2 * wave) return many;
  std::int64_t best = 1, best_cost = -1;
  for (std::int64_t t = 1; t <= std::min(kMost, row_tiles); ++t) {
    const std::int64_t cost = (blocks(t) + wave - 1) / wave * (t + 1);
    if (best_cost < 0 || cost <= best_cost) best = t, best_cost = cost;
  }
  return best;
}

}  // namespace wanhost::kernels
