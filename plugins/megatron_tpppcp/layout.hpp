// The process grid of the Megatron path: tensor (tp), context (cp), data (dp) and pipeline (pp)
// parallel degrees, ranks numbered as Megatron-LM numbers them (megatron/core/parallel_state.py,
// order "tp-cp-ep-dp-pp" without expert parallelism): tp varies fastest, then cp, dp, pp. Ranks of
// one tensor-parallel group are neighbours (one node's NVLink), pipeline stages are farthest apart.
#pragma once

#include <string>
#include <vector>

namespace wanhost::plugins::megatron_tpppcp {

struct Degrees {
  int tp = 1, cp = 1, dp = 1, pp = 1;
  int world() const { return tp * cp * dp * pp; }
};

// A rank's place in each dimension.
struct Coordinates {
  int tp = 0, cp = 0, dp = 0, pp = 0;
};

// The degrees for `world` processes: dp = 0 derives it (world / (tp x cp x pp)); a given dp must
// multiply to the world. Throws ConfigError naming the numbers (JSON pointers under `pointer`).
Degrees resolve_degrees(int tp, int cp, int dp, int pp, int world, const std::string& pointer);

Coordinates coordinates(const Degrees& d, int rank);
int rank_of(const Degrees& d, const Coordinates& c);

enum class Dim { tp, cp, dp, pp };
// The ranks (ascending) that share every coordinate with `rank` except those in `vary`.
std::vector<int> group_of(const Degrees& d, int rank, const std::vector<Dim>& vary);

// "tp=2 cp=1 dp=2 pp=1".
std::string describe(const Degrees& d);

}  // namespace wanhost::plugins::megatron_tpppcp
