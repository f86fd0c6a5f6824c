#include "train_test_util.hpp"

#include <fcntl.h>
#include <ftw.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/ATen.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>

#include "train/checkpoint.hpp"
#include "util/files.hpp"
#include "wanhost/kit/safetensors.hpp"

extern char** environ;

namespace traintest {
namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::uint64_t fnv1a(const std::string& s, std::uint64_t h = 0xcbf29ce484222325ull) {
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

std::string hex(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// fork + exec of the wanhost program with stdout/stderr in files; returns the child's pid.
pid_t spawn(const std::vector<std::string>& args, const Env& env, const fs::path& out,
            const fs::path& err) {
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) {
    const std::string kv(*e);
    if (kv.rfind("WANHOST_FAULT=", 0) == 0 || kv.rfind("WANHOST_PLUGIN_PATH=", 0) == 0) continue;
    envs.push_back(kv);
  }
  for (const auto& [k, v] : env) envs.push_back(k + "=" + v);
  std::vector<std::string> argv_s{WANHOST_CLI};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv, envp;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : envs) envp.push_back(e.data());
  envp.push_back(nullptr);

  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (o < 0 || e < 0) ::_exit(126);
    ::dup2(o, 1);
    ::dup2(e, 2);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  return pid;
}

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

std::pair<fs::path, fs::path> log_files(const fs::path& dir) {
  static int counter = 0;
  const std::string tag = "cli-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
  return {dir / (tag + ".out"), dir / (tag + ".err")};
}

fs::path log_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  fs::path dir = fs::path(WANHOST_TEST_TMP) / "cli-logs";
  if (info) dir /= std::string(info->test_suite_name()) + "." + info->name();
  fs::create_directories(dir);
  return dir;
}

}  // namespace

fs::path scratch_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir =
      fs::path(WANHOST_TEST_TMP) / (std::string(info->test_suite_name()) + "." + info->name());
  remove_tree(dir);
  fs::create_directories(dir);
  remove_tree(log_dir());
  return dir;
}

std::vector<std::string> tiny_settings() {
  const std::vector<std::string> kv = {
      "stages.0.steps=" + std::to_string(kStage1Steps),
      "stages.1.steps=" + std::to_string(kStage2Steps),
      "stages.0.global_batch=4",
      "stages.0.micro_batch=2",
      "stages.1.global_batch=2",
      "stages.1.micro_batch=1",
      "stages.1.lr_schedule.type=\"cosine\"",
      "stages.1.lr_schedule.warmup_steps=2",
      "stages.1.lr_schedule.min_lr_factor=0.1",
      "data.synthetic.num_samples=20",
      "checkpoint.every_steps=" + std::to_string(kEvery),
      "logging.progress=\"off\"",
      "run.threads=1",
  };
  std::vector<std::string> args;
  for (const auto& s : kv) {
    args.push_back("--set");
    args.push_back(s);
  }
  return args;
}

std::vector<std::string> run_args(const fs::path& out, const std::vector<std::string>& extra) {
  std::vector<std::string> args{"run", "--out", out.string()};
  for (const auto& s : tiny_settings()) args.push_back(s);
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

std::string Result::describe() const {
  const std::size_t keep = 4000;
  return "exit code " + std::to_string(code) + " after " + std::to_string(seconds) + " s; stderr" +
         (err.size() > keep ? " (tail)" : "") + ":\n" +
         (err.size() > keep ? err.substr(err.size() - keep) : err);
}

Process::Process(const std::vector<std::string>& args, const Env& env) {
  std::tie(out_, err_) = log_files(log_dir());
  started_ = now();
  pid_ = spawn(args, env, out_, err_);
}

Process::~Process() {
  if (!reaped_ && pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status_, 0);
  }
}

bool Process::running() {
  if (reaped_) return false;
  const pid_t r = ::waitpid(pid_, &status_, WNOHANG);
  if (r == pid_) reaped_ = true;
  return !reaped_;
}

void Process::signal(int sig) {
  if (!reaped_) ::kill(pid_, sig);
}

Result Process::wait(int timeout_s) {
  Result r;
  const double deadline = now() + timeout_s;
  bool timed_out = false;
  while (running()) {
    if (now() > deadline) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status_, 0);
      reaped_ = true;
      timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  r.seconds = now() - started_;
  r.code = timed_out ? 124 : exit_code(status_);
  r.out = read_file(out_);
  r.err = read_file(err_);
  return r;
}

Result run_cli(const std::vector<std::string>& args, const Env& env, int timeout_s) {
  Process p(args, env);
  return p.wait(timeout_s);
}

fs::path reference_run(const std::vector<std::string>& extra) {
  // The key: the arguments and the size and time of every binary a run loads from this build.
  std::string key;
  for (const auto& a : run_args("", extra)) key += a + "\n";
  for (const char* sub : {"bin", "lib", "plugins"}) {
    const fs::path dir = fs::path(WANHOST_BINARY_DIR) / sub;
    std::vector<std::string> entries;
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string name = e.path().filename().string();
      if (!e.is_regular_file() || (sub == std::string("bin") && name != "wanhost") ||
          (sub != std::string("bin") && name.find(".so") == std::string::npos))
        continue;
      struct stat st {};
      ::stat(e.path().c_str(), &st);
      entries.push_back(name + ":" + std::to_string(st.st_size) + ":" +
                        std::to_string(st.st_mtim.tv_sec) + "." +
                        std::to_string(st.st_mtim.tv_nsec));
    }
    std::sort(entries.begin(), entries.end());
    for (const auto& e : entries) key += e + "\n";
  }
  const fs::path cache = fs::path(TRAIN_REFERENCE_CACHE);
  fs::create_directories(cache);
  const fs::path run = cache / hex(fnv1a(key));
  const fs::path done = run / "reference.complete";

  const int lock = ::open((cache / "lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock < 0) throw std::runtime_error("cannot open the reference lock");
  ::flock(lock, LOCK_EX);
  struct Unlock {
    int fd;
    ~Unlock() {
      ::flock(fd, LOCK_UN);
      ::close(fd);
    }
  } unlock{lock};
  if (fs::exists(done)) return run;
  remove_tree(run);
  const Result r = run_cli(run_args(run, extra));
  if (r.code != 0) throw std::runtime_error("the reference run failed: " + r.describe());
  write_file(run / "arguments.txt", key);
  write_file(done, "");
  return run;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const fs::path& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

std::vector<Json> read_metrics(const fs::path& run) {
  std::vector<Json> out;
  std::stringstream in(read_file(run / "metrics.jsonl"));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(Json::parse(line));
  return out;
}

void expect_same_steps(const std::vector<Json>& expected, const std::vector<Json>& actual,
                       const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_EQ(actual.size(), expected.size()) << "metrics.jsonl records";
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const Json& e = expected[i];
    const Json& a = actual[i];
    ASSERT_EQ(a.value("step", -1L), static_cast<long>(i + 1)) << "record " << i << ": " << a;
    EXPECT_EQ(a["stage"], e["stage"]) << "step " << i + 1;
    EXPECT_EQ(a["stage_step"], e["stage_step"]) << "step " << i + 1;
    for (const char* k : {"loss", "lr", "grad_norm"}) {
      ASSERT_TRUE(e[k].is_number() && a[k].is_number()) << k << " at step " << i + 1;
      // Exactly equal: the same binary64 value, so the same JSON number.
      EXPECT_EQ(a[k].get<double>(), e[k].get<double>()) << k << " at step " << i + 1;
      EXPECT_EQ(a[k].dump(), e[k].dump()) << k << " at step " << i + 1;
    }
  }
}

std::vector<std::string> checkpoint_names(const fs::path& run) {
  std::vector<std::pair<long, std::string>> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(run / "checkpoints", ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("step-", 0) == 0 && e.is_directory())
      found.emplace_back(std::stol(name.substr(5)), name);
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(f.second);
  return out;
}

std::string latest(const fs::path& run) {
  std::string s = read_file(run / "checkpoints" / "LATEST");
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

bool verify_checkpoint(const fs::path& dir, std::string* why) {
  return wanhost::core::CheckpointStore::verify(dir.string(), why);
}

std::vector<std::string> temporaries(const fs::path& run) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(run / "checkpoints", ec))
    if (e.path().filename().string().rfind(".tmp-", 0) == 0)
      out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

void expect_same_tensors(const fs::path& a, const fs::path& b, const std::string& what) {
  SCOPED_TRACE(what);
  const auto fa = wanhost::safetensors::File::open(a.string());
  const auto fb = wanhost::safetensors::File::open(b.string());
  const auto ta = fa.load_all(), tb = fb.load_all();
  ASSERT_EQ(ta.size(), tb.size());
  ASSERT_FALSE(ta.empty());
  for (const auto& [name, t] : ta) {
    auto it = tb.find(name);
    ASSERT_NE(it, tb.end()) << name;
    EXPECT_EQ(t.scalar_type(), it->second.scalar_type()) << name;
    EXPECT_EQ(t.sizes(), it->second.sizes()) << name;
    EXPECT_TRUE(at::equal(t, it->second)) << name << " differs";
  }
}

void expect_same_export(const fs::path& run_a, const fs::path& run_b) {
  const fs::path rel = fs::path("export") / "diffusion_pytorch_model.safetensors";
  ASSERT_TRUE(fs::exists(run_a / rel)) << run_a / rel;
  ASSERT_TRUE(fs::exists(run_b / rel)) << run_b / rel;
  expect_same_tensors(run_a / rel, run_b / rel, "exported weights");
  EXPECT_TRUE(read_file(run_a / rel) == read_file(run_b / rel))
      << "the exported safetensors files are not byte-identical";
}

std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    struct stat st {};
    ::lstat(e.path().c_str(), &st);
    std::string v = std::to_string(st.st_mode) + " " + std::to_string(st.st_mtim.tv_sec) + "." +
                    std::to_string(st.st_mtim.tv_nsec);
    if (e.is_regular_file())
      v += " " + std::to_string(st.st_size) + " " + hex(fnv1a(read_file(e.path())));
    out[fs::relative(e.path(), dir).string()] = v;
  }
  return out;
}

void copy_run(const fs::path& from, const fs::path& to) {
  remove_tree(to);
  fs::copy(from, to, fs::copy_options::recursive);
}

void remove_tree(const fs::path& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;
  if (!S_ISDIR(st.st_mode)) {
    ::unlink(path.c_str());
    return;
  }
  auto visit = [](const char* p, const struct stat*, int type, struct FTW*) -> int {
    return (type == FTW_DP ? ::rmdir(p) : ::unlink(p)) == 0 || errno == ENOENT ? 0 : -1;
  };
  if (::nftw(path.c_str(), visit, 16, FTW_DEPTH | FTW_PHYS) != 0)
    throw std::runtime_error("cannot remove " + path.string() + ": " + std::strerror(errno));
}

std::size_t count(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (std::size_t pos = text.find(needle); pos != std::string::npos;
       pos = text.find(needle, pos + needle.size()))
    ++n;
  return n;
}

}  // namespace traintest
