#include "loss_plot.hpp"

#include <stdexcept>

#if WANHOST_WITH_PLPLOT
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <vector>

#include <plplot.h>
#endif

namespace wanhost::core::compare {

#if !WANHOST_WITH_PLPLOT

bool have_loss_plots() {
  return false;
}

void draw_loss_plot(const StageComparison&, std::size_t, const std::string& path) {
  throw std::runtime_error("cannot draw " + path +
                           ": this wanhost was built without PLplot (install libplplot-dev and "
                           "plplot-driver-cairo, then reconfigure)");
}

#else

namespace {

// PLplot ends the process (exit()) on a fatal error unless its exit handler does not return:
// this one throws, which unwinds out of PLplot back to draw_loss_plot.
struct PlplotFatal : std::runtime_error {
  using std::runtime_error::runtime_error;
};
int throw_on_exit(PLCHAR_VECTOR message) {
  throw PlplotFatal(message ? message : "fatal error");
}

// Non-fatal errors ("..., aborting operation") are collected here instead of printed.
std::string& abort_messages() {
  static std::string messages;
  return messages;
}
void collect_abort(PLCHAR_VECTOR message) {
  std::string& m = abort_messages();
  if (!m.empty()) m += "; ";
  m += message ? message : "unknown error";
}

constexpr const char* kDevice = "pngcairo";

// Text for PLplot: '#' starts an escape sequence there ("##" is a literal '#').
std::string plplot_text(const std::string& s) {
  std::string out;
  for (const char c : s) {
    out += c;
    if (c == '#') out += '#';
  }
  return out;
}

bool driver_installed() {
  constexpr int kMax = 128;
  const char* menu[kMax];
  const char* names[kMax];
  const char** pmenu = menu;
  const char** pnames = names;
  int n = kMax;
  plgFileDevs(&pmenu, &pnames, &n);
  for (int i = 0; i < n; ++i)
    if (pnames[i] && std::strcmp(pnames[i], kDevice) == 0) return true;
  return false;
}

struct Rgb {
  int r, g, b;
};
// Tableau 10: distinct, readable on white, friendly to most colour-vision deficiencies.
constexpr Rgb kPalette[] = {{31, 119, 180},  {255, 127, 14}, {44, 160, 44},   {214, 39, 40},
                            {148, 103, 189}, {140, 86, 75},  {227, 119, 194}, {127, 127, 127},
                            {188, 189, 34},  {23, 190, 207}};
constexpr int kPaletteSize = static_cast<int>(sizeof kPalette / sizeof kPalette[0]);
// Colour map 0: background, axes and text, grid, then a bold and a faint colour per run.
constexpr int kBackground = 0, kInk = 1, kGrid = 2, kFirstRun = 3;
int bold_colour(std::size_t run) {
  return kFirstRun + 2 * static_cast<int>(run);
}
int faint_colour(std::size_t run) {
  return bold_colour(run) + 1;
}
// Runs past the palette's size repeat its colours with dashed lines.
int line_style(std::size_t run) {
  return 1 + static_cast<int>(run / kPaletteSize) % 8;
}

// Draws the finite stretches of (x, y) as polylines.
void draw_finite(const std::vector<long>& steps, const std::vector<double>& y) {
  std::vector<PLFLT> xs, ys;
  auto flush = [&] {
    if (xs.size() == 1) {  // a lone point between skipped steps: a dot
      xs.push_back(xs[0]);
      ys.push_back(ys[0]);
    }
    if (!xs.empty()) plline(static_cast<PLINT>(xs.size()), xs.data(), ys.data());
    xs.clear();
    ys.clear();
  };
  for (std::size_t i = 0; i < steps.size(); ++i) {
    if (!std::isfinite(y[i])) {
      flush();
      continue;
    }
    xs.push_back(static_cast<PLFLT>(steps[i]));
    ys.push_back(y[i]);
  }
  flush();
}

void draw(const StageComparison& stage, std::size_t window, const std::string& path) {
  const std::size_t runs = stage.curves.size();
  // Axis ranges: every step of the stage; the loss range of the smoothed curves (the raw ones
  // are clipped), with a margin.
  double x0 = 0, x1 = 1, y0 = HUGE_VAL, y1 = -HUGE_VAL;
  if (!stage.steps.empty())
    x0 = static_cast<double>(stage.steps.front() - 1), x1 = static_cast<double>(stage.steps.back());
  for (const auto& c : stage.curves)
    for (const double v : c.smoothed)
      if (std::isfinite(v)) y0 = std::min(y0, v), y1 = std::max(y1, v);
  if (!(y0 <= y1)) y0 = 0, y1 = 1;
  const double pad = y1 > y0 ? 0.06 * (y1 - y0) : 0.05 * std::max(std::fabs(y0), 1.0);
  y0 -= pad;
  y1 += pad;

  // The page grows with the legend (one row per run below the axes).
  const int width = 1400;
  const int legend_px = 34 * static_cast<int>(runs) + 30;
  const int height = 760 + legend_px;
  const double bottom = (static_cast<double>(legend_px) + 110.0) / height;
  const double top = 1.0 - 95.0 / height;

  plsdev(kDevice);
  plsfnam(path.c_str());
  plspage(100, 100, width, height, 0, 0);
  plscmap0n(kFirstRun + 2 * static_cast<int>(runs));
  plscol0a(kBackground, 255, 255, 255, 1.0);
  plscol0a(kInk, 30, 30, 30, 1.0);
  plscol0a(kGrid, 215, 215, 215, 1.0);
  for (std::size_t r = 0; r < runs; ++r) {
    const Rgb& c = kPalette[r % kPaletteSize];
    plscol0a(bold_colour(r), c.r, c.g, c.b, 1.0);
    plscol0a(faint_colour(r), c.r, c.g, c.b, 0.2);
  }
  plinit();
  plsfont(PL_FCI_SANS, PL_FCI_UPRIGHT, PL_FCI_MEDIUM);
  pladv(0);
  plvpor(0.09, 0.975, bottom, top);
  plwind(x0, x1, y0, y1);
  plschr(0, 1.0);

  plcol0(kGrid);
  plwidth(1.0);
  plbox("g", 0, 0, "g", 0, 0);
  plwidth(1.0);
  for (std::size_t r = 0; r < runs; ++r) {
    plcol0(faint_colour(r));
    pllsty(1);
    draw_finite(stage.curves[r].steps, stage.curves[r].loss);
  }
  plwidth(3.0);
  for (std::size_t r = 0; r < runs; ++r) {
    plcol0(bold_colour(r));
    pllsty(line_style(r));
    draw_finite(stage.curves[r].steps, stage.curves[r].smoothed);
  }
  pllsty(1);
  plcol0(kInk);
  plwidth(1.5);
  plbox("bcnst", 0, 0, "bcnstv", 0, 0);

  plschr(0, 1.35);
  const std::string title = "Stage " + stage.name + ": training loss (moving average over " +
                            std::to_string(window) + " steps)";
  plmtex("t", 2.2, 0.5, 0.5, plplot_text(title).c_str());
  plschr(0, 1.0);
  plmtex("t", 1.0, 0.5, 0.5, "bold: moving average, faint: loss of each step");
  plschr(0, 1.15);
  plmtex("b", 2.8, 0.5, 0.5, "global step");
  plmtex("l", 3.6, 0.5, 0.5, "loss");

  // The legend: one row per run, below the axes (it never covers a curve).
  std::vector<std::string> texts;
  std::vector<const char*> text_ptrs;
  std::vector<PLINT> opts(runs, PL_LEGEND_LINE), colours(runs), styles(runs), ink(runs, kInk);
  std::vector<PLFLT> widths(runs, 3.0);
  texts.reserve(runs);
  for (std::size_t r = 0; r < runs; ++r) {
    texts.push_back(plplot_text(stage.curves[r].label));
    text_ptrs.push_back(texts.back().c_str());
    colours[r] = bold_colour(r);
    styles[r] = line_style(r);
  }
  PLFLT legend_w = 0, legend_h = 0;
  plschr(0, 0.9);
  pllegend(&legend_w, &legend_h, PL_LEGEND_BACKGROUND,
           PL_POSITION_BOTTOM | PL_POSITION_LEFT | PL_POSITION_INSIDE | PL_POSITION_SUBPAGE, 0.05,
           0.015, 0.05, kBackground, kInk, 1, static_cast<PLINT>(runs), 1, static_cast<PLINT>(runs),
           opts.data(), 1.0, 1.0, 2.0, 0.0, ink.data(), text_ptrs.data(), nullptr, nullptr, nullptr,
           nullptr, colours.data(), styles.data(), widths.data(), nullptr, nullptr, nullptr,
           nullptr);
  plend();
}

}  // namespace

bool have_loss_plots() {
  return true;
}

void draw_loss_plot(const StageComparison& stage, std::size_t window, const std::string& path) {
  // PLplot would prompt on stdin for another name when it cannot open the file: find out first.
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
  ::close(fd);

  plsexit(throw_on_exit);
  plsabort(collect_abort);
  abort_messages().clear();
  // Abort messages go to these instead of stderr. Static: PLplot keeps the pointers (there is no
  // way to unset them).
  static PLINT error_code;
  static char error_text[1024];
  error_code = 0;
  error_text[0] = '\0';
  std::string failure;
  try {
    plsError(&error_code, error_text);
    if (!driver_installed())
      failure = std::string("PLplot's Cairo PNG driver (") + kDevice +
                ") is not installed or not found (Debian: apt-get install plplot-driver-cairo; "
                "PLPLOT_DRV_DIR names the drivers folder)";
    else
      draw(stage, window, path);
  } catch (const PlplotFatal& e) {
    failure = std::string("PLplot: ") + e.what();
  } catch (const std::exception& e) {  // e.g. out of memory while drawing
    failure = e.what();
  }
  if (!failure.empty()) {
    try {
      plend();  // what PLplot's exit would have done, if it can
    } catch (const PlplotFatal&) {
    }
  }
  plsexit(nullptr);
  plsabort(nullptr);
  std::string aborted = abort_messages();
  if (aborted.empty() && error_code != 0) aborted = error_text;
  if (!aborted.empty())
    failure = failure.empty() ? "PLplot: " + aborted : failure + " (PLplot: " + aborted + ")";
  if (!failure.empty()) {
    ::unlink(path.c_str());
    throw std::runtime_error("cannot draw " + path + ": " + failure);
  }
}

#endif

}  // namespace wanhost::core::compare
