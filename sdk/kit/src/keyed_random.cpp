#include "wanhost/kit/keyed_random.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

namespace wanhost {

at::Generator keyed_generator(std::uint64_t seed, std::int64_t step, std::int64_t key,
                              RandomStream stream) {
  return at::make_generator<at::CPUGeneratorImpl>(random_key(seed, step, key, stream));
}

at::Tensor per_sample_noise(const Batch& batch, std::uint64_t seed, std::int64_t step,
                            RandomStream stream) {
  const std::int64_t b = batch.batch_size();
  const std::int64_t channels = batch.latents.size(batch.packed() ? 0 : 1);
  at::Tensor noise = at::zeros(batch.latents.sizes(), at::TensorOptions(at::kFloat));
  for (std::int64_t i = 0; i < b; ++i) {
    const PackSegment g = batch.grid(i);
    at::Generator gen = keyed_generator(seed, step, batch.sample_keys[i], stream);
    at::Tensor eps =
        at::randn({channels, g.frames, g.height, g.width}, gen, at::TensorOptions(at::kFloat));
    if (batch.packed())
      noise.narrow(1, g.offset, g.numel()).copy_(eps.reshape({channels, g.numel()}));
    else
      noise[i].copy_(eps);
  }
  return noise.to(batch.latents.device());
}

}  // namespace wanhost
