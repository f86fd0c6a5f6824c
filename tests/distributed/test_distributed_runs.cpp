// Multi-process training on CPU ranks through `mpirun`, checked against the single-process run:
// automodel_fsdp (and ddp) on 2 and 3 ranks reproduce its losses, shard their state, resume at
// another data-parallel size, and end cleanly when a rank dies or hangs; automodel_fsdp's
// recompute choices give the same run.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "wanhost/kit/safetensors.hpp"

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

struct Result {
  int code = -1;
  std::string log;
  double seconds = 0;
};

// The running test's folder, $WANHOST_TEST_TMP/<Suite>.<Test>; scratch() empties it first.
fs::path test_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  fs::path p =
      fs::path(WANHOST_TEST_TMP) / (std::string(info->test_suite_name()) + "." + info->name());
  fs::create_directories(p);
  return p;
}

fs::path scratch() {
  fs::remove_all(test_dir());
  return test_dir();
}

// 16 + 4 steps of the tiny default recipe, global batch 12 in micro batches of 2 (splits over
// 1, 2 and 3 ranks), one CPU thread per rank.
std::string settings() {
  std::string s;
  for (const char* kv :
       {"stages.0.steps=16", "stages.0.global_batch=12", "stages.0.micro_batch=2",
        "stages.1.steps=4", "stages.1.global_batch=12", "stages.1.micro_batch=2",
        "logging.progress=\"off\"", "checkpoint.every_steps=4", "checkpoint.keep_last=10"})
    s += std::string(" --set '") + kv + "'";
  return s;
}

// Runs `[mpirun -np N] wanhost run --plugins P --out OUT <settings> extra` with `env` (KEY=VALUE
// words, exported to the ranks) under a wall-clock limit; output goes to OUT.log.
Result run(const fs::path& out, int np, const std::string& plugin, const std::string& extra = "",
           const std::vector<std::string>& env = {}, int timeout_s = 240) {
  std::string launch;
  // Root in CI containers: OpenMPI refuses root unless told.
  std::string exports = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ";
  for (const auto& e : env) exports += e + " ";
  if (np > 0) {
    launch = std::string(WANHOST_MPIEXEC) + " -np " + std::to_string(np);
    for (const auto& e : env) launch += " -x " + e.substr(0, e.find('='));
  }
  const fs::path log = out.string() + ".log";
  const std::string cmd = exports + "timeout -s KILL " + std::to_string(timeout_s) + " " + launch +
                          " " + WANHOST_CLI + " run --plugins " + plugin + " --out " +
                          out.string() + settings() + " " + extra + " > " + log.string() + " 2>&1";
  const auto t0 = std::chrono::steady_clock::now();
  const int status = std::system(cmd.c_str());
  Result r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  std::ifstream f(log);
  std::stringstream ss;
  ss << f.rdbuf();
  r.log = ss.str();
  return r;
}

std::string tail(const std::string& s) {
  return s.size() > 3000 ? s.substr(s.size() - 3000) : s;
}

// One number of every step in a run's metrics.jsonl ("loss", "grad_norm").
std::vector<double> metric(const fs::path& run, const char* key) {
  std::vector<double> out;
  std::ifstream f(run / "metrics.jsonl");
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) out.push_back(Json::parse(line).at(key).get<double>());
  return out;
}

std::vector<double> losses(const fs::path& run) {
  return metric(run, "loss");
}

void expect_same_values(const std::vector<double>& ref, const std::vector<double>& got,
                        const std::string& what, double rel) {
  ASSERT_EQ(ref.size(), got.size()) << what;
  double worst = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double d = std::abs(ref[i] - got[i]) / std::abs(ref[i]);
    worst = std::max(worst, d);
    EXPECT_LE(d, rel) << what << ": step " << i + 1 << ": " << got[i] << " vs " << ref[i];
  }
  std::printf("[ figures ] %s: %zu steps, worst relative difference %.2e\n", what.c_str(),
              ref.size(), worst);
}

// A distributed run against the single-process one: every step's loss and gradient norm (a
// gradient reduced with the wrong scale shows in the norm at step 1, long before the losses
// drift), and the exported final weights. Those within 1e-4: AdamW divides by the root of the
// second moment, so the float32 rounding differences of another reduction order (1e-7 in the
// norms) grow to 1e-5 in the weights over 20 steps (seen: 1.0e-5 to 3.1e-5 on 1-3 ranks, H200
// host CPU, 2026-12-02); a wrongly scaled gradient is off by far more.
void expect_same_run(const fs::path& ref, const fs::path& got, const std::string& what,
                     double rel = 1e-5, double weights_rel = 1e-4) {
  expect_same_values(losses(ref), losses(got), what + ", losses", rel);
  expect_same_values(metric(ref, "grad_norm"), metric(got, "grad_norm"), what + ", grad norms",
                     rel);
  const std::string file = "export/diffusion_pytorch_model.safetensors";
  if (!fs::exists(got / file)) return;  // a run stopped early exports nothing
  const auto a = wanhost::safetensors::File::open((ref / file).string()).load_all();
  const auto b = wanhost::safetensors::File::open((got / file).string()).load_all();
  ASSERT_EQ(a.size(), b.size()) << what;
  double worst = 0;
  for (const auto& [name, t] : a) {
    ASSERT_TRUE(b.count(name)) << what << ": no " << name;
    const double d = (b.at(name) - t).norm().item<double>() / (t.norm().item<double>() + 1e-12);
    worst = std::max(worst, d);
    EXPECT_LE(d, weights_rel) << what << ": final " << name;
  }
  std::printf("[ figures ] %s: %zu final tensors, worst relative difference %.2e\n", what.c_str(),
              a.size(), worst);
}

// "parameters + gradients + optimizer state on this rank: X MiB" from a rank's log file.
double state_mib(const fs::path& run, int rank) {
  char name[32];
  std::snprintf(name, sizeof name, "rank_%05d.log", rank);
  std::ifstream f(run / "logs" / name);
  std::stringstream ss;
  ss << f.rdbuf();
  std::smatch m;
  const std::string text = ss.str();
  if (!std::regex_search(text, m, std::regex(R"(optimizer state on this rank: ([0-9.]+) MiB)")))
    return -1;
  return std::stod(m[1]);
}

class Distributed : public ::testing::Test {
 protected:
  // The single-process reference of this test (each test is its own process under ctest, so a
  // shared one would race).
  const fs::path& reference() {
    if (reference_.empty()) {
      reference_ = test_dir() / "reference-single";  // beside the test's runs, which stay
      Result r = run(reference_, 0, "ddp");
      if (r.code != 0) ADD_FAILURE() << "single-process run failed:\n" << tail(r.log);
    }
    return reference_;
  }

 private:
  fs::path reference_;
};

TEST_F(Distributed, FsdpOnOneTwoThreeRanksReproducesTheSingleProcessRun) {
  const fs::path dir = scratch();
  const std::vector<double> ref = losses(reference());
  ASSERT_EQ(ref.size(), 20u);
  const double single_mib = state_mib(reference(), 0);
  ASSERT_GT(single_mib, 0);
  for (int np : {0, 2, 3}) {
    const fs::path out = dir / ("fsdp-" + std::to_string(np));
    Result r = run(out, np, "automodel_fsdp");
    ASSERT_EQ(r.code, 0) << tail(r.log);
    expect_same_run(reference(), out,
                    "automodel_fsdp on " + std::to_string(std::max(np, 1)) + " rank(s)");
    const int n = std::max(np, 1);
    for (int k = 0; k < n; ++k) {
      const double mib = state_mib(out, k);
      std::printf(
          "[ figures ] automodel_fsdp %d rank(s): rank %d holds %.3f MiB of parameters + "
          "gradients + AdamW state (single process: %.3f MiB, ratio %.3f)\n",
          n, k, mib, single_mib, mib / single_mib);
      // 1/N up to the padding of each parameter to a multiple of N elements.
      EXPECT_NEAR(mib / single_mib, 1.0 / n, 0.02) << "rank " << k;
    }
  }
}

TEST_F(Distributed, DdpOnTwoRanksReproducesTheSingleProcessRun) {
  const fs::path out = scratch() / "ddp-2";
  Result r = run(out, 2, "ddp");
  ASSERT_EQ(r.code, 0) << tail(r.log);
  expect_same_run(reference(), out, "ddp on 2 ranks");
}

// seq_packer under a token budget with mixed clip lengths: each rank packs its own samples, so the
// ranks may run different numbers of micro batches in a step (ddp reduces once after all of
// them); two ranks train like one process, with the same samples and tokens per step.
TEST_F(Distributed, DdpWithSeqPackerOnTwoRanksReproducesTheSingleProcessRun) {
  const fs::path dir = scratch();
  const std::string packing =
      "--set 'collator.plugin=\"seq_packer\"' --set 'collator.seq_packer.max_tokens=96' "
      "--set 'stages.1.data.synthetic.min_latent_frames=1'";
  const fs::path single = dir / "single", two = dir / "ddp-2";
  Result r = run(single, 0, "ddp", packing);
  ASSERT_EQ(r.code, 0) << tail(r.log);
  r = run(two, 2, "ddp", packing);
  ASSERT_EQ(r.code, 0) << tail(r.log);
  expect_same_run(single, two, "ddp + seq_packer on 2 ranks");
  EXPECT_EQ(metric(single, "tokens"), metric(two, "tokens"));
  EXPECT_EQ(metric(single, "samples"), metric(two, "samples"));
  const auto packs = metric(two, "packs");
  ASSERT_EQ(packs.size(), 20u);
  EXPECT_EQ(packs[0], 2);  // 6 frames of 16 tokens on each rank: one pack each
}

// The same under automodel_fsdp, whose every micro batch gathers and reduce-scatters the units
// collectively: a rank with fewer packs runs zero-weight passes so the collectives pair up (it
// used to wait until run.comm_timeout_s). Stage 2's mixed clip lengths give the ranks different
// pack counts in some steps (an odd total over two ranks).
TEST_F(Distributed, FsdpWithUnevenPackCountsReproducesTheSingleProcessRun) {
  const fs::path dir = scratch();
  const std::string packing =
      "--set 'collator.plugin=\"seq_packer\"' --set 'collator.seq_packer.max_tokens=96' "
      "--set 'stages.1.data.synthetic.min_latent_frames=1' --set run.comm_timeout_s=60";
  const fs::path single = dir / "single", two = dir / "fsdp-2";
  Result r = run(single, 0, "automodel_fsdp", packing);
  ASSERT_EQ(r.code, 0) << tail(r.log);
  r = run(two, 2, "automodel_fsdp", packing, {}, 180);
  ASSERT_EQ(r.code, 0) << tail(r.log);
  expect_same_run(single, two, "automodel_fsdp + seq_packer on 2 ranks");
  const auto packs = metric(two, "packs");
  EXPECT_TRUE(std::any_of(packs.begin(), packs.end(), [](double p) {
    return static_cast<long>(p) % 2 == 1;
  })) << "no step gave the two ranks different pack counts: the test does not test them";
}

// automodel_fsdp's `recompute` choice changes memory and time, never the values. Four blocks on
// two ranks: none (blocks 0-2 keep their graphs, their weights freed after forward and refilled
// in place before backward; block 3 stays gathered), every_k=2 (blocks 0 and 2 recomputed, 1 and
// 3 kept) and none with reshard_last_block (block 3 freed and refilled too) give the losses and
// gradient norms of all (the same arithmetic: within 1e-6, 20 steps) and of the single process.
TEST_F(Distributed, FsdpRecomputeChoicesReproduceRecomputingEveryBlock) {
  const fs::path dir = scratch();
  const std::string four_blocks = " --set model.wan21_dit.overrides.num_layers=4";
  const auto fsdp = [](const std::string& key, const std::string& value) {
    return " --set parallelism.automodel_fsdp." + key + "=" + value;
  };
  Result r = run(dir / "single", 0, "ddp", four_blocks);
  ASSERT_EQ(r.code, 0) << tail(r.log);
  r = run(dir / "all", 2, "automodel_fsdp", four_blocks);
  ASSERT_EQ(r.code, 0) << tail(r.log);
  EXPECT_NE(r.log.find("recompute all: 4 of 4 blocks recomputed in backward [0,1,2,3]"),
            std::string::npos)
      << tail(r.log);
  expect_same_run(dir / "single", dir / "all", "automodel_fsdp recompute=all, 4 blocks");
  struct Choice {
    std::string name, options, logged;
  };
  const std::vector<Choice> choices = {
      {"none", fsdp("recompute", "'\"none\"'"), "recompute none: 0 of 4 blocks"},
      {"every_k", fsdp("recompute", "'\"every_k\"'") + fsdp("recompute_every", "2"),
       "recompute every_k=2: 2 of 4 blocks recomputed in backward [0,2]"},
      {"none-reshard-last", fsdp("recompute", "'\"none\"'") + fsdp("reshard_last_block", "true"),
       "recompute none: 0 of 4 blocks"}};
  for (const auto& c : choices) {
    r = run(dir / c.name, 2, "automodel_fsdp", four_blocks + c.options);
    ASSERT_EQ(r.code, 0) << c.name << "\n" << tail(r.log);
    EXPECT_NE(r.log.find(c.logged), std::string::npos) << tail(r.log);
    expect_same_run(dir / "all", dir / c.name, "recompute=" + c.name + " vs all", 1e-6, 1e-6);
    expect_same_run(dir / "single", dir / c.name, "recompute=" + c.name + " vs the single process");
  }
}

// The memory tests' shape: 8 blocks, micro batches of 12 samples of 576 tokens, 2 steps.
const std::string kMemoryShape =
    " --set model.wan21_dit.overrides.num_layers=8 --set data.synthetic.height=48"
    " --set data.synthetic.width=48 --set stages.0.steps=2 --set stages.0.global_batch=12"
    " --set stages.0.micro_batch=12 --set stages.1.steps=1 --set stages.1.global_batch=1"
    " --set stages.1.micro_batch=1 --set checkpoint.export_diffusers=false";

// One process of `plugin` in kMemoryShape + options: the largest peak resident memory of its steps
// (metrics' peak_mem_gib on the CPU), with glibc's mmap threshold fixed (see below), printed.
double peak_resident_gib(const fs::path& out, const std::string& plugin, const std::string& options,
                         const std::string& label) {
  const Result r = run(out, 0, plugin, kMemoryShape + options, {"MALLOC_MMAP_THRESHOLD_=65536"});
  EXPECT_EQ(r.code, 0) << label << "\n" << tail(r.log);
  const auto p = metric(out, "peak_mem_gib");
  const double peak = p.empty() ? 0.0 : *std::max_element(p.begin(), p.end());
  std::printf("[ figures ] %s: peak resident memory %.1f MiB\n", label.c_str(), peak * 1024);
  return peak;
}

// ... and memory: one process in kMemoryShape. The peak resident memory (metrics' peak_mem_gib on
// the CPU) grows with the blocks that keep their activations: 0 (all), 4 (every_k=2), 8 (none).
// glibc's malloc keeps freed large blocks in its heap once its mmap threshold has grown, so without
// a fixed threshold the peak followed the allocation history more than the live bytes (a CI run saw
// +143 MiB for 4 kept blocks where the dev machine saw +170); with MALLOC_MMAP_THRESHOLD_ fixed
// every tensor is its own mapping, and three runs on the dev machine (2026-12-04) gave
// 0.470/0.621/0.817 GiB within 1 MiB. About 40-50 MiB a kept block; the test asks for 25 MiB a kept
// block.
TEST_F(Distributed, FsdpRecomputeChoicesTradeMemory) {
  const fs::path dir = scratch();
  std::map<std::string, double> peak;
  for (const std::string rc : {"all", "every_k", "none"}) {
    const std::string options =
        " --set 'parallelism.automodel_fsdp.recompute=\"" + rc + "\"'" +
        (rc == "every_k" ? " --set parallelism.automodel_fsdp.recompute_every=2" : "");
    peak[rc] = peak_resident_gib(dir / rc, "automodel_fsdp", options, "recompute=" + rc);
  }
  EXPECT_EQ(losses(dir / "all"), losses(dir / "none"));
  const double four_blocks = 4 * 25.0 / 1024;
  EXPECT_GT(peak["every_k"], peak["all"] + four_blocks);
  EXPECT_GT(peak["none"], peak["every_k"] + four_blocks);
}

// One process: automodel_fsdp takes its one-rank fast path (a shard is the whole weight, so no
// gathers, no frees or refills, no reduce-scatter copies) and names it in the log. recompute none
// and all give the same run bit for bit, and ddp's within the float32 rounding of the gradient
// sums (the block-wise backward adds a tensor's gradients from several uses in another order than
// ddp's one graph: 4e-8 relative in the losses, 9e-8 in the norms, 2026-12-04; the same before
// the fast path). With recompute none the peak resident memory is ddp's: the fast path keeps no
// copy of the weights (measured +2.3 to +2.8 MiB over ddp's 833 MiB in the memory test's shape; the
// path through one-rank gathers was +2.9); the test allows 8 MiB.
TEST_F(Distributed, FsdpOnOneProcessTakesTheFastPathAndMatchesDdp) {
  const fs::path dir = scratch();
  for (const std::string rc : {"none", "all"}) {
    const Result r = run(dir / rc, 0, "automodel_fsdp",
                         "--set 'parallelism.automodel_fsdp.recompute=\"" + rc + "\"'");
    ASSERT_EQ(r.code, 0) << rc << "\n" << tail(r.log);
    EXPECT_NE(r.log.find("automodel_fsdp: one data-parallel rank: one-rank fast path, the shards "
                         "are the whole weights and are used in place"),
              std::string::npos)
        << tail(r.log);
    expect_same_run(reference(), dir / rc, "automodel_fsdp recompute=" + rc + " on one process",
                    1e-6);
  }
  EXPECT_EQ(losses(dir / "none"), losses(dir / "all"));
  EXPECT_EQ(metric(dir / "none", "grad_norm"), metric(dir / "all", "grad_norm"));

  std::map<std::string, double> peak;
  for (const std::string plugin : {"ddp", "automodel_fsdp"})
    peak[plugin] = peak_resident_gib(
        dir / ("mem-" + plugin), plugin,
        plugin == "ddp" ? "" : " --set 'parallelism.automodel_fsdp.recompute=\"none\"'",
        plugin + " on one process (recompute none)");
  EXPECT_LE(peak["automodel_fsdp"], peak["ddp"] + 8.0 / 1024);
}

// recompute_every goes with recompute every_k only; bad values are configuration errors naming
// the key, before any step.
TEST_F(Distributed, FsdpRecomputeOptionsThatDoNotFitAreRefused) {
  const fs::path dir = scratch();
  const auto refused = [&](const std::string& name, const std::string& options,
                           const std::string& key, const std::string& message) {
    const Result r = run(dir / name, 0, "automodel_fsdp", options);
    EXPECT_EQ(r.code, 2) << name << "\n" << tail(r.log);
    EXPECT_NE(r.log.find("config error at /parallelism/automodel_fsdp/" + key + " "),
              std::string::npos)
        << name << "\n"
        << tail(r.log);
    EXPECT_NE(r.log.find(message), std::string::npos) << name << "\n" << tail(r.log);
    EXPECT_FALSE(fs::exists(dir / name / "metrics.jsonl")) << name;
  };
  const std::string every_k = "--set 'parallelism.automodel_fsdp.recompute=\"every_k\"'";
  refused("no-k", every_k, "recompute_every", "needed with recompute \"every_k\"");
  refused("k-alone", "--set parallelism.automodel_fsdp.recompute_every=2", "recompute_every",
          "applies only with recompute \"every_k\" (recompute is \"all\")");
  refused("k0", every_k + " --set parallelism.automodel_fsdp.recompute_every=0", "recompute_every",
          "below the minimum 1");
  refused("unknown", "--set 'parallelism.automodel_fsdp.recompute=\"some\"'", "recompute",
          "is not one of");
}

TEST_F(Distributed, FsdpStopOnTwoRanksResumeOnThree) {
  const fs::path out = scratch() / "run";
  Result a = run(out, 2, "automodel_fsdp", "--stop-after-steps 8");
  ASSERT_EQ(a.code, 0) << tail(a.log);
  ASSERT_TRUE(fs::exists(out / "checkpoints" / "step-8" / "state" / "fsdp_rank_00001.safetensors"));
  Result b = run(out, 3, "automodel_fsdp", "--resume");
  ASSERT_EQ(b.code, 0) << tail(b.log);
  EXPECT_NE(b.log.find("resharding the checkpoint from 2 to 3"), std::string::npos) << tail(b.log);
  expect_same_run(reference(), out, "stop at 8 on 2 ranks, resume on 3");
}

TEST_F(Distributed, ADeadRankEndsTheJob) {
  const fs::path out = scratch() / "run";
  Result r = run(out, 2, "automodel_fsdp", "--set run.comm_timeout_s=30",
                 {"WANHOST_FAULT=step.before_optimizer:3", "WANHOST_FAULT_RANK=1"}, 120);
  EXPECT_NE(r.code, 0);
  EXPECT_LT(r.seconds, 60) << "the surviving rank did not stop in time";
  // mpirun reports which rank died and how.
  EXPECT_TRUE(r.log.find("signal 9") != std::string::npos ||
              r.log.find("Killed") != std::string::npos)
      << tail(r.log);
}

TEST_F(Distributed, AHungRankEndsEveryRankWithTheOperationNamed) {
  const fs::path out = scratch() / "run";
  Result r = run(out, 2, "automodel_fsdp", "--set run.comm_timeout_s=5",
                 {"WANHOST_FAULT=step.hang:3", "WANHOST_FAULT_RANK=1"}, 120);
  EXPECT_NE(r.code, 0);
  EXPECT_LT(r.seconds, 60) << "the job did not end after the collective timed out";
  EXPECT_NE(r.log.find("did not complete within 5 s"), std::string::npos) << tail(r.log);
  EXPECT_NE(r.log.find("all_reduce"), std::string::npos) << tail(r.log);
}

TEST_F(Distributed, CpuRanksWithoutMpirunAreRefusedClearly) {
  const fs::path out = scratch() / "run";
  Result r = run(
      out, 0, "automodel_fsdp", "",
      {"RANK=0", "WORLD_SIZE=2", "LOCAL_RANK=0", "MASTER_ADDR=127.0.0.1", "MASTER_PORT=29511"}, 60);
  EXPECT_EQ(r.code, 2) << tail(r.log);
  EXPECT_NE(r.log.find("mpirun -np 2"), std::string::npos) << tail(r.log);
}

// run.randomness: by default the ranks draw disjoint keys (each sample its stream position);
// shared_across_data_parallel gives every rank the same keys, as the reference Megatron path's
// seeding does. Keys come from fx_key_recorder (tests/train), one line per micro batch and rank:
// "<global step>: <keys>". One step a stage, 6 samples a rank in micro batches of 2.
TEST_F(Distributed, SharedRandomnessGivesEveryRankTheSameKeys) {
  const fs::path dir = scratch();
  const auto lines_of = [](const fs::path& f) {
    std::ifstream in(f);
    std::vector<std::string> lines;
    for (std::string l; std::getline(in, l);) lines.push_back(l);
    std::sort(lines.begin(), lines.end());
    return lines;
  };
  const auto expected = [](bool shared) {
    std::vector<std::string> lines;
    for (int step : {0, 1})
      for (int rank : {0, 1})
        for (int j = 0; j < 6; j += 2) {
          const int k = shared ? j : rank * 6 + j;
          lines.push_back(std::to_string(step) + ": " + std::to_string(k) + " " +
                          std::to_string(k + 1));
        }
    std::sort(lines.begin(), lines.end());
    return lines;
  };
  for (const bool shared : {false, true}) {
    SCOPED_TRACE(shared ? "shared_across_data_parallel" : "per_sample");
    const fs::path keys = dir / (shared ? "shared.txt" : "own.txt");
    const Result r = run(
        dir / (shared ? "shared" : "own"), 2, "ddp,fx_key_recorder",
        std::string("--set stages.0.steps=1 --set stages.1.steps=1 --set "
                    "run.randomness=") +
            (shared ? "shared_across_data_parallel" : "per_sample"),
        {"WANHOST_PLUGIN_PATH=" WANHOST_KEY_RECORDER_DIR, "WANHOST_TEST_KEYS=" + keys.string()});
    ASSERT_EQ(r.code, 0) << tail(r.log);
    EXPECT_EQ(lines_of(keys), expected(shared));
  }
}

}  // namespace

// --- megatron_tpppcp: each layout reproduces the single-process run on the same batches ---

namespace {

// "--set parallelism.megatron_tpppcp.KEY=VALUE" for each pair.
std::string megatron(const std::vector<std::pair<std::string, std::string>>& options) {
  std::string s;
  for (const auto& [k, v] : options) s += " --set parallelism.megatron_tpppcp." + k + "=" + v;
  return s;
}

// The bytes of parameters + gradients + AdamW state a megatron_tpppcp rank holds, worked out from
// the exported weights: tensor-parallel layers (q/k/v and the first FFN layer split by rows, the
// attention output and the second FFN layer by columns) hold 1/tp, the blocks of other stages
// nothing; 16 bytes a float32 value (value, gradient, two moments), or with the distributed
// optimizer over n ranks 8 bytes (value, gradient) plus 12 (the shard's gradient and two
// moments; its values are the parameter's own) per element of this rank's share of each
// parameter: elements [r x ceil(N/n), (r+1) x ceil(N/n)) of the flattened N.
double megatron_expected_mib(const fs::path& run, int tp, std::int64_t first_block,
                             std::int64_t last_block, int dp_shards, int dp_rank) {
  const auto weights = wanhost::safetensors::File::open(
                           (run / "export/diffusion_pytorch_model.safetensors").string())
                           .load_all();
  const std::regex block(R"(^blocks\.([0-9]+)\.)");
  const std::regex split(R"((to_q|to_k|to_v|ffn\.net\.0\.proj|to_out\.0|ffn\.net\.2)\.weight$)");
  const std::regex split_bias(R"((to_q|to_k|to_v|ffn\.net\.0\.proj)\.bias$)");
  double bytes = 0;
  for (const auto& [name, t] : weights) {
    std::smatch m;
    if (std::regex_search(name, m, block)) {
      const long b = std::stol(m[1]);
      if (b < first_block || b >= last_block) continue;
    }
    std::int64_t n = t.numel();
    if (std::regex_search(name, split) || std::regex_search(name, split_bias)) n /= tp;
    if (dp_shards <= 1) {
      bytes += 16.0 * static_cast<double>(n);
    } else {
      const std::int64_t chunk = (n + dp_shards - 1) / dp_shards;
      const std::int64_t lo = std::min(n, dp_rank * chunk), hi = std::min(n, lo + chunk);
      bytes += 8.0 * static_cast<double>(n) + 12.0 * static_cast<double>(hi - lo);
    }
  }
  return bytes / (1024.0 * 1024.0);
}

void expect_megatron_memory(const fs::path& run, int np, int tp, int pp,
                            const std::vector<std::pair<std::int64_t, std::int64_t>>& stages,
                            int dp_shards) {
  for (int rank = 0; rank < np; ++rank) {
    const int stage = rank / (np / pp);  // Megatron order: pp is the slowest dimension
    const double got = state_mib(run, rank);
    const int dp_rank = (rank / tp) % std::max(1, np / (tp * pp));  // tp fastest, then dp
    const double want = megatron_expected_mib(run, tp, stages[stage].first, stages[stage].second,
                                              dp_shards, dp_rank);
    std::printf(
        "[ figures ] megatron_tpppcp np=%d tp=%d pp=%d dp shards=%d: rank %d holds %.3f "
        "MiB (expected %.3f)\n",
        np, tp, pp, dp_shards, rank, got, want);
    EXPECT_NEAR(got, want, 0.002) << "rank " << rank;
  }
}

}  // namespace

TEST_F(Distributed, MegatronOnOneProcessReproducesTheSingleProcessRun) {
  const fs::path out = scratch() / "megatron-1";
  Result r = run(out, 0, "megatron_tpppcp");
  ASSERT_EQ(r.code, 0) << tail(r.log);
  expect_same_run(reference(), out, "megatron_tpppcp tp=pp=cp=dp=1");
  EXPECT_NEAR(state_mib(out, 0), state_mib(reference(), 0), 0.001);
}

// tp=2 with sequence parallelism (the default) and without it.
TEST_F(Distributed, MegatronTensorParallelTwoRanks) {
  const fs::path dir = scratch();
  Result r = run(dir / "tp2", 2, "megatron_tpppcp", megatron({{"tp", "2"}}));
  ASSERT_EQ(r.code, 0) << tail(r.log);
  EXPECT_NE(r.log.find("sequence parallelism on"), std::string::npos) << tail(r.log);
  expect_same_run(reference(), dir / "tp2", "megatron_tpppcp tp=2, sequence parallel");
  expect_megatron_memory(dir / "tp2", 2, 2, 1, {{0, 2}}, 1);
  r = run(dir / "tp2-nosp", 2, "megatron_tpppcp",
          megatron({{"tp", "2"}, {"sequence_parallel", "false"}}));
  ASSERT_EQ(r.code, 0) << tail(r.log);
  EXPECT_NE(r.log.find("no sequence parallelism"), std::string::npos) << tail(r.log);
  expect_same_run(reference(), dir / "tp2-nosp", "megatron_tpppcp tp=2, no sequence parallel");
}

// run.fp8 on megatron's tensor-parallel layers (each rank quantises its own weight shard with its
// own scale, so not the single process's FP8 numbers): the log says FP8 is on, the products are
// really quantised (some loss differs from tp=2 without FP8, which is the single process's run
// within 1e-5), and each loss is within 5 % of the single process with FP8.
TEST_F(Distributed, MegatronTensorParallelWithFp8) {
  const fs::path dir = scratch();
  const std::string fp8 = " --set 'run.fp8=\"tensorwise\"'";
  Result r = run(dir / "single-fp8", 0, "ddp", fp8);
  ASSERT_EQ(r.code, 0) << tail(r.log);
  r = run(dir / "tp2-fp8", 2, "megatron_tpppcp", megatron({{"tp", "2"}}) + fp8);
  ASSERT_EQ(r.code, 0) << tail(r.log);
  EXPECT_NE(r.log.find("FP8 block linear layers (tensorwise)"), std::string::npos) << tail(r.log);
  expect_same_values(losses(dir / "single-fp8"), losses(dir / "tp2-fp8"),
                     "megatron_tpppcp tp=2 with FP8 vs one process with FP8", 0.05);
  const auto exact = losses(reference()), quantised = losses(dir / "tp2-fp8");
  ASSERT_EQ(exact.size(), quantised.size());
  double worst = 0;
  for (std::size_t i = 0; i < exact.size(); ++i)
    worst = std::max(worst, std::abs(exact[i] - quantised[i]) / std::abs(exact[i]));
  EXPECT_GT(worst, 1e-5) << "tp=2 with FP8 gave the full-precision losses: FP8 not applied";
}

TEST_F(Distributed, MegatronPipelineTwoStages) {
  const fs::path out = scratch() / "pp2";
  Result r = run(out, 2, "megatron_tpppcp", megatron({{"pp", "2"}}));
  ASSERT_EQ(r.code, 0) << tail(r.log);
  expect_same_run(reference(), out, "megatron_tpppcp pp=2");
  expect_megatron_memory(out, 2, 1, 2, {{0, 1}, {1, 2}}, 1);
}

// Four blocks over three stages of 2, 1 and 1 blocks.
TEST_F(Distributed, MegatronPipelineThreeUnevenStages) {
  const fs::path dir = scratch();
  const std::string four_blocks = " --set model.wan21_dit.overrides.num_layers=4";
  Result r = run(dir / "single", 0, "ddp", four_blocks);
  ASSERT_EQ(r.code, 0) << tail(r.log);
  r = run(dir / "pp3", 3, "megatron_tpppcp",
          four_blocks + megatron({{"pp", "3"}, {"pipeline_layers", "[2,1,1]"}}));
  ASSERT_EQ(r.code, 0) << tail(r.log);
  expect_same_run(dir / "single", dir / "pp3", "megatron_tpppcp pp=3 (2, 1, 1 blocks)");
  expect_megatron_memory(dir / "pp3", 3, 1, 3, {{0, 2}, {2, 3}, {3, 4}}, 1);
}

TEST_F(Distributed, MegatronTensorTimesPipeline) {
  const fs::path out = scratch() / "tp2pp2";
  Result r = run(out, 4, "megatron_tpppcp", megatron({{"tp", "2"}, {"pp", "2"}}), {}, 400);
  ASSERT_EQ(r.code, 0) << tail(r.log);
  expect_same_run(reference(), out, "megatron_tpppcp tp=2 x pp=2");
  expect_megatron_memory(out, 4, 2, 2, {{0, 1}, {1, 2}}, 1);
}

// dp=2 x tp=2 with the distributed optimizer, and the same layout with the optimizer state
// replicated: the same run; the sharded state is smaller by the expected amount (14 bytes a
// value instead of 16 at dp=2, 8 + 12/dp in general).
TEST_F(Distributed, MegatronDataTimesTensorWithTheDistributedOptimizer) {
  const fs::path dir = scratch();
  Result r = run(dir / "distopt", 4, "megatron_tpppcp", megatron({{"tp", "2"}}), {}, 400);
  ASSERT_EQ(r.code, 0) << tail(r.log);
  EXPECT_NE(r.log.find("tp=2 cp=1 dp=2 pp=1"), std::string::npos) << tail(r.log);
  expect_same_run(reference(), dir / "distopt",
                  "megatron_tpppcp dp=2 x tp=2, distributed optimizer");
  expect_megatron_memory(dir / "distopt", 4, 2, 1, {{0, 2}}, 2);
  r = run(dir / "replicated", 4, "megatron_tpppcp",
          megatron({{"tp", "2"}, {"distributed_optimizer", "false"}}), {}, 400);
  ASSERT_EQ(r.code, 0) << tail(r.log);
  expect_same_run(reference(), dir / "replicated", "megatron_tpppcp dp=2 x tp=2, replicated state");
  expect_megatron_memory(dir / "replicated", 4, 2, 1, {{0, 2}}, 1);
  for (int rank = 0; rank < 4; ++rank)
    EXPECT_LT(state_mib(dir / "distopt", rank), 0.9 * state_mib(dir / "replicated", rank));
}

// Context parallelism on packs of mixed sizes: latents of 6 x 10 cells give 15 tokens a frame, so
// the model pads every sample to a multiple of 2 x cp = 4 and the load-balanced chunks hold
// padding; stage 2 packs clips of 1 to 5 frames. cp=2 and
// tp=2 x cp=2 reproduce the single process on the same samples (the packs may group them
// differently, since the token budget counts padding: the loss is a mean over samples).
TEST_F(Distributed, MegatronContextParallelOnPacksOfMixedSizes) {
  const fs::path dir = scratch();
  const std::string packing =
      "--set 'collator.plugin=\"seq_packer\"' --set 'collator.seq_packer.max_tokens=96' "
      "--set data.synthetic.height=6 --set data.synthetic.width=10 "
      "--set 'stages.1.data.synthetic.min_latent_frames=1'";
  Result r = run(dir / "single", 0, "ddp", packing);
  ASSERT_EQ(r.code, 0) << tail(r.log);
  r = run(dir / "cp2", 2, "megatron_tpppcp", packing + megatron({{"cp", "2"}}));
  ASSERT_EQ(r.code, 0) << tail(r.log);
  expect_same_run(dir / "single", dir / "cp2", "megatron_tpppcp cp=2, mixed packs");
  EXPECT_EQ(metric(dir / "single", "tokens"), metric(dir / "cp2", "tokens"));
  const auto efficiency = metric(dir / "cp2", "pack_efficiency");
  EXPECT_LT(*std::min_element(efficiency.begin(), efficiency.end()), 1.0)
      << "no padding: the test does not test the split of padded samples";
  r = run(dir / "tp2cp2", 4, "megatron_tpppcp", packing + megatron({{"tp", "2"}, {"cp", "2"}}), {},
          400);
  ASSERT_EQ(r.code, 0) << tail(r.log);
  expect_same_run(dir / "single", dir / "tp2cp2", "megatron_tpppcp tp=2 x cp=2, mixed packs");
  // Dense micro batches cannot be split: a configuration error naming the collator.
  r = run(dir / "dense", 2, "megatron_tpppcp", megatron({{"cp", "2"}}));
  EXPECT_EQ(r.code, 2) << tail(r.log);
  EXPECT_NE(r.log.find("/collator/plugin"), std::string::npos) << tail(r.log);
}

// A checkpoint of one layout resumes in another: dp=2 x tp=2 with the distributed optimizer stops
// at step 8 (tensor-parallel files, moments gathered from the shards), pp=2 goes on from it.
TEST_F(Distributed, MegatronStopInOneLayoutResumeInAnother) {
  const fs::path out = scratch() / "run";
  Result a =
      run(out, 4, "megatron_tpppcp", megatron({{"tp", "2"}}) + " --stop-after-steps 8", {}, 400);
  ASSERT_EQ(a.code, 0) << tail(a.log);
  const fs::path state = out / "checkpoints" / "step-8" / "state";
  ASSERT_TRUE(fs::exists(state / "megatron.json"));
  ASSERT_TRUE(fs::exists(state / "megatron_tp001_pp000.safetensors"));
  Result b = run(out, 2, "megatron_tpppcp", megatron({{"pp", "2"}}) + " --resume");
  ASSERT_EQ(b.code, 0) << tail(b.log);
  EXPECT_NE(
      b.log.find(
          "resharding the checkpoint from megatron_tpppcp tp=2 pp=1 dp=2 to tp=1 cp=1 dp=1 pp=2"),
      std::string::npos)
      << tail(b.log);
  expect_same_run(reference(), out, "megatron_tpppcp stop at 8 with dp=2 x tp=2, resume with pp=2");
}

// Another path resumes a checkpoint (the kit's WholeState reads every built-in format): ddp
// stops at step 8 and megatron_tpppcp (tp=2) goes on; megatron_tpppcp (pp=2) stops and
// automodel_fsdp on 2 ranks goes on. Both reproduce the single process.
TEST_F(Distributed, PathsResumeEachOthersCheckpoints) {
  const fs::path dir = scratch();
  Result a = run(dir / "ddp-then-megatron", 0, "ddp", "--stop-after-steps 8");
  ASSERT_EQ(a.code, 0) << tail(a.log);
  Result b =
      run(dir / "ddp-then-megatron", 2, "megatron_tpppcp", megatron({{"tp", "2"}}) + " --resume");
  ASSERT_EQ(b.code, 0) << tail(b.log);
  EXPECT_NE(b.log.find("resharding the checkpoint from ddp to tp=2"), std::string::npos)
      << tail(b.log);
  expect_same_run(reference(), dir / "ddp-then-megatron", "ddp to step 8, then megatron tp=2");

  a = run(dir / "megatron-then-fsdp", 2, "megatron_tpppcp",
          megatron({{"pp", "2"}}) + " --stop-after-steps 8");
  ASSERT_EQ(a.code, 0) << tail(a.log);
  b = run(dir / "megatron-then-fsdp", 2, "automodel_fsdp", "--resume");
  ASSERT_EQ(b.code, 0) << tail(b.log);
  EXPECT_NE(b.log.find("loading the checkpoint of megatron_tpppcp tp=1 pp=2 dp=1"),
            std::string::npos)
      << tail(b.log);
  expect_same_run(reference(), dir / "megatron-then-fsdp",
                  "megatron pp=2 to step 8, then automodel_fsdp on 2 ranks");
}

// Degrees that do not fit are configuration errors naming the numbers, before any step.
TEST_F(Distributed, MegatronDegreesThatDoNotFitAreRefused) {
  const fs::path dir = scratch();
  Result r = run(dir / "tp3", 3, "megatron_tpppcp", megatron({{"tp", "3"}}));
  EXPECT_EQ(r.code, 2) << tail(r.log);
  EXPECT_NE(r.log.find("attention heads (2) and the FFN width (256) to be multiples of 3"),
            std::string::npos)
      << tail(r.log);
  r = run(dir / "pp2of3", 3, "megatron_tpppcp", megatron({{"pp", "2"}}));
  EXPECT_EQ(r.code, 2) << tail(r.log);
  EXPECT_NE(r.log.find("tp x cp x pp = 1 x 1 x 2 = 2 does not divide the 3 process(es)"),
            std::string::npos)
      << tail(r.log);
  EXPECT_FALSE(fs::exists(dir / "pp2of3" / "metrics.jsonl"));
}
