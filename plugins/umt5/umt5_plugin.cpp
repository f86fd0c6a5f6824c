// The umt5 plugin's entry point: a text encoder (umT5 encoder + SentencePiece tokenizer).
#include "umt5.hpp"
#include "wanhost/plugin.hpp"

namespace wanhost::plugins::umt5 {
namespace {

void factories(wanhost::PluginFactories& f) {
  f.create_text_encoder =
      [](const wanhost::PluginConfig& cfg) -> std::unique_ptr<wanhost::TextEncoder> {
    return std::make_unique<wanhost::plugins::umt5::Umt5TextEncoder>(cfg);
  };
}

}  // namespace
}  // namespace wanhost::plugins::umt5

WANHOST_PLUGIN("umt5", "0.1.0", wanhost::plugins::umt5::factories)
