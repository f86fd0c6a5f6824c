// The LibTorch-free half of the safetensors reader: header validation. Kept apart from
// safetensors.hpp so the fuzz target builds from one .cpp and nlohmann_json, without LibTorch.
// Include wanhost/kit/safetensors.hpp instead unless you only need these.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace wanhost::safetensors {

// Largest header (the JSON) accepted, as in the format's reference implementation.
inline constexpr std::uint64_t kMaxHeaderSize = 100'000'000;

struct TensorInfo {
  std::string name;
  std::string dtype;  // safetensors tag: "F32", "BF16", ...
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;  // byte offsets relative to the data section
};

struct Header {
  std::uint64_t header_size = 0;    // N, the JSON length
  std::vector<TensorInfo> tensors;  // sorted by offset
  std::map<std::string, std::string> metadata;
};

// Validates a header against the whole file's size without touching tensor data. `prefix` holds
// at least the first 8 + N bytes of the file (or all of it when shorter). Pure function: the fuzz
// target calls it directly. `what` names the file in messages. Throws FormatError.
Header parse_header(std::string_view prefix, std::uint64_t file_size, const std::string& what);

// Bits per element of a safetensors dtype tag (4 for F4, 6 for F6_*); 0 when the tag is unknown.
int dtype_bits(std::string_view tag);

}  // namespace wanhost::safetensors
