#include "wanhost/kit/kernel_options.hpp"

#include <algorithm>
#include <stdexcept>

namespace wanhost {
namespace {
KernelOptions g_options;
}  // namespace

void set_kernel_options(const KernelOptions& options) {
  g_options = options;
}

const KernelOptions& kernel_options() {
  return g_options;
}

KernelOptions parse_kernel_options(const std::string& packed_attention, const std::string& adamw,
                                   const std::string& lt_epilogues) {
  KernelOptions o;
  if (packed_attention == "auto")
    o.packed_attention = KernelOptions::PackedAttention::automatic;
  else if (packed_attention == "flash")
    o.packed_attention = KernelOptions::PackedAttention::flash;
  else if (packed_attention == "loop")
    o.packed_attention = KernelOptions::PackedAttention::loop;
  else
    throw std::invalid_argument("packed attention '" + packed_attention +
                                "': expected auto, flash or loop");
  if (adamw != "fused" && adamw != "loop" && adamw != "wanhost")
    throw std::invalid_argument("AdamW '" + adamw + "': expected fused, loop or wanhost");
  o.fused_adamw = adamw != "loop";
  o.wanhost_adamw = adamw == "wanhost";
  const std::string& s = lt_epilogues;
  if (s == "all") {
    o.lt_gelu = o.lt_dgelu = o.lt_bgrad = true;
    return o;
  }
  o.lt_gelu = o.lt_dgelu = o.lt_bgrad = false;
  if (s == "off") return o;
  std::size_t start = 0;
  while (start <= s.size()) {
    const auto end = std::min(s.find(',', start), s.size());
    const auto item = s.substr(start, end - start);
    if (item == "gelu")
      o.lt_gelu = true;
    else if (item == "dgelu")
      o.lt_dgelu = true;
    else if (item == "bgrad")
      o.lt_bgrad = true;
    else
      throw std::invalid_argument("cuBLASLt epilogues '" + s + "': unknown item '" + item +
                                  "' (expected off, all, or a comma list of gelu, dgelu, bgrad)");
    start = end + 1;
  }
  return o;
}

KernelOptions parse_kernel_options(const std::string& packed_attention, const std::string& adamw,
                                   const std::string& lt_epilogues,
                                   const std::string& weight_casts) {
  if (weight_casts != "per_use" && weight_casts != "per_step")
    throw std::invalid_argument("weight casts '" + weight_casts +
                                "': expected per_use or per_step");
  KernelOptions o = parse_kernel_options(packed_attention, adamw, lt_epilogues);
  o.weight_casts_per_step = weight_casts == "per_step";
  return o;
}

KernelOptions parse_kernel_options(const std::string& packed_attention, const std::string& adamw,
                                   const std::string& lt_epilogues, const std::string& weight_casts,
                                   const std::string& fp8_gelu) {
  if (fp8_gelu != "separate" && fp8_gelu != "fused")
    throw std::invalid_argument("FP8 GELU '" + fp8_gelu + "': expected separate or fused");
  KernelOptions o = parse_kernel_options(packed_attention, adamw, lt_epilogues, weight_casts);
  o.fp8_fused_gelu = fp8_gelu == "fused";
  return o;
}

KernelOptions parse_kernel_options(const std::string& packed_attention, const std::string& adamw,
                                   const std::string& lt_epilogues, const std::string& weight_casts,
                                   const std::string& fp8_gelu,
                                   const std::string& fp8_input_gradients) {
  if (fp8_input_gradients != "separate" && fp8_input_gradients != "summed")
    throw std::invalid_argument("FP8 input gradients '" + fp8_input_gradients +
                                "': expected separate or summed");
  KernelOptions o =
      parse_kernel_options(packed_attention, adamw, lt_epilogues, weight_casts, fp8_gelu);
  o.fp8_summed_input_gradients = fp8_input_gradients == "summed";
  return o;
}

}  // namespace wanhost
