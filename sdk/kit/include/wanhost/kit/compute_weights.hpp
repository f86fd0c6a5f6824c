// Compute-dtype copies of master weights made for all of a model's weights in one multi-tensor
// cast a step (run.kernels.weight_casts = per_step, docs/performance.md "Weight casts"), instead
// of one cast kernel for each weight, and each bias, wherever it is used (~770 small kernels a
// 1.3B step with fp32 masters and bf16 compute). The operators that take fp32 masters (fused.hpp,
// fp8.hpp) ask compute_weight() for a weight in their input's dtype: the copy when it is fresh,
// a cast of their own otherwise, so the copies change where the cast happens, never a value.
//
// A copy is fresh while nothing has told it weights may have changed (weights_changed(): every
// AdamW step, and the host before every training step) and its master is the same tensor at the
// same version as when it was cast. On a GPU the pass is one at::_foreach_copy_ per device and
// source dtype (LibTorch's multi-tensor copy converts dtypes on its fast path), no host
// synchronisation; the copies keep their addresses from step to step, so a captured CUDA graph
// of a whole step casts into the same tensors when it is replayed.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace wanhost {

// Says that weights may have changed (an optimizer step, a load, a gather into them): every copy
// made before (these, and Fp8WeightCache's) is stale from now on. Since kit 1.7;
// fp8_weights_changed() is this.
void weights_changed();
// How many times weights_changed() has been called (what the caches compare).
std::uint64_t weights_epoch();

// Casts each floating tensor of `masters` whose dtype is not `dtype` into its copy in `dtype`;
// the copies are fresh until the next weights_changed(). Copies are allocated when the set of
// masters (tensors, shapes, devices) or the dtype changes, and reused otherwise.
void refresh_compute_weights(const std::vector<at::Tensor>& masters, at::ScalarType dtype);
// After the first refresh of a new set, once a step has used the copies: frees those nobody asked
// for (weights of FP8 layers, which are quantised from the master; layers computing through
// autocast); they are not cast again until the set changes. Later calls do nothing. A weight
// dropped here and asked for later is cast where it is used, as without the copies.
void keep_used_compute_weights();
// Frees the copies (the trainer calls it at the end of each stage).
void drop_compute_weights();
// The number of copies held and their bytes.
std::int64_t compute_weight_count();
std::int64_t compute_weight_bytes();

// `w` in `dtype`: w itself when it has that dtype, its fresh copy when there is one, else
// w.to(dtype). Not differentiable: for the forward of an autograd function that returns the
// master's gradient itself (the copy is shared: never write into it).
at::Tensor compute_weight(const at::Tensor& w, at::ScalarType dtype);
// The same, differentiable in w as w.to(dtype) is (the gradient cast back to w's dtype): for
// operators that compute through ATen.
at::Tensor compute_weight_differentiable(const at::Tensor& w, at::ScalarType dtype);

// How many compute_weight calls a fresh copy answered since the process started (tests, logs).
std::int64_t compute_weight_hits();

}  // namespace wanhost
