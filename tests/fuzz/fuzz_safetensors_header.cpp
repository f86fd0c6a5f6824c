// libFuzzer target for the safetensors header parser: the input is the start of a file and its
// size the file size. FormatError is the only acceptable failure; any other exception, a crash
// or a sanitizer report is a bug. An accepted header must also satisfy the format's invariants.
// The same function runs under g++ in test_safetensors_header_replay (no libFuzzer needed).
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include "wanhost/errors.hpp"
#include "wanhost/kit/safetensors_header.hpp"

namespace {

namespace st = wanhost::safetensors;

void require(bool ok, const std::string& what) {
  if (!ok) throw std::logic_error("parse_header accepted a header that breaks: " + what);
}

// What every header parse_header returns must guarantee, whatever the input.
void check_invariants(const st::Header& h, std::uint64_t file_size) {
  require(h.header_size <= st::kMaxHeaderSize, "header length limit");
  require(8 + h.header_size <= file_size, "header inside the file");
  std::uint64_t expected = 0;
  for (const auto& t : h.tensors) {
    require(t.begin == expected, "offsets tile the data section");
    require(t.end >= t.begin, "end after begin");
    const int bits = st::dtype_bits(t.dtype);
    require(bits > 0, "known dtype");
    std::uint64_t elements = 1;
    for (auto d : t.shape) {
      require(d >= 0, "non-negative shape");
      elements *= static_cast<std::uint64_t>(d);  // cannot overflow: the parser checked
    }
    require(elements * static_cast<std::uint64_t>(bits) == (t.end - t.begin) * 8, "byte count");
    expected = t.end;
  }
  require(8 + h.header_size + expected == file_size, "no trailing bytes");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  try {
    check_invariants(st::parse_header(input, size, "fuzz-input"), size);
  } catch (const wanhost::FormatError&) {
    // The expected way to refuse a file.
  }
  return 0;
}
