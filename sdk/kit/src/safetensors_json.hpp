// Internal to the SDK (not installed): the strict JSON parsing shared by the safetensors header
// and the sharded-checkpoint index.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace wanhost::safetensors::detail {

// Parses `text` as JSON, refusing what nlohmann's DOM parser would let through silently:
// duplicate object keys (it keeps the last value), NUL bytes (it treats one as the end of input,
// so bytes after it would go unchecked), invalid UTF-8, and containers nested deeper than
// `max_nesting` levels. `byte_base` is the file offset of text[0], for messages. Throws
// FormatError naming `what`.
nlohmann::json parse_json_strict(std::string_view text, const std::string& what,
                                 std::uint64_t byte_base, int max_nesting);

// `s` as a JSON string literal: names from files may hold control characters or odd bytes, and
// messages must stay one readable line.
std::string quote_name(std::string_view s);

}  // namespace wanhost::safetensors::detail
