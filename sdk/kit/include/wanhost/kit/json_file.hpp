// The one guarded reader for JSON files that users name (model configs, dataset indexes, run
// manifests, plugin manifests): only regular files are opened (a FIFO, a device or a folder would
// block the run forever or never end), their size is bounded, and every parse error names the
// file, the line, the column and the byte offset.
#pragma once

#include <cstddef>
#include <string>

#include "wanhost/config.hpp"

namespace wanhost {

inline constexpr std::size_t kMaxJsonFileBytes = std::size_t{256} << 20;  // 256 MiB

// The bytes of the regular file `path`. Throws FormatError naming the path when it is missing,
// not a regular file, larger than `max_bytes`, or unreadable.
std::string read_regular_file(const std::string& path, std::size_t max_bytes = kMaxJsonFileBytes);

// Parses `text` that came from `path`. Throws FormatError "PATH:LINE:COLUMN (byte N): ..." for
// a syntax error, a number that does not fit a 64-bit value (e.g. 1e400) or invalid UTF-8.
Json parse_json_text(const std::string& text, const std::string& path);

// read_regular_file + parse_json_text.
Json read_json_file(const std::string& path, std::size_t max_bytes = kMaxJsonFileBytes);

}  // namespace wanhost
