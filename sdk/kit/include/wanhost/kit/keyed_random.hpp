// Random draws that belong to a sample, keyed as wanhost/random.hpp says: the same sample gets
// the same numbers whatever rank, micro batch, pack or parallel layout draws them.
#pragma once

#include <cstdint>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "wanhost/batch.hpp"
#include "wanhost/random.hpp"

namespace wanhost {

// A CPU generator seeded from random_key(seed, step, key, stream).
at::Generator keyed_generator(std::uint64_t seed, std::int64_t step, std::int64_t key,
                              RandomStream stream);

// Standard normal noise in `batch`'s latent layout (float32, on the latents' device): each sample's
// [C, F, H, W] block drawn with its own shape from its key (Batch::sample_keys), so a sample gets
// the same noise in a dense and in a packed batch; columns of a packed batch outside every segment
// (padding) stay zero.
at::Tensor per_sample_noise(const Batch& batch, std::uint64_t seed, std::int64_t step,
                            RandomStream stream = RandomStream::Noise);

}  // namespace wanhost
