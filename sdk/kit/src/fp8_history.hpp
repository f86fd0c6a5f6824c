// Kit-internal: delayed FP8 scaling's amax histories (run.fp8 = "delayed"; wanhost/kit/fp8.hpp,
// docs/performance.md "Delayed FP8 scaling"). Each operand of each FP8 layer (its weight, its
// input, its output's gradient) is a "site" with a ring of per-step max|x| on the device
// (kernels/fp8_kernels.hpp: the current step's slot is recorded into, the next one cleared, the
// others hold the last history - 2 steps). A site scales by its own max|x| (current scaling) at
// its first use, when its ring is made, and by the ring's maximum once a step has completed since
// (fp8_step_begins, counted on the host). fp8.cpp's quantisation asks site_use() for an operand's
// site; fp8_history.cpp also holds the public functions of fp8.hpp that keep the histories.
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace wanhost::fp8_history {

enum class Role { weight, input, gradient };

// How an operand uses its site's ring: recorded into always, scaled from it when `from_history`.
struct SiteUse {
  at::Tensor ring, step;  // the ring [history + 2] fp32, the device's step count (int64, 0-dim)
  bool from_history = false;
};

// The site of (cache, role) for an operand on `device`, or nothing (current scaling, as
// "tensorwise") when the recipe is not delayed or no step count exists (fp8_step_begins never
// called for the device: said once). `cache`: the layer's Fp8WeightCache; `weight`: the layer's
// weight (forward uses; the gradient's use comes after its layer's forward in the same step),
// whose change (another model at the cache's address) starts the layer's sites afresh.
std::optional<SiteUse> site_use(const void* cache, Role role, const c10::Device& device,
                                const at::Tensor& weight = {});

// The dequantisation scale from the ring: its largest entry but the current and next slots,
// clamped at min_amax and divided by `top` (the format's largest value), as the current scale is
// made. (On a GPU kernels/fp8_kernels.cu reads the ring itself.)
at::Tensor history_scale(const SiteUse& u, double min_amax, double top);

// Records max|x| over x's finite values into the current slot and clears the next one (what
// the cast kernels do on a GPU).
void record_amax(const SiteUse& u, const at::Tensor& x);

// One quantisation took its scale from a history (fp8_delayed_quantizations()).
void count_delayed_quantization();

}  // namespace wanhost::fp8_history
