#include "layout.hpp"

#include <algorithm>

#include "wanhost/errors.hpp"

namespace wanhost::plugins::megatron_tpppcp {

namespace {
[[noreturn]] void fail(const std::string& pointer, const std::string& what) {
  throw ConfigError(pointer, what, "megatron_tpppcp");
}
}  // namespace

Degrees resolve_degrees(int tp, int cp, int dp, int pp, int world, const std::string& pointer) {
  for (auto [name, v] : {std::pair{"tp", tp}, {"cp", cp}, {"pp", pp}})
    if (v < 1) fail(pointer + "/" + name, "must be >= 1, got " + std::to_string(v));
  if (dp < 0) fail(pointer + "/dp", "must be >= 0 (0: derived), got " + std::to_string(dp));
  const long model_parallel = static_cast<long>(tp) * cp * pp;
  Degrees d{tp, cp, dp, pp};
  const std::string product = "tp x cp x pp = " + std::to_string(tp) + " x " + std::to_string(cp) +
                              " x " + std::to_string(pp) + " = " + std::to_string(model_parallel);
  if (dp == 0) {
    if (world % model_parallel != 0)
      fail(pointer,
           product + " does not divide the " + std::to_string(world) + " process(es) of this run");
    d.dp = static_cast<int>(world / model_parallel);
  } else if (model_parallel * dp != world) {
    fail(pointer + "/dp", product + " times dp = " + std::to_string(dp) + " is " +
                              std::to_string(model_parallel * dp) + ", not the " +
                              std::to_string(world) + " process(es) of this run");
  }
  return d;
}

Coordinates coordinates(const Degrees& d, int rank) {
  Coordinates c;
  c.tp = rank % d.tp;
  rank /= d.tp;
  c.cp = rank % d.cp;
  rank /= d.cp;
  c.dp = rank % d.dp;
  c.pp = rank / d.dp;
  return c;
}

int rank_of(const Degrees& d, const Coordinates& c) {
  return c.tp + d.tp * (c.cp + d.cp * (c.dp + d.dp * c.pp));
}

std::vector<int> group_of(const Degrees& d, int rank, const std::vector<Dim>& vary) {
  const Coordinates me = coordinates(d, rank);
  auto varies = [&](Dim x) { return std::find(vary.begin(), vary.end(), x) != vary.end(); };
  std::vector<int> out;
  for (int r = 0; r < d.world(); ++r) {
    const Coordinates c = coordinates(d, r);
    if ((varies(Dim::tp) || c.tp == me.tp) && (varies(Dim::cp) || c.cp == me.cp) &&
        (varies(Dim::dp) || c.dp == me.dp) && (varies(Dim::pp) || c.pp == me.pp))
      out.push_back(r);
  }
  return out;
}

std::string describe(const Degrees& d) {
  return "tp=" + std::to_string(d.tp) + " cp=" + std::to_string(d.cp) +
         " dp=" + std::to_string(d.dp) + " pp=" + std::to_string(d.pp);
}

}  // namespace wanhost::plugins::megatron_tpppcp
