// safetensors header validation. Deliberately free of LibTorch: the fuzz target compiles this
// file alone (with nlohmann_json) under libFuzzer and the sanitizers.
//
// The rules follow the format's reference implementation (safetensors/src/tensor.rs) and spec,
// plus the duplicate-key rule the spec states but not every parser enforces.
#include <algorithm>
#include <cstring>
#include <limits>
#include <unordered_set>
#include <utility>
#include <vector>

#include "safetensors_json.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/safetensors_header.hpp"

namespace wanhost::safetensors {

using nlohmann::json;

namespace {

[[noreturn]] void fail(const std::string& what, const std::string& message) {
  throw FormatError(what + ": " + message);
}

std::string str(std::uint64_t v) {
  return std::to_string(v);
}

// Offset of the first byte that does not start a well-formed UTF-8 sequence (no overlong forms,
// no surrogates, nothing above U+10FFFF), or npos.
std::size_t first_invalid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
      return i;
    }
    if (s.size() - i < len) return i;
    const auto c1 = static_cast<unsigned char>(s[i + 1]);
    if (c1 < lo || c1 > hi) return i;
    for (std::size_t k = 2; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

// nlohmann's messages start with "[json.exception.parse_error.101] "; the id helps nobody here.
std::string without_exception_id(const char* message) {
  std::string m = message;
  if (!m.empty() && m.front() == '[') {
    auto close = m.find("] ");
    if (close != std::string::npos) m.erase(0, close + 2);
  }
  return m;
}

std::uint64_t read_le64(std::string_view bytes) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(bytes[i]);
  return v;
}

// A non-negative JSON integer (nlohmann stores those as number_unsigned) no larger than `max`.
bool is_count(const json& v, std::uint64_t max) {
  return v.is_number_unsigned() && v.get<std::uint64_t>() <= max;
}

std::string tensor_ref(const std::string& name) {
  return "tensor " + detail::quote_name(name);
}

std::map<std::string, std::string> parse_metadata(const json& value, const std::string& what) {
  if (!value.is_object()) {
    fail(what, "__metadata__ must be an object mapping strings to strings, not " +
                   std::string(value.type_name()));
  }
  std::map<std::string, std::string> metadata;
  for (const auto& [key, v] : value.items()) {
    if (!v.is_string()) {
      fail(what, "__metadata__ value of key " + detail::quote_name(key) +
                     " must be a string, not " + std::string(v.type_name()));
    }
    metadata.emplace(key, v.get<std::string>());
  }
  return metadata;
}

std::vector<std::int64_t> parse_shape(const json& v, const std::string& ref,
                                      const std::string& what) {
  if (!v.is_array()) fail(what, ref + ": shape must be an array of non-negative integers");
  std::vector<std::int64_t> shape;
  shape.reserve(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (!is_count(v[i], std::numeric_limits<std::int64_t>::max())) {
      fail(what, ref + ": shape entry " + std::to_string(i) + " is " + v[i].dump() +
                     ", not a non-negative integer that fits int64");
    }
    shape.push_back(static_cast<std::int64_t>(v[i].get<std::uint64_t>()));
  }
  return shape;
}

// The byte count shape x dtype needs, with every product overflow-checked.
std::uint64_t byte_count(const TensorInfo& t, const std::string& ref, const std::string& what) {
  std::uint64_t elements = 1;
  for (auto d : t.shape) {
    if (__builtin_mul_overflow(elements, static_cast<std::uint64_t>(d), &elements)) {
      fail(what, ref + ": overflow computing the element count of its shape");
    }
  }
  std::uint64_t bits = 0;
  if (__builtin_mul_overflow(elements, static_cast<std::uint64_t>(dtype_bits(t.dtype)), &bits)) {
    fail(what, ref + ": overflow computing its size in bits");
  }
  if (bits % 8 != 0) {
    fail(what, ref + ": misaligned " + t.dtype + " tensor: " + str(elements) + " elements of " +
                   std::to_string(dtype_bits(t.dtype)) + " bits do not fill whole bytes");
  }
  return bits / 8;
}

TensorInfo parse_entry(const std::string& name, const json& v, const std::string& what) {
  const std::string ref = tensor_ref(name);
  if (!v.is_object()) {
    fail(what, ref + ": entry must be an object with dtype, shape and data_offsets, not " +
                   std::string(v.type_name()));
  }
  for (const auto& [key, unused] : v.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      fail(what, ref + ": unknown field " + detail::quote_name(key) +
                     " (expected dtype, shape and data_offsets)");
    }
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!v.contains(field)) fail(what, ref + ": missing field \"" + field + "\"");
  }
  TensorInfo t;
  t.name = name;
  const json& dtype = v["dtype"];
  if (!dtype.is_string() || dtype_bits(dtype.get<std::string>()) == 0) {
    fail(what,
         ref + ": unknown dtype " + dtype.dump(-1, ' ', false, json::error_handler_t::replace));
  }
  t.dtype = dtype.get<std::string>();
  t.shape = parse_shape(v["shape"], ref, what);
  const json& offsets = v["data_offsets"];
  const auto u64max = std::numeric_limits<std::uint64_t>::max();
  if (!offsets.is_array() || offsets.size() != 2 || !is_count(offsets[0], u64max) ||
      !is_count(offsets[1], u64max)) {
    fail(what, ref + ": data_offsets must be [begin, end] with non-negative integers, not " +
                   offsets.dump());
  }
  t.begin = offsets[0].get<std::uint64_t>();
  t.end = offsets[1].get<std::uint64_t>();
  if (t.end < t.begin) {
    fail(what, ref + ": invalid offset: data_offsets [" + str(t.begin) + ", " + str(t.end) +
                   "] end before they begin");
  }
  const std::uint64_t need = byte_count(t, ref, what);
  if (t.end - t.begin != need) {
    fail(what, ref + ": data_offsets [" + str(t.begin) + ", " + str(t.end) + "] span " +
                   str(t.end - t.begin) + " bytes but its shape and dtype " + t.dtype + " need " +
                   str(need) + " bytes");
  }
  return t;
}

// Sorted by offset, the tensors must tile [0, data_size) exactly: no gap could hide other data
// (polyglot files), no overlap could alias bytes, nothing may trail the last tensor.
void check_layout(std::vector<TensorInfo>& tensors, std::uint64_t data_start,
                  std::uint64_t data_size, const std::string& what) {
  std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  std::uint64_t expected = 0;
  const TensorInfo* previous = nullptr;
  for (const auto& t : tensors) {
    const std::string ref = tensor_ref(t.name);
    if (t.begin > expected) {
      fail(what, ref + ": invalid offset: gap of " + str(t.begin - expected) +
                     " bytes before it at data offset " + str(expected) + " (file byte " +
                     str(data_start + expected) + ")");
    }
    if (t.begin < expected) {
      fail(what, ref + ": invalid offset: data_offsets [" + str(t.begin) + ", " + str(t.end) +
                     "] overlap " + tensor_ref(previous->name) + " which ends at " + str(expected));
    }
    if (t.end > data_size) {
      fail(what, ref + ": data ends at file byte " + str(data_start + t.end) +
                     " but the file has only " + str(data_start + data_size) +
                     " bytes (incomplete buffer: truncated file?)");
    }
    expected = t.end;
    previous = &t;
  }
  if (expected != data_size) {
    fail(what, "trailing bytes: " + str(data_size - expected) +
                   " bytes after the last tensor (from file byte " + str(data_start + expected) +
                   ")");
  }
}

}  // namespace

namespace detail {

std::string quote_name(std::string_view s) {
  return json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace);
}

json parse_json_strict(std::string_view text, const std::string& what, std::uint64_t byte_base,
                       int max_nesting) {
  if (auto bad = first_invalid_utf8(text); bad != std::string_view::npos) {
    fail(what, "not valid UTF-8 at byte " + str(byte_base + bad));
  }
  if (auto nul = text.find('\0'); nul != std::string_view::npos) {
    fail(what, "NUL byte in JSON at byte " + str(byte_base + nul));
  }
  // One set of seen keys per open object; `path` names the open objects for messages.
  std::vector<std::unordered_set<std::string>> seen;
  std::vector<std::string> path;
  std::string last_key;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    using E = json::parse_event_t;
    if (event == E::object_start || event == E::array_start) {
      if (depth >= max_nesting) {
        fail(what, "JSON nested deeper than " + std::to_string(max_nesting) + " levels" +
                       (path.empty() ? "" : " inside " + detail::quote_name(path.back())));
      }
      if (event == E::object_start) {
        seen.emplace_back();
        path.push_back(depth == 0 ? std::string() : last_key);
      }
    } else if (event == E::object_end) {
      seen.pop_back();
      path.pop_back();
    } else if (event == E::key) {
      last_key = parsed.get<std::string>();
      if (!seen.back().insert(last_key).second) {
        fail(what, "duplicate key " + detail::quote_name(last_key) +
                       (path.size() == 1 ? std::string(" at the top level")
                                         : " in " + detail::quote_name(path.back())));
      }
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), callback);
  } catch (const json::exception& e) {
    // parse_error (syntax) and out_of_range (a number too large for a double) alike.
    std::string where;
    if (const auto* pe = dynamic_cast<const json::parse_error*>(&e); pe && pe->byte > 0) {
      where = " near byte " + str(byte_base + pe->byte - 1);
    }
    fail(what, "not valid JSON" + where + ": " + without_exception_id(e.what()));
  }
}

}  // namespace detail

int dtype_bits(std::string_view tag) {
  static constexpr std::pair<std::string_view, int> kBits[] = {
      {"BOOL", 8},    {"U8", 8},      {"I8", 8},   {"I16", 16},    {"U16", 16},
      {"I32", 32},    {"U32", 32},    {"I64", 64}, {"U64", 64},    {"F16", 16},
      {"BF16", 16},   {"F32", 32},    {"F64", 64}, {"C64", 64},    {"F8_E4M3", 8},
      {"F8_E5M2", 8}, {"F8_E8M0", 8}, {"F4", 4},   {"F6_E2M3", 6}, {"F6_E3M2", 6},
  };
  for (const auto& [name, bits] : kBits) {
    if (name == tag) return bits;
  }
  return 0;
}

Header parse_header(std::string_view prefix, std::uint64_t file_size, const std::string& what) {
  if (file_size < 8) {
    fail(what, "header too small: the file has " + str(file_size) +
                   " bytes, fewer than the 8-byte header length");
  }
  if (prefix.size() < 8) fail(what, "only " + str(prefix.size()) + " bytes of the file were read");
  const std::uint64_t n = read_le64(prefix);
  if (n > kMaxHeaderSize) {
    fail(what, "at byte 0: header too large: header length " + str(n) + " exceeds the limit of " +
                   str(kMaxHeaderSize) + " bytes");
  }
  if (n > file_size - 8) {
    fail(what, "at byte 0: invalid header length " + str(n) + ": 8 + " + str(n) +
                   " bytes exceed the file size of " + str(file_size) + " bytes");
  }
  if (prefix.size() < 8 + n) {
    fail(what, "only " + str(prefix.size()) + " of the " + str(8 + n) + " header bytes were read");
  }
  const std::string_view text = prefix.substr(8, n);
  if (text.empty() || text.front() != '{') {
    fail(what, "at byte 8: the header must be a JSON object starting with '{'");
  }
  // Nesting: the top object, a tensor entry or __metadata__, a shape or data_offsets array.
  const json doc = detail::parse_json_strict(text, what, 8, 3);
  if (!doc.is_object()) fail(what, "at byte 8: the header must be a JSON object");

  Header header;
  header.header_size = n;
  for (const auto& [key, value] : doc.items()) {
    if (key == "__metadata__") {
      header.metadata = parse_metadata(value, what);
    } else {
      header.tensors.push_back(parse_entry(key, value, what));
    }
  }
  check_layout(header.tensors, 8 + n, file_size - 8 - n, what);
  return header;
}

}  // namespace wanhost::safetensors
