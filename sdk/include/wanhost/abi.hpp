// The binary contract between the wanhost host and its plugins.
//
// Host and plugins share one LibTorch build, so C++ objects (at::Tensor, torch::nn::Module) cross
// the boundary. That is only safe when both sides were built against the same SDK major, the same
// LibTorch, the same libstdc++ string ABI and the same CUDA setting. Every plugin therefore carries
// an `AbiTag` in an ELF section of its own (`.wanhost_abi`); the host reads that section from the
// file *before* calling dlopen, so a refused plugin executes nothing (not even static
// constructors). Only after the tag matches is the library loaded and its single `extern "C"` entry
// point called.
//
// Versioning rule (ONNX Runtime style): the SDK minor only ever adds things at the end of
// `PluginDescriptor` and of the interfaces; a host accepts plugins of the same major and a minor
// not newer than its own. Any other change bumps the major.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#define WANHOST_SDK_ABI_MAJOR 2
#define WANHOST_SDK_ABI_MINOR 6

// The LibTorch version the SDK was configured with ("2.11.0"); set by the SDK's CMake package.
#ifndef WANHOST_TORCH_VERSION
#error "WANHOST_TORCH_VERSION must be defined by the build (use the WanHost::sdk CMake target)"
#endif
// 1 when the SDK was built against a CUDA LibTorch with wanhost's CUDA code enabled.
#ifndef WANHOST_WITH_CUDA
#define WANHOST_WITH_CUDA 0
#endif

#define WANHOST_ABI_SECTION ".wanhost_abi"
#define WANHOST_ENTRY_POINT "wanhost_plugin_descriptor"

namespace wanhost {

inline constexpr char kAbiMagic[8] = {'W', 'A', 'N', 'H', 'O', 'S', 'T', '1'};

// Plain data only: no pointers (they would need relocation to be read from the file).
struct AbiTag {
  char magic[8];
  std::uint32_t tag_size;   // sizeof(AbiTag) as the plugin saw it
  std::uint32_t sdk_major;  // WANHOST_SDK_ABI_MAJOR
  std::uint32_t sdk_minor;  // WANHOST_SDK_ABI_MINOR
  std::uint32_t cxx11_abi;  // _GLIBCXX_USE_CXX11_ABI
  std::uint32_t cuda;       // WANHOST_WITH_CUDA
  std::uint32_t reserved;
  char torch_version[32];  // NUL-terminated
  char plugin_name[64];    // NUL-terminated; must equal the sidecar manifest's name
};
static_assert(std::is_trivially_copyable_v<AbiTag> && sizeof(AbiTag) == 128,
              "AbiTag layout is part of the ABI: change it only with a major bump");

// The tag that the code being compiled right now would carry (host side: what it expects).
constexpr AbiTag current_abi_tag(const char* plugin_name = "") {
  AbiTag t{};
  for (int i = 0; i < 8; ++i) t.magic[i] = kAbiMagic[i];
  t.tag_size = sizeof(AbiTag);
  t.sdk_major = WANHOST_SDK_ABI_MAJOR;
  t.sdk_minor = WANHOST_SDK_ABI_MINOR;
  t.cxx11_abi = _GLIBCXX_USE_CXX11_ABI;
  t.cuda = WANHOST_WITH_CUDA;
  const char* v = WANHOST_TORCH_VERSION;
  for (int i = 0; i < 31 && v[i]; ++i) t.torch_version[i] = v[i];
  for (int i = 0; i < 63 && plugin_name[i]; ++i) t.plugin_name[i] = plugin_name[i];
  return t;
}

}  // namespace wanhost
