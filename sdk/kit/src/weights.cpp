#include "wanhost/kit/weights.hpp"

#include <ATen/ATen.h>

namespace wanhost {

bool loadable_weight_dtype(const std::string& tag) {
  return tag == "F16" || tag == "BF16" || tag == "F32" || tag == "F64";
}

void match_weights(
    const safetensors::Collection& checkpoint, const NamedTensors& params,
    const std::map<std::string, std::string>& source, CheckpointProblems& problems,
    const std::set<std::string>& filled_elsewhere,
    const std::function<std::string(const std::string&, const std::string&)>& unexpected) {
  for (const auto& item : params) {
    const std::string& name = item.key();
    auto it = source.find(name);
    if (it == source.end()) {
      if (!filled_elsewhere.count(name)) problems.missing.push_back(name);
      continue;
    }
    const auto& info = checkpoint.info(it->second);
    if (info.shape != item.value().sizes().vec())
      problems.shape(it->second, info.shape, item.value().sizes());
    else if (!loadable_weight_dtype(info.dtype))
      problems.unusable.push_back(it->second + ": dtype " + info.dtype +
                                  " (weights must be F16, BF16, F32 or F64; other types are "
                                  "not converted)");
  }
  for (const auto& [parameter, name] : source)
    if (!params.contains(parameter))
      problems.unexpected.push_back(unexpected ? unexpected(parameter, name) : name);
}

std::size_t load_matched_weights(const safetensors::Collection& checkpoint, NamedTensors& params,
                                 const std::map<std::string, std::string>& source) {
  at::NoGradGuard no_grad;
  std::size_t n = 0;
  for (auto& item : params) {
    auto it = source.find(item.key());
    if (it == source.end()) continue;
    item.value().copy_(checkpoint.load(it->second));
    ++n;
  }
  return n;
}

}  // namespace wanhost
