// Randomness as a pure function of (run seed, global step, global sample index, stream).
//
// Every random draw that belongs to a sample (its diffusion timestep, its noise, a synthetic
// sample's content) uses a generator seeded from this key. So a sample gets the same numbers
// whichever rank, micro batch or parallel layout processes it, different samples and steps get
// different numbers, and a resumed run draws exactly what the straight run drew.
#pragma once

#include <cstdint>

namespace wanhost {

// Independent streams of randomness for one sample.
enum class RandomStream : std::uint64_t {
  Timestep = 1,
  Noise = 2,
  Data = 3,
  Shuffle = 4,
  Init = 5,
};

// SplitMix64 finaliser: a bijective avalanche mix of 64 bits.
constexpr std::uint64_t mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

constexpr std::uint64_t random_key(std::uint64_t seed, std::int64_t step, std::int64_t sample_index,
                                   RandomStream stream) {
  std::uint64_t h = mix64(seed);
  h = mix64(h ^ static_cast<std::uint64_t>(step));
  h = mix64(h ^ static_cast<std::uint64_t>(sample_index));
  return mix64(h ^ static_cast<std::uint64_t>(stream));
}

}  // namespace wanhost
