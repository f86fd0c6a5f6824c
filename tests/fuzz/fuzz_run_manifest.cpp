// libFuzzer target for what a user's run manifest goes through first: the guarded JSON parser
// (sdk/kit/src/json_file.cpp: errors name the line, column and byte) and validation against the
// run schema (core/config/schema.cpp: defaults filled, the first problem named by its JSON
// pointer). FormatError and ConfigError are the only acceptable failures; any other exception, a
// crash or a sanitizer report is a bug. A manifest that validates must validate again unchanged
// (defaults are filled once). Built with clang, ASan and UBSan (tests/fuzz/CMakeLists.txt); the
// committed configs/ are its seeds.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../../core/config/embedded_configs.hpp"
#include "../../core/config/schema.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/json_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const wanhost::Json schema = wanhost::Json::parse(wanhost::core::embedded_run_schema());
  const std::string text(reinterpret_cast<const char*>(data), size);
  wanhost::Json manifest;
  try {
    manifest = wanhost::parse_json_text(text, "<fuzz input>");
  } catch (const wanhost::FormatError&) {
    return 0;
  }
  try {
    wanhost::core::validate_config(manifest, schema, "");
  } catch (const wanhost::ConfigError&) {
    return 0;
  }
  wanhost::Json again = manifest;
  wanhost::core::validate_config(again, schema, "");  // must not throw
  if (again != manifest) throw std::logic_error("validation is not idempotent");
  return 0;
}
