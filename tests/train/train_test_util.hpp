// Helpers for the trainer tests: they drive the real `wanhost` program (fork/exec, exit codes,
// signals), read what a run leaves behind (metrics.jsonl, checkpoints, exported weights) and
// compare runs step by step.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace traintest {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using Env = std::vector<std::pair<std::string, std::string>>;

// A fresh, empty folder for the running test: $WANHOST_TEST_TMP/<Suite>.<Test>.
fs::path scratch_dir();

// The tiny, fast run every CLI test starts from (two stages, 12 + 8 steps, a checkpoint every 4
// steps, 20 samples a stage so the sample order wraps into new epochs, one CPU thread), as
// `--set` arguments. Stage 1 warms up linearly (the default recipe's 10 steps), stage 2 runs a
// cosine schedule, so the LR differs from step to step in both.
std::vector<std::string> tiny_settings();
inline constexpr long kStage1Steps = 12, kStage2Steps = 8, kTotalSteps = 20, kEvery = 4;

// `run --out <out> <tiny settings> <extra...>`
std::vector<std::string> run_args(const fs::path& out, const std::vector<std::string>& extra = {});

// Every checkpoint of a run stays, so checkpoints of two runs can be compared step by step.
inline const std::vector<std::string> kKeepAll = {"--set", "checkpoint.keep_last=100"};
// `a` followed by `b`.
inline std::vector<std::string> with(std::vector<std::string> a,
                                     const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
// The folder name of the checkpoint of global step `s`.
inline std::string step(long s) {
  return "step-" + std::to_string(s);
}

struct Result {
  int code = -1;  // exit status; 128 + signal when a signal ended it; 124 when it timed out
  std::string out, err;
  double seconds = 0;
  std::string describe() const;  // exit code and the tail of stderr, for failure messages
};

// Runs `wanhost args...` to completion, with this process's environment minus WANHOST_FAULT and
// WANHOST_PLUGIN_PATH, plus `env`. stdout/stderr go to files beside `log_dir` (default: the
// test's scratch folder).
Result run_cli(const std::vector<std::string>& args, const Env& env = {}, int timeout_s = 300);

// A `wanhost` process running in the background (killed and reaped on destruction).
class Process {
 public:
  Process(const std::vector<std::string>& args, const Env& env = {});
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  pid_t pid() const { return pid_; }
  bool running();  // false once it has exited (and then result() is ready)
  void signal(int sig);
  Result wait(int timeout_s = 300);

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
  fs::path out_, err_;
  double started_ = 0;
};

// A straight run with `run_args(<cache>, extra)`, done once and cached for every test of the
// build (keyed by the arguments and the state of the wanhost binaries; safe under ctest -j).
// Returns its run folder.
fs::path reference_run(const std::vector<std::string>& extra = {});

std::string read_file(const fs::path& path);
void write_file(const fs::path& path, const std::string& content);

// The records of <run>/metrics.jsonl, in file order.
std::vector<Json> read_metrics(const fs::path& run);
// gtest expectations: both hold the same steps 1..n, each exactly once and in order, with equal
// loss, lr, grad_norm (exact double equality of the JSON numbers), stage and stage_step.
void expect_same_steps(const std::vector<Json>& expected, const std::vector<Json>& actual,
                       const std::string& what);

// Names of the step-N folders in <run>/checkpoints, by step; and what LATEST says.
std::vector<std::string> checkpoint_names(const fs::path& run);
std::string latest(const fs::path& run);
// CheckpointStore::verify.
bool verify_checkpoint(const fs::path& dir, std::string* why = nullptr);
// Names in <run>/checkpoints starting with ".tmp-".
std::vector<std::string> temporaries(const fs::path& run);

// Every tensor of the two safetensors files is equal (names, dtypes, shapes, values).
void expect_same_tensors(const fs::path& a, const fs::path& b, const std::string& what);
// The exported weights of two runs are byte-identical (and load as equal tensors).
void expect_same_export(const fs::path& run_a, const fs::path& run_b);

// Every file and folder below `dir`: relative path -> size, checksum and modification time.
std::map<std::string, std::string> snapshot(const fs::path& dir);

// Copies a run folder (to damage the copy).
void copy_run(const fs::path& from, const fs::path& to);
// Removes a file or a folder tree; a missing path is fine. (Not std::filesystem::remove_all: the
// LibTorch wheel exports its own copy of it, which can crash programs linking LibTorch.)
void remove_tree(const fs::path& path);

// The number of times `needle` occurs in `text`.
std::size_t count(const std::string& text, const std::string& needle);

}  // namespace traintest
