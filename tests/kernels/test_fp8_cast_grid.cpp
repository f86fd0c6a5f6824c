// The FP8 cast kernel's tiles a block (kernels/fp8_cast_grid.hpp): the choices measured on an
// H100 on 2026-12-05 (docs/performance.md) stay what they were, and any choice is a valid grid.
// Host arithmetic only: runs on every machine.
#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>

#include "fp8_cast_grid.hpp"

namespace {

using wanhost::kernels::fp8_cast_row_tiles_per_block;

constexpr std::int64_t kTile = 64;

std::int64_t tiles(std::int64_t n) {
  return (n + kTile - 1) / kTile;
}

std::int64_t blocks(std::int64_t row_tiles, std::int64_t col_tiles, std::int64_t per_block) {
  return col_tiles * ((row_tiles + per_block - 1) / per_block);
}

// 132 multiprocessors (H100 SXM, H200), 4 blocks of the 60-64-register kernels each, 3 of the
// 75-register one (GELU's derivative).
constexpr std::int64_t kWave4 = 4 * 132, kWave3 = 3 * 132;

TEST(Fp8CastGrid, FewWavesFillOneWave) {
  // Stage 1's 1536-wide operands (12480 rows): 9 tiles a block, 528 blocks, one wave (8 made 600).
  EXPECT_EQ(fp8_cast_row_tiles_per_block(tiles(12480), tiles(1536), kWave4), 9);
  EXPECT_EQ(blocks(tiles(12480), tiles(1536), 9), kWave4);
  // Stage 2's (8192 rows): 6 tiles a block, one wave (5 made 624 blocks).
  EXPECT_EQ(fp8_cast_row_tiles_per_block(tiles(8192), tiles(1536), kWave4), 6);
  EXPECT_LE(blocks(tiles(8192), tiles(1536), 6), kWave4);
  // The bit-for-bit test's 12493 rows (196 row tiles): 9 a block, the last block 7.
  EXPECT_EQ(fp8_cast_row_tiles_per_block(tiles(12496), tiles(1536), kWave4), 9);
}

TEST(Fp8CastGrid, ManyWavesKeepAWavesWorthOfTilesAtMostEight) {
  // 12480 x 8960 (27300 tiles): 8 tiles a block, 3500 blocks, with 4 or 3 blocks a
  // multiprocessor (3 tiles a block, 9100 blocks, was 10 % slower with GELU's derivative).
  EXPECT_EQ(fp8_cast_row_tiles_per_block(tiles(12480), tiles(8960), kWave4), 8);
  EXPECT_EQ(fp8_cast_row_tiles_per_block(tiles(12480), tiles(8960), kWave3), 8);
}

TEST(Fp8CastGrid, SmallOperandsTakeATileABlock) {
  EXPECT_EQ(fp8_cast_row_tiles_per_block(tiles(208), tiles(1536), kWave4), 1);  // 203 rows
  EXPECT_EQ(fp8_cast_row_tiles_per_block(1, 1, kWave4), 1);
}

TEST(Fp8CastGrid, EveryChoiceIsAValidGrid) {
  for (std::int64_t rows : std::initializer_list<std::int64_t>{1, 2, 7, 64, 195, 196, 1000, 5000})
    for (std::int64_t cols : std::initializer_list<std::int64_t>{1, 3, 24, 140, 500})
      for (std::int64_t wave :
           std::initializer_list<std::int64_t>{0, 1, 100, kWave3, kWave4, 4000}) {
        const std::int64_t t = fp8_cast_row_tiles_per_block(rows, cols, wave);
        EXPECT_GE(t, 1) << rows << " x " << cols << ", wave " << wave;
        EXPECT_LE(t, 16) << rows << " x " << cols << ", wave " << wave;
        EXPECT_LE(t, rows) << rows << " x " << cols << ", wave " << wave;
      }
}

}  // namespace
