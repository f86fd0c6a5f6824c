// The loss plot of one stage of `wanhost compare`, drawn with PLplot's Cairo PNG driver
// (pngcairo). Built only when PLplot was found (core/CMakeLists.txt); otherwise
// have_loss_plots() is false and draw_loss_plot() throws.
#pragma once

#include <cstddef>
#include <string>

#include "compare.hpp"

namespace wanhost::core::compare {

// Whether this build can draw PNGs (linked with PLplot).
bool have_loss_plots();

// Draws every curve of `stage` (faint raw loss, bold moving average, a legend of the run labels
// below the axes) into the PNG `path`. Throws std::runtime_error with PLplot's message when the
// drawing fails (no pngcairo driver installed, the file cannot be written); PLplot is never let
// to end the process.
void draw_loss_plot(const StageComparison& stage, std::size_t window, const std::string& path);

}  // namespace wanhost::core::compare
