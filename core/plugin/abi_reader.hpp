// Reads a plugin's ABI tag straight from its ELF file, without loading it: a plugin that is
// refused must not run any code, and dlopen would already run its static constructors.
#pragma once

#include <optional>
#include <string>

#include "wanhost/abi.hpp"

namespace wanhost::core {

// The contents of the ".wanhost_abi" section of `path`, or nullopt when the file is an ELF shared
// object without that section. Throws std::runtime_error when the file is not a readable 64-bit
// little-endian ELF file or the section has the wrong size.
std::optional<AbiTag> read_abi_tag(const std::string& path);

// Why `plugin` cannot be used by this host (naming both sides), or an empty string if it can.
std::string abi_mismatch(const AbiTag& plugin, const AbiTag& host);

// "sdk 1.0, torch 2.11.0, cxx11-abi 1, cuda on" — for messages and `plugins inspect`.
std::string describe(const AbiTag& tag);

}  // namespace wanhost::core
