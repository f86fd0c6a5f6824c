// Writing a plugin: implement one or more of the interfaces (Model, Parallelism, DataSource,
// Collator, Scheduler, VideoAutoencoder, TextEncoder), then in exactly one .cpp file:
//
//   static void factories(wanhost::PluginFactories& f) {
//     f.create_scheduler = [](const wanhost::PluginConfig& cfg) ->
//     std::unique_ptr<wanhost::Scheduler> {
//       return std::make_unique<MyScheduler>(cfg);
//     };
//   }
//   WANHOST_PLUGIN("my_scheduler", "1.0.0", factories)
//
// and build it with the CMake helper `wanhost_add_plugin(my_scheduler SOURCES ... MANIFEST
// my_scheduler.json)`, which also installs the sidecar manifest (name, kinds, version, config
// schema) beside the .so. See docs/plugins.md.
#pragma once

#include <cstdint>
#include <memory>

#include "wanhost/abi.hpp"
#include "wanhost/config.hpp"
#include "wanhost/data.hpp"
#include "wanhost/encoders.hpp"
#include "wanhost/model.hpp"
#include "wanhost/parallel.hpp"
#include "wanhost/parallelism.hpp"
#include "wanhost/scheduler.hpp"

namespace wanhost {

enum PluginKind : std::uint32_t {
  kKindModel = 1u << 0,
  kKindParallelism = 1u << 1,
  kKindDataSource = 1u << 2,
  kKindCollator = 1u << 3,
  kKindScheduler = 1u << 4,
  kKindVideoAutoencoder = 1u << 5,  // SDK 1.1
  kKindTextEncoder = 1u << 6,       // SDK 1.1
};

// One factory per kind; a plugin fills the ones it provides. New kinds are added at the end.
struct PluginFactories {
  std::unique_ptr<Model> (*create_model)(const PluginConfig& config,
                                         const ParallelContext& ctx) = nullptr;
  std::unique_ptr<Parallelism> (*create_parallelism)(const PluginConfig& config) = nullptr;
  std::unique_ptr<DataSource> (*create_data_source)(const PluginConfig& config) = nullptr;
  std::unique_ptr<Collator> (*create_collator)(const PluginConfig& config) = nullptr;
  std::unique_ptr<Scheduler> (*create_scheduler)(const PluginConfig& config) = nullptr;
  // SDK 1.1
  std::unique_ptr<VideoAutoencoder> (*create_video_autoencoder)(const PluginConfig& config) =
      nullptr;
  std::unique_ptr<TextEncoder> (*create_text_encoder)(const PluginConfig& config) = nullptr;

  std::uint32_t kinds() const {
    return (create_model ? kKindModel : 0u) | (create_parallelism ? kKindParallelism : 0u) |
           (create_data_source ? kKindDataSource : 0u) | (create_collator ? kKindCollator : 0u) |
           (create_scheduler ? kKindScheduler : 0u) |
           (create_video_autoencoder ? kKindVideoAutoencoder : 0u) |
           (create_text_encoder ? kKindTextEncoder : 0u);
  }
};

// What the entry point returns. Grows only at the end (descriptor_size tells the host how much
// a plugin built against an older minor provides).
struct PluginDescriptor {
  AbiTag tag;
  std::uint32_t descriptor_size;
  const char* name;
  const char* version;
  std::uint32_t kinds;
  PluginFactories factories;
};

using EntryPoint = const PluginDescriptor* (*)();

}  // namespace wanhost

#define WANHOST_PLUGIN_EXPORT __attribute__((visibility("default")))

// Declares the plugin: its ABI tag (in the ".wanhost_abi" section, read by the host from the file
// before loading) and its single extern "C" entry point.
#define WANHOST_PLUGIN(NAME, VERSION, FILL_FACTORIES)                                  \
  extern "C" WANHOST_PLUGIN_EXPORT __attribute__((section(WANHOST_ABI_SECTION), used)) \
  const ::wanhost::AbiTag wanhost_plugin_abi_tag = ::wanhost::current_abi_tag(NAME);   \
  extern "C" WANHOST_PLUGIN_EXPORT const ::wanhost::PluginDescriptor*                  \
  wanhost_plugin_descriptor() {                                                        \
    static const ::wanhost::PluginDescriptor descriptor = [] {                         \
      ::wanhost::PluginDescriptor d{};                                                 \
      d.tag = wanhost_plugin_abi_tag;                                                  \
      d.descriptor_size = sizeof(::wanhost::PluginDescriptor);                         \
      d.name = NAME;                                                                   \
      d.version = VERSION;                                                             \
      FILL_FACTORIES(d.factories);                                                     \
      d.kinds = d.factories.kinds();                                                   \
      return d;                                                                        \
    }();                                                                               \
    return &descriptor;                                                                \
  }
