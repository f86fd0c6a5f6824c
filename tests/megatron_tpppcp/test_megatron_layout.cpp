// megatron_tpppcp's process grid, pipeline stages and 1F1B schedule, against layouts and
// schedules worked out by hand (Megatron-LM's megatron/core/parallel_state.py numbering and
// megatron/core/pipeline_parallel/schedules.py order).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "layout.hpp"
#include "pipeline.hpp"
#include "wanhost/errors.hpp"

namespace mt = wanhost::plugins::megatron_tpppcp;
using mt::Dim;

namespace {

std::string config_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const wanhost::ConfigError& e) {
    return e.what();
  }
  return "(no ConfigError)";
}

}  // namespace

TEST(MegatronLayout, DegreesDeriveDataParallelOrCheckIt) {
  const mt::Degrees d = mt::resolve_degrees(2, 1, 0, 2, 8, "/parallelism/megatron_tpppcp");
  EXPECT_EQ(d.dp, 2);
  EXPECT_EQ(mt::resolve_degrees(1, 1, 0, 1, 1, "/p").dp, 1);  // the card's one process
  EXPECT_EQ(mt::resolve_degrees(2, 1, 3, 1, 6, "/p").dp, 3);
  std::string e = config_error([] { mt::resolve_degrees(2, 1, 0, 2, 6, "/p"); });
  EXPECT_NE(e.find("tp x cp x pp = 2 x 1 x 2 = 4 does not divide the 6 process(es)"),
            std::string::npos)
      << e;
  e = config_error([] { mt::resolve_degrees(2, 1, 3, 1, 8, "/p"); });
  EXPECT_NE(e.find("/p/dp"), std::string::npos) << e;
  EXPECT_NE(e.find("is 6, not the 8 process(es)"), std::string::npos) << e;
  e = config_error([] { mt::resolve_degrees(0, 1, 0, 1, 1, "/p"); });
  EXPECT_NE(e.find("/p/tp"), std::string::npos) << e;
}

// 16 ranks, tp=2 cp=2 dp=2 pp=2: Megatron numbers tp fastest, then cp, dp, pp.
TEST(MegatronLayout, RanksInMegatronOrder) {
  const mt::Degrees d{2, 2, 2, 2};
  const mt::Coordinates c = mt::coordinates(d, 13);  // 13 = 1 + 2*(0 + 2*(1 + 2*1))
  EXPECT_EQ(c.tp, 1);
  EXPECT_EQ(c.cp, 0);
  EXPECT_EQ(c.dp, 1);
  EXPECT_EQ(c.pp, 1);
  for (int r = 0; r < d.world(); ++r) EXPECT_EQ(mt::rank_of(d, mt::coordinates(d, r)), r);
  EXPECT_EQ(mt::group_of(d, 13, {Dim::tp}), (std::vector<int>{12, 13}));
  EXPECT_EQ(mt::group_of(d, 13, {Dim::cp}), (std::vector<int>{13, 15}));
  EXPECT_EQ(mt::group_of(d, 13, {Dim::dp}), (std::vector<int>{9, 13}));
  EXPECT_EQ(mt::group_of(d, 13, {Dim::pp}), (std::vector<int>{5, 13}));
  EXPECT_EQ(mt::group_of(d, 13, {Dim::dp, Dim::cp}), (std::vector<int>{9, 11, 13, 15}));
  // Every group of one kind partitions the world.
  for (Dim dim : {Dim::tp, Dim::cp, Dim::dp, Dim::pp}) {
    std::map<std::vector<int>, int> groups;
    for (int r = 0; r < d.world(); ++r) {
      const auto g = mt::group_of(d, r, {dim});
      EXPECT_TRUE(std::count(g.begin(), g.end(), r));
      groups[g] += 1;
    }
    EXPECT_EQ(groups.size(), 8u);
    for (const auto& [g, n] : groups) EXPECT_EQ(n, 2);
  }
}

TEST(MegatronPipeline, StagesBalancedOrListed) {
  using Ranges = std::vector<std::pair<std::int64_t, std::int64_t>>;
  EXPECT_EQ(mt::stage_blocks(30, 4, {}, "/p"), (Ranges{{0, 8}, {8, 16}, {16, 23}, {23, 30}}));
  EXPECT_EQ(mt::stage_blocks(2, 1, {}, "/p"), (Ranges{{0, 2}}));
  EXPECT_EQ(mt::stage_blocks(4, 3, {2, 1, 1}, "/p"), (Ranges{{0, 2}, {2, 3}, {3, 4}}));
  std::string e = config_error([] { mt::stage_blocks(2, 3, {}, "/p"); });
  EXPECT_NE(e.find("3 pipeline stages need at least as many blocks; the model has 2"),
            std::string::npos)
      << e;
  e = config_error([] { mt::stage_blocks(4, 3, {2, 1}, "/p/pipeline_layers"); });
  EXPECT_NE(e.find("lists 2 stage(s) but pp is 3"), std::string::npos) << e;
  e = config_error([] { mt::stage_blocks(4, 2, {2, 3}, "/p"); });
  EXPECT_NE(e.find("the stages hold 5 blocks in all; the model has 4"), std::string::npos) << e;
  e = config_error([] { mt::stage_blocks(4, 2, {4, 0}, "/p"); });
  EXPECT_NE(e.find("stage 1 has 0 blocks"), std::string::npos) << e;
}

// 4 stages, 6 micro batches: stage 0 warms up with 3 forwards, the last stage alternates at once.
TEST(MegatronPipeline, OneForwardOneBackward) {
  auto text = [](const std::vector<mt::PipelineOp>& ops) {
    std::string s;
    for (const auto& op : ops) s += (op.forward ? "F" : "B") + std::to_string(op.micro_batch) + " ";
    return s;
  };
  EXPECT_EQ(text(mt::one_f_one_b(4, 0, 6)), "F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5 ");
  EXPECT_EQ(text(mt::one_f_one_b(4, 3, 6)), "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 ");
  EXPECT_EQ(text(mt::one_f_one_b(4, 1, 2)), "F0 F1 B0 B1 ");  // fewer micro batches than stages
  EXPECT_EQ(text(mt::one_f_one_b(1, 0, 3)), "F0 B0 F1 B1 F2 B2 ");
  // Every stage: each micro batch once forward, then once backward; at most stages - stage in
  // flight.
  for (int stages : {1, 2, 3, 5})
    for (int s = 0; s < stages; ++s)
      for (std::int64_t m : {1, 2, 7}) {
        std::set<std::int64_t> fwd, bwd;
        std::size_t in_flight = 0, most = 0;
        for (const auto& op : mt::one_f_one_b(stages, s, m)) {
          if (op.forward) {
            EXPECT_TRUE(fwd.insert(op.micro_batch).second);
            most = std::max(most, ++in_flight);
          } else {
            EXPECT_TRUE(fwd.count(op.micro_batch));
            EXPECT_TRUE(bwd.insert(op.micro_batch).second);
            --in_flight;
          }
        }
        EXPECT_EQ(static_cast<std::int64_t>(bwd.size()), m);
        EXPECT_LE(most, static_cast<std::size_t>(stages - s));
      }
}
