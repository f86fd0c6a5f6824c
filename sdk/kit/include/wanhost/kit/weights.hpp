// Loading a checkpoint into a module's parameters: the one rule every plugin follows. A plugin
// maps its checkpoint's tensor names onto its parameter names (renames, prefixes, tied weights;
// `source`: parameter name -> checkpoint name), then match_weights() compares every parameter
// with the checkpoint and records what does not fit — missing, unexpected, mis-shaped, and tensors
// whose dtype is not a floating-point type the model can hold (F16, BF16, F32, F64: integer,
// boolean, complex and 8-bit float tensors are refused, never cast) — so that one error lists all
// of it; load_matched_weights() then copies each tensor, converted to its parameter's dtype and
// device.
#pragma once

#include <functional>
#include <map>
#include <set>
#include <string>

#include <ATen/core/Tensor.h>
#include <torch/ordered_dict.h>

#include "wanhost/kit/safetensors.hpp"
#include "wanhost/kit/strings.hpp"

namespace wanhost {

using NamedTensors = torch::OrderedDict<std::string, at::Tensor>;

// True for the safetensors dtype tags a checkpoint's weights may have.
bool loadable_weight_dtype(const std::string& tag);

// Records in `problems` every parameter of `params` without a source, every source whose shape
// or dtype does not fit, and every source naming no parameter (as `unexpected(parameter,
// checkpoint_name)` describes it; by default the checkpoint name). `filled_elsewhere`: parameters
// the plugin fills itself (not missing).
void match_weights(
    const safetensors::Collection& checkpoint, const NamedTensors& params,
    const std::map<std::string, std::string>& source, CheckpointProblems& problems,
    const std::set<std::string>& filled_elsewhere = {},
    const std::function<std::string(const std::string& parameter,
                                    const std::string& checkpoint_name)>& unexpected = {});

// Copies every parameter that has a source, converted to the parameter's dtype and device
// (without autograd). Returns how many were copied.
std::size_t load_matched_weights(const safetensors::Collection& checkpoint, NamedTensors& params,
                                 const std::map<std::string, std::string>& source);

}  // namespace wanhost
