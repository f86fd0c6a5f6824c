// Texts compiled into the host from files of the source tree (see core/CMakeLists.txt):
// core/config/run_schema.json and configs/default.json.
#pragma once

namespace wanhost::core {
const char* embedded_run_schema();
const char* embedded_default_recipe();
}  // namespace wanhost::core
