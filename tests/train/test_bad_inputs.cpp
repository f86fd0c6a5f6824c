// Bad input through the real CLI (issue 18): each ends in a clear error with the right exit code
// (2: a flag or setting to change; 1: a file that cannot be used), never in a hang, a crash or a
// LibTorch stack trace; and a SIGTERM while a run is still being built stops it cleanly.
#include <sys/stat.h>

#include <csignal>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "train_test_util.hpp"
#include "wanhost/kit/safetensors.hpp"

namespace traintest {
namespace {

// Expects `code` and every fragment on stderr, and no C++ stack trace.
void expect_error(const Result& r, int code, const std::vector<std::string>& fragments) {
  EXPECT_EQ(r.code, code) << r.describe();
  for (const auto& f : fragments)
    EXPECT_NE(r.err.find(f), std::string::npos) << f << "\n" << r.describe();
  EXPECT_EQ(r.err.find("Exception raised from"), std::string::npos) << r.describe();
  EXPECT_EQ(r.err.find("frame #"), std::string::npos) << r.describe();
  EXPECT_EQ(r.err.find("[json.exception"), std::string::npos) << r.describe();
}

// `prepare` and `data` exist only in builds with the FFmpeg libraries (the GPU machine's build
// lacks them).
bool built_without_ffmpeg(const Result& r) {
  return r.code == 2 && r.err.find("built without the FFmpeg libraries") != std::string::npos;
}

fs::path make_fifo(const fs::path& path) {
  fs::create_directories(path.parent_path());
  EXPECT_EQ(::mkfifo(path.c_str(), 0644), 0) << path;
  return path;
}

TEST(BadValues, NumbersOutOfRange) {
  expect_error(run_cli({"validate", "--set", "stages.0.optimizer.lr=1e400"}), 2,
               {"--set stages.0.optimizer.lr=1e400: 1e400 is out of range"});
  // A sample's stream position (stage step x global batch) must fit in 64 bits.
  expect_error(run_cli({"validate", "--set", "stages.0.steps=4611686018427387904"}), 2,
               {"config error at /stages/0/steps", "are more samples than a 64-bit count holds"});
}

// Model sizes whose products overflow (undefined behaviour) or that no machine can hold are config
// errors naming the key, not allocator failures inside LibTorch. (`run`, not `validate`: validate
// does not build the model, which for the 14B preset would allocate its weights.)
TEST(BadValues, ModelSizesThatOverflow) {
  const fs::path dir = scratch_dir();
  expect_error(run_cli(run_args(dir / "a", {"--set",
                                            "model.wan21_dit.overrides={\"num_attention_heads\": "
                                            "4611686018427387904}"})),
               2, {"/model/wan21_dit/overrides/num_attention_heads", "is more than the"});
  expect_error(
      run_cli(run_args(dir / "b",
                       {"--set", "model.wan21_dit.overrides={\"ffn_dim\": 1000000000000000}"})),
      2,
      {"/model/wan21_dit/overrides/ffn_dim",
       "an FFN layer (width x ffn_dim) = 64 x "
       "1000000000000000 is more than the 68719476736"});
}

// FIFOs (and other non-regular files) where a JSON file is expected are refused at once: a model
// config, a run manifest, a dataset index. (Issue 18: these blocked forever.)
TEST(BadFiles, FifosAreRefusedNotWaitedOn) {
  const fs::path dir = scratch_dir();
  const fs::path config = make_fifo(dir / "model" / "config.json");
  // (`run`: `validate` does not build the model.)
  expect_error(run_cli(run_args(dir / "run", {"--set", "model.wan21_dit.config_file=\"" +
                                                           config.string() + "\""}),
                       {}, 60),
               2, {"/model/wan21_dit/config_file", config.string() + ": is a FIFO (named pipe)"});

  const fs::path manifest = make_fifo(dir / "manifest.json");
  expect_error(run_cli({"validate", manifest.string()}, {}, 60), 2,
               {"manifest " + manifest.string() + ": is a FIFO (named pipe)"});

  const fs::path index = make_fifo(dir / "dataset" / "index.json");
  const Result r = run_cli({"validate", "--plugins", "latent_dataset", "--set",
                            "data.latent_dataset.path=\"" + index.parent_path().string() + "\""},
                           {}, 60);
  EXPECT_NE(r.code, 0) << r.describe();
  EXPECT_NE(r.code, 124) << "timed out: the FIFO was opened";
  EXPECT_NE(r.err.find(index.string() + ": is a FIFO (named pipe)"), std::string::npos)
      << r.describe();
  const Result inspect = run_cli({"data", "inspect", index.parent_path().string()}, {}, 60);
  if (!built_without_ffmpeg(inspect))
    expect_error(inspect, 1, {index.string() + ": is a FIFO (named pipe)"});
}

// `data inspect` opens every shard: a missing shard or a tensor the index names that its shard
// lacks is listed and the command fails (exit 1); a malformed index names the JSON pointer.
TEST(BadFiles, DataInspectChecksTheShards) {
  const fs::path dir = scratch_dir() / "dataset";
  fs::create_directories(dir);
  wanhost::safetensors::save(
      (dir / "shard-00000.safetensors").string(),
      {{"latent.0", at::zeros({16, 1, 2, 2})}, {"text.0", at::zeros({3, 8})}}, {});
  Json index = {
      {"format", "wanhost-latents"},
      {"version", 1},
      {"mode", "frames"},
      {"videos", 2},
      {"latent_channels", 16},
      {"text_dim", 8},
      {"settings", Json::object()},
      {"shards", {{{"file", "shard-00000.safetensors"}}, {{"file", "shard-00001.safetensors"}}}},
      {"samples", Json::array()}};
  const auto sample = [](int shard, const std::string& latent, const std::string& text) {
    return Json{{"shard", shard},     {"latent", latent}, {"text", text},
                {"caption", "a cat"}, {"text_tokens", 3}, {"latent_shape", {16, 1, 2, 2}}};
  };
  index["samples"] = {sample(0, "latent.0", "text.0"), sample(0, "latent.1", "text.0"),
                      sample(1, "latent.0", "text.0")};
  write_file(dir / "index.json", index.dump(2));
  Result r = run_cli({"data", "inspect", dir.string()});
  if (built_without_ffmpeg(r)) GTEST_SKIP() << "`data` needs a build with the FFmpeg libraries";
  expect_error(r, 1, {"2 problem(s) with its shards"});
  for (const std::string& p : {(dir / "shard-00001.safetensors").string() + ": missing",
                               (dir / "shard-00000.safetensors").string() +
                                   ": has no tensor 'latent.1' (index.json /samples/1/latent)"})
    EXPECT_NE(r.out.find(p), std::string::npos) << p << "\n" << r.out;

  index["samples"] = 5;
  write_file(dir / "index.json", index.dump(2));
  expect_error(run_cli({"data", "inspect", dir.string()}), 1,
               {(dir / "index.json").string() + ", /samples: expected an array"});
  write_file(dir / "index.json", "{\"format\": \"wanhost-latents\", \"samples\": [1e400]}");
  expect_error(run_cli({"data", "inspect", dir.string()}), 1,
               {(dir / "index.json").string() + ": invalid JSON: number overflow"});
}

// The SIGTERM handler is installed before the plugins load: a SIGTERM that arrives while the run
// is still being built stops it with exit 75 before any step (the default action would end it
// with 143). The test sends the signal as soon as /proc shows the handler.
bool catches_sigterm(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("SigCgt:", 0) == 0)
      return (std::stoull(line.substr(7), nullptr, 16) >> (SIGTERM - 1)) & 1;
  return false;
}

TEST(Sigterm, WhileTheRunIsBuiltStopsBeforeTheFirstStep) {
  const fs::path run = scratch_dir() / "run";
  Process p(run_args(run, {}));
  while (p.running() && !catches_sigterm(p.pid()))
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  ASSERT_TRUE(p.running()) << p.wait().describe();
  p.signal(SIGTERM);
  const Result r = p.wait();
  EXPECT_EQ(r.code, 75) << r.describe();
  EXPECT_NE(r.err.find("SIGTERM before the first step"), std::string::npos) << r.describe();
  EXPECT_FALSE(fs::exists(run / "metrics.jsonl") && !read_metrics(run).empty());
}

}  // namespace
}  // namespace traintest
