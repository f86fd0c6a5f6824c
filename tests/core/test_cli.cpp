// The `wanhost` program from outside: exit codes (0 ok, 2 usage/config, 3 plugin refused),
// messages on stderr, `plugins list/inspect --json`, the plugin search path, and `validate` /
// `run --print-config`.
//
// Most tests run a copy of the program placed in <scratch>/host/bin/, so that its built-in plugin
// folder is <scratch>/host/plugins/ (filled with the config stand-ins) and not the build's own
// plugins, which other work may or may not have built. The environment is emptied for each run
// (no WANHOST_PLUGIN_PATH, launcher or SPDLOG variables leak in from outside).
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core_test_util.hpp"
#include "wanhost/abi.hpp"

namespace {

using namespace coretest;
using Json = nlohmann::json;
using Env = std::vector<std::pair<std::string, std::string>>;

const std::string kHostMajor = std::to_string(WANHOST_SDK_ABI_MAJOR);
const std::string kNextMajor = std::to_string(WANHOST_SDK_ABI_MAJOR + 1);

// Every output of a command, for failure messages.
std::string shown(const CommandResult& r) {
  return "exit " + std::to_string(r.code) + "\n--- stdout\n" + r.out + "\n--- stderr\n" + r.err;
}

std::vector<std::string> names_of(const Json& list) {
  std::vector<std::string> names;
  for (const auto& p : list) names.push_back(p.at("name").get<std::string>());
  return names;
}

// A run manifest with one short stage and no data overrides, so that --plugins may choose any
// data source. Writes under `dir`.
std::string small_manifest(const fs::path& dir) {
  write_file(dir / "small.json", R"({
    "run": {"device": "cpu"},
    "stages": [{"name": "only", "steps": 1, "global_batch": 1, "micro_batch": 1}],
    "checkpoint": {"export_diffusers": false}
  })");
  return (dir / "small.json").string();
}

// The built-in default recipe as this build embedded it (core/CMakeLists.txt reads the same file).
const Json& recipe() {
  static const Json r =
      Json::parse(read_file(fs::path(WANHOST_SOURCE_DIR) / "configs/default.json"));
  return r;
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = scratch_dir();
    make_dir(dir_ / "host" / "bin");
    exe_ = dir_ / "host" / "bin" / "wanhost";
    // A hard link is enough (the program finds its plugin folder through the path it was started
    // by); a copy where links cannot be made.
    std::error_code ec;
    fs::create_hard_link(WANHOST_CLI, exe_, ec);
    if (ec) fs::copy_file(WANHOST_CLI, exe_);
    builtin_ = dir_ / "host" / "plugins";
    stage_config_plugins(builtin_, recipe());
    work_ = dir_ / "work";
    make_dir(work_);
  }

  CommandResult wanhost(const std::vector<std::string>& args, const Env& env = {}) {
    return run_program(exe_.string(), args, env, work_, dir_);
  }
  CommandResult wanhost_in(const fs::path& cwd, const std::vector<std::string>& args,
                           const Env& env = {}) {
    return run_program(exe_.string(), args, env, cwd, dir_);
  }

  // `plugins list --json`, parsed (fails the test unless it exits 0 with a JSON array).
  Json list_json(const std::vector<std::string>& pre = {}, const Env& env = {},
                 const fs::path& cwd = {}) {
    std::vector<std::string> args = pre;
    args.insert(args.end(), {"plugins", "list", "--json"});
    const CommandResult r = cwd.empty() ? wanhost(args, env) : wanhost_in(cwd, args, env);
    EXPECT_EQ(r.code, 0) << shown(r);
    Json j;
    try {
      j = Json::parse(r.out);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not JSON: " << e.what() << "\n" << shown(r);
      return Json::array();
    }
    EXPECT_TRUE(j.is_array()) << r.out;
    return j;
  }

  fs::path dir_, exe_, builtin_, work_;
};

TEST_F(Cli, PluginsListJson) {
  const Json list = list_json();
  ASSERT_EQ(list.size(), 8u) << list.dump(2);
  for (const auto& p : list) {
    ASSERT_TRUE(p.is_object());
    ASSERT_TRUE(p.contains("name") && p["name"].is_string()) << p.dump();
    ASSERT_TRUE(p.contains("version") && p["version"].is_string()) << p.dump();
    ASSERT_TRUE(p.contains("path") && p["path"].is_string()) << p.dump();
    ASSERT_TRUE(p.contains("kinds") && p["kinds"].is_array() && !p["kinds"].empty()) << p.dump();
    for (const auto& k : p["kinds"]) EXPECT_TRUE(k.is_string());
    EXPECT_EQ(p["path"], (builtin_ / (p["name"].get<std::string>() + ".so")).string());
    EXPECT_EQ(p["version"], "1.0.0");
  }
  EXPECT_EQ(names_of(list),
            (std::vector<std::string>{"ddp", "dense", "flow_matching", "fx_combo", "fx_data_alt",
                                      "packed", "synthetic", "wan21_dit"}));
  EXPECT_EQ(list[3]["kinds"], Json::parse(R"(["model", "scheduler"])"));
  for (const auto& p : list) EXPECT_EQ(p["compatible"], true) << p.dump();
}

TEST_F(Cli, PluginsListText) {
  const CommandResult r = wanhost({"plugins", "list"});
  ASSERT_EQ(r.code, 0) << shown(r);
  EXPECT_CONTAINS(r.out, "NAME");
  EXPECT_CONTAINS(r.out, "model,scheduler");
  EXPECT_CONTAINS(r.out, "searched:\n  " + builtin_.string() + " (built-in)");
}

// The build's own program and plugin folder, whatever plugins it holds right now.
TEST(CliBuild, PluginsListJsonOfTheBuild) {
  const fs::path dir = scratch_dir();
  const CommandResult r = run_program(WANHOST_CLI, {"plugins", "list", "--json"}, {}, dir, dir);
  ASSERT_EQ(r.code, 0) << shown(r);
  const Json list = Json::parse(r.out);
  ASSERT_TRUE(list.is_array());
  for (const auto& p : list) {
    ASSERT_TRUE(p.is_object());
    EXPECT_TRUE(p.at("name").is_string());
    EXPECT_TRUE(p.at("kinds").is_array());
    EXPECT_TRUE(p.at("version").is_string());
    EXPECT_TRUE(p.at("path").is_string());
    EXPECT_EQ(fs::path(p.at("path").get<std::string>()).parent_path(),
              fs::path(WANHOST_BUILTIN_PLUGINS));
  }
  if (have_builtin_plugins()) {
    std::vector<std::string> names = names_of(list);
    for (const char* n : {"wan21_dit", "ddp", "flow_matching", "synthetic"})
      EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n << "\n" << r.out;
    // The default recipe validates against the real plugins.
    const CommandResult v = run_program(WANHOST_CLI, {"validate"}, {}, dir, dir);
    EXPECT_EQ(v.code, 0) << shown(v);
  }
}

TEST_F(Cli, SearchOrderFlagThenVariableThenBuiltIn) {
  const fs::path a = dir_ / "flag", b = dir_ / "env";
  stage_fixture("good", "fx_good", a);
  stage_fixture("dup_a", "fx_dup", b);
  const Json list = list_json({"--plugin-dir", a.string()}, {{"WANHOST_PLUGIN_PATH", b.string()}});
  const std::vector<std::string> names = names_of(list);
  ASSERT_EQ(names.size(), 10u) << list.dump(2);
  EXPECT_EQ(names[0], "fx_good");
  EXPECT_EQ(names[1], "fx_dup");
  EXPECT_EQ(names[2], "ddp");
  EXPECT_EQ(list[0]["path"], (a / "fx_good.so").string());
  EXPECT_EQ(list[1]["path"], (b / "fx_dup.so").string());

  const CommandResult text = wanhost({"--plugin-dir", a.string(), "plugins", "list"},
                                     {{"WANHOST_PLUGIN_PATH", b.string()}});
  ASSERT_EQ(text.code, 0) << shown(text);
  EXPECT_CONTAINS(text.out, "searched:\n  " + a.string() + " (--plugin-dir)\n  " + b.string() +
                                " (WANHOST_PLUGIN_PATH)\n  " + builtin_.string() + " (built-in)");
}

// Two plugins of one name: the folder searched first wins (a plugin under development shadows the
// installed one); the other file is named by `plugins list`, and nothing stops.
TEST_F(Cli, DuplicateNamesTheFolderSearchedFirstWins) {
  const fs::path a = dir_ / "a", b = dir_ / "b", c = dir_ / "c";
  stage_fixture("dup_a", "fx_dup", a);
  stage_fixture("dup_b", "fx_dup", b);
  // --plugin-dir comes before WANHOST_PLUGIN_PATH.
  CommandResult r = wanhost({"--plugin-dir", a.string(), "plugins", "list"},
                            {{"WANHOST_PLUGIN_PATH", b.string()}});
  ASSERT_EQ(r.code, 0) << shown(r);
  EXPECT_CONTAINS(r.out, (a / "fx_dup.so").string());
  EXPECT_CONTAINS(r.out, "not used: " + (b / "fx_dup.so").string() +
                             " (a plugin of the same name was found first: " +
                             (a / "fx_dup.so").string() + ")");
  // WANHOST_PLUGIN_PATH comes before the built-in folder: its synthetic is the one a run uses.
  stage_fixture("config", "synthetic", c);
  r = wanhost({"plugins", "list"}, {{"WANHOST_PLUGIN_PATH", c.string()}});
  EXPECT_EQ(r.code, 0) << shown(r);
  EXPECT_CONTAINS(r.err, "plugin 'synthetic': using " + (c / "synthetic.so").string() +
                             " (searched first); " + (builtin_ / "synthetic.so").string() +
                             " is not used");
}

// `plugins list` marks a plugin that `run` would refuse, and says why.
TEST_F(Cli, PluginsListMarksIncompatiblePlugins) {
  const fs::path p = dir_ / "p";
  stage_fixture("sdk_old", "fx_sdk_old", p);
  const CommandResult r = wanhost({"--plugin-dir", p.string(), "plugins", "list"});
  ASSERT_EQ(r.code, 0) << shown(r);
  EXPECT_CONTAINS(r.out, "INCOMPATIBLE");
  EXPECT_CONTAINS(r.out, "INCOMPATIBLE fx_sdk_old: " + (p / "fx_sdk_old.so").string());
  EXPECT_CONTAINS(r.out, "SDK ABI major: plugin 1, host " + kHostMajor);
  const Json list = list_json({"--plugin-dir", p.string()});
  for (const auto& e : list) EXPECT_EQ(e["compatible"], e["name"] != "fx_sdk_old") << e.dump();
}

TEST_F(Cli, RelativeAndEmptyPathEntriesIgnoredNeverTheCurrentDirectory) {
  // The current directory holds a good plugin, and so does a relative folder below it.
  stage_fixture("good", "fx_good", work_);
  stage_fixture("dup_a", "fx_dup", work_ / "plugins");
  const Env env = {{"WANHOST_PLUGIN_PATH", "::.:plugins:./plugins:"}};
  const CommandResult r = wanhost({"plugins", "list", "--json"}, env);
  ASSERT_EQ(r.code, 0) << shown(r);
  const std::vector<std::string> names = names_of(Json::parse(r.out));
  EXPECT_EQ(std::find(names.begin(), names.end(), "fx_good"), names.end()) << r.out;
  EXPECT_EQ(std::find(names.begin(), names.end(), "fx_dup"), names.end()) << r.out;
  EXPECT_EQ(names.size(), 8u);
  EXPECT_CONTAINS(r.err, "WANHOST_PLUGIN_PATH entry '.' ignored: not an absolute path");
  EXPECT_CONTAINS(r.err, "WANHOST_PLUGIN_PATH entry 'plugins' ignored: not an absolute path");
  EXPECT_CONTAINS(r.err, "WANHOST_PLUGIN_PATH entry './plugins' ignored: not an absolute path");
  // Without the variable, the current directory is not searched either.
  EXPECT_EQ(list_json({}, {}, work_).size(), 8u);
  // An explicit --plugin-dir may be relative: it is the user's own choice.
  const std::vector<std::string> with_flag = names_of(list_json({"--plugin-dir", "."}));
  EXPECT_EQ(with_flag.front(), "fx_good");
}

TEST_F(Cli, SameFileThroughTwoFoldersListedOnce) {
  const fs::path a = dir_ / "a";
  stage_fixture("good", "fx_good", a);
  const Json list = list_json({"--plugin-dir", a.string(), "--plugin-dir", a.string()},
                              {{"WANHOST_PLUGIN_PATH", a.string()}});
  const std::vector<std::string> names = names_of(list);
  EXPECT_EQ(std::count(names.begin(), names.end(), "fx_good"), 1) << list.dump(2);
}

TEST_F(Cli, UnsafeAndNonRegularFilesAreRefusedWithAWarning) {
  const fs::path real = stage_fixture("good", "fx_good", dir_ / "real");
  const fs::path d = dir_ / "odd", w = dir_ / "open";
  make_dir(d);
  fs::create_symlink(real, d / "fx_good.so");
  fs::copy_file(dir_ / "real" / "fx_good.json", d / "fx_good.json");
  ASSERT_EQ(mkfifo((d / "x.so").c_str(), 0644), 0);
  const fs::path gw = stage_fixture("dup_a", "fx_dup", d);
  ASSERT_EQ(chmod(gw.c_str(), 0775), 0);
  stage_fixture("config", "fx_data_alt", w);
  ASSERT_EQ(chmod(w.c_str(), 0757), 0);

  const CommandResult r = wanhost(
      {"--plugin-dir", d.string(), "--plugin-dir", w.string(), "plugins", "list", "--json"});
  ASSERT_EQ(r.code, 0) << shown(r);
  EXPECT_EQ(names_of(Json::parse(r.out)).size(), 8u) << r.out;  // only the built-in ones
  EXPECT_CONTAINS(r.err, "refused " + (d / "fx_good.so").string() + ": is a symbolic link");
  EXPECT_CONTAINS(r.err, "refused " + (d / "x.so").string() + ": is not a regular file");
  EXPECT_CONTAINS(r.err, "refused " + gw.string() + ": is writable by its group (mode 775)");
  EXPECT_CONTAINS(r.err, "refused " + w.string() + ": plugin folder is writable by others");
  ASSERT_EQ(chmod(w.c_str(), 0755), 0);

  // Asking for a refused plugin by name is a usage error that shows why it was refused.
  const CommandResult v = wanhost({"--plugin-dir", d.string(), "validate", "--plugins", "fx_dup"});
  EXPECT_EQ(v.code, 2) << shown(v);
  EXPECT_CONTAINS(v.err, "no plugin named 'fx_dup'");
  EXPECT_CONTAINS(v.err, "refused " + gw.string() + ": is writable by its group");
}

TEST_F(Cli, InspectShowsAbiWithoutLoadingCode) {
  const fs::path sentinel = dir_ / "sentinel";
  const Env env = {{"WANHOST_TEST_SENTINEL", sentinel.string()}};
  const fs::path bad = dir_ / "bad", good = dir_ / "good";
  stage_fixture("sentinel_bad", "fx_sentinel_bad", bad);
  stage_fixture("sentinel_good", "fx_sentinel_good", good);

  CommandResult r = wanhost(
      {"--plugin-dir", bad.string(), "plugins", "inspect", "fx_sentinel_bad", "--json"}, env);
  ASSERT_EQ(r.code, 0) << shown(r);
  Json j = Json::parse(r.out);
  EXPECT_EQ(j["name"], "fx_sentinel_bad");
  EXPECT_EQ(j["path"], (bad / "fx_sentinel_bad.so").string());
  EXPECT_EQ(j["abi"]["compatible"], false);
  EXPECT_CONTAINS(j["abi"]["problem"].get<std::string>(),
                  "(SDK ABI major: plugin " + kNextMajor + ", host " + kHostMajor + ")");
  EXPECT_EQ(j["abi"]["plugin"].get<std::string>().rfind("sdk " + kNextMajor + ".", 0), 0u);
  EXPECT_EQ(j["abi"]["host"].get<std::string>().rfind("sdk " + kHostMajor + ".", 0), 0u);
  EXPECT_FALSE(fs::exists(sentinel)) << "inspect ran the plugin's code";

  r = wanhost({"--plugin-dir", good.string(), "plugins", "inspect", "fx_sentinel_good", "--json"},
              env);
  ASSERT_EQ(r.code, 0) << shown(r);
  j = Json::parse(r.out);
  EXPECT_EQ(j["abi"]["compatible"], true);
  EXPECT_EQ(j["abi"]["problem"], "");
  EXPECT_EQ(j["kinds"], Json::parse(R"(["model"])"));
  EXPECT_FALSE(fs::exists(sentinel)) << "inspect ran the plugin's code";

  r = wanhost({"--plugin-dir", bad.string(), "plugins", "inspect", "fx_sentinel_bad"}, env);
  ASSERT_EQ(r.code, 0) << shown(r);
  EXPECT_CONTAINS(r.out, "NOT compatible: ");
  EXPECT_CONTAINS(r.out, "(SDK ABI major: plugin " + kNextMajor + ", host " + kHostMajor + ")");
  EXPECT_FALSE(fs::exists(sentinel));
}

TEST_F(Cli, InspectShowsTheOptionTable) {
  const CommandResult r = wanhost({"plugins", "inspect", "wan21_dit", "--json"});
  ASSERT_EQ(r.code, 0) << shown(r);
  const Json j = Json::parse(r.out);
  EXPECT_EQ(j["config"]["fx_variant"]["enum"], Json::parse(R"(["tiny", "small"])"));
  EXPECT_EQ(j["abi"]["compatible"], true);
}

TEST_F(Cli, InspectUnknownPluginIsAUsageError) {
  const CommandResult r = wanhost({"plugins", "inspect", "fx_nope"});
  EXPECT_EQ(r.code, 2) << shown(r);
  EXPECT_CONTAINS(r.err, "no plugin named 'fx_nope'; available: ddp, dense, flow_matching");
  EXPECT_CONTAINS(r.err, builtin_.string() + " (built-in)");
}

// A run that has to load a refused plugin stops with exit code 3 and the loader's message.
class CliRefusedRun : public Cli {
 protected:
  CommandResult run_with(const std::string& fixture_case, const std::string& plugin,
                         const Env& env = {}) {
    const fs::path p = dir_ / "p";
    stage_fixture(fixture_case, plugin, p);
    return wanhost({"--plugin-dir", p.string(), "run", small_manifest(dir_), "--plugins", plugin,
                    "--out", (dir_ / "run").string()},
                   env);
  }
};

TEST_F(CliRefusedRun, WrongSdkMajor) {
  const CommandResult r = run_with("sdk_major", "fx_sdk_major");
  EXPECT_EQ(r.code, 3) << shown(r);
  EXPECT_CONTAINS(r.err,
                  "plugin 'fx_sdk_major' refused: " + (dir_ / "p" / "fx_sdk_major.so").string());
  EXPECT_CONTAINS(r.err, "SDK ABI major: plugin " + kNextMajor + ", host " + kHostMajor);
}

// A plugin built against SDK 1.x: refused, naming both versions.
TEST_F(CliRefusedRun, PluginOfTheOldSdk) {
  const CommandResult r = run_with("sdk_old", "fx_sdk_old");
  EXPECT_EQ(r.code, 3) << shown(r);
  EXPECT_CONTAINS(r.err, "was built for sdk 1.2,");
  EXPECT_CONTAINS(r.err, "this host is sdk " + kHostMajor + ".");
  EXPECT_CONTAINS(r.err, "SDK ABI major: plugin 1, host " + kHostMajor);
}

TEST_F(CliRefusedRun, WrongTorchVersion) {
  const CommandResult r = run_with("torch_version", "fx_torch_version");
  EXPECT_EQ(r.code, 3) << shown(r);
  EXPECT_CONTAINS(r.err,
                  std::string("LibTorch version: plugin 2.10.0, host ") + WANHOST_TORCH_VERSION);
}

TEST_F(CliRefusedRun, NoEntryPoint) {
  const CommandResult r = run_with("no_entry", "fx_no_entry");
  EXPECT_EQ(r.code, 3) << shown(r);
  EXPECT_CONTAINS(r.err, "has no entry point 'wanhost_plugin_descriptor'");
}

TEST_F(CliRefusedRun, UnresolvedSymbol) {
  const CommandResult r = run_with("unresolved", "fx_unresolved");
  EXPECT_EQ(r.code, 3) << shown(r);
  EXPECT_CONTAINS(r.err, "plugin 'fx_unresolved' failed to load from ");
  EXPECT_CONTAINS(r.err, "undefined symbol: wanhost_fixture_missing_symbol");
}

TEST_F(CliRefusedRun, RefusedPluginRunsNoCode) {
  const fs::path sentinel = dir_ / "sentinel";
  const CommandResult r =
      run_with("sentinel_bad", "fx_sentinel_bad", {{"WANHOST_TEST_SENTINEL", sentinel.string()}});
  EXPECT_EQ(r.code, 3) << shown(r);
  EXPECT_CONTAINS(r.err, "SDK ABI major: plugin " + kNextMajor + ", host " + kHostMajor);
  EXPECT_FALSE(fs::exists(sentinel)) << "the refused plugin's static constructor ran";
}

// Configuration problems: exit code 2 and the JSON pointer on stderr.
class CliConfig : public Cli {
 protected:
  // Writes a manifest into the scratch folder and returns its path.
  std::string manifest(const std::string& text, const std::string& name = "m.json") {
    write_file(dir_ / name, text);
    return (dir_ / name).string();
  }
  // Expects exit code 2 with every fragment on stderr.
  void expect_config_error(const std::vector<std::string>& args,
                           const std::vector<std::string>& fragments, const Env& env = {}) {
    const CommandResult r = wanhost(args, env);
    EXPECT_EQ(r.code, 2) << shown(r);
    for (const auto& f : fragments) EXPECT_CONTAINS(r.err, f);
  }
};

TEST_F(CliConfig, ValidateDefaultRecipe) {
  const CommandResult r = wanhost({"validate"});
  ASSERT_EQ(r.code, 0) << shown(r);
  EXPECT_EQ(r.out, "built-in default recipe: OK (" + std::to_string(recipe()["stages"].size()) +
                       " stage(s); model wan21_dit, parallelism ddp)\n"
                       "  parallelism ddp: dp=1 tp=1 pp=1 cp=1 for 1 process(es)\n"
                       "  scheduler flow_matching: built\n"
                       "  collator dense: built\n"
                       "  stage t2i data: fixture stand-in\n"
                       "  stage t2v data: fixture stand-in\n");
}

TEST_F(CliConfig, TypoKey) {
  const std::string m = manifest(R"({"run": {"seeed": 7}})");
  for (const char* cmd : {"validate", "run"}) {
    SCOPED_TRACE(cmd);
    std::vector<std::string> args = {cmd, m};
    if (std::string(cmd) == "run") args.push_back("--print-config");
    expect_config_error(args, {"config error at /run/seeed", "did you mean 'seed'?"});
  }
}

TEST_F(CliConfig, WrongTypeRangeAndEnum) {
  expect_config_error({"validate", manifest(R"({"run": {"seed": "abc"}})")},
                      {"config error at /run/seed", "expected integer, got string \"abc\""});
  expect_config_error({"validate", "--set", "stages.0.steps=0"},
                      {"config error at /stages/0/steps", "below the minimum 1"});
  expect_config_error({"run", "--print-config", "--set", "run.device=tpu"},
                      {"config error at /run/device", "is not one of"});
}

TEST_F(CliConfig, BrokenJson) {
  const std::string m = manifest("{\n  \"run\": {\n    \"seed\": ]\n  }\n}\n");
  expect_config_error({"validate", m}, {m + ":3:13 ", "invalid JSON"});
}

TEST_F(CliConfig, SetOnAPathThatDoesNotExist) {
  expect_config_error({"validate", "--set", "nothere.x=1"},
                      {"config error at /nothere", "--set nothere.x: there is no such setting"});
  expect_config_error({"run", "--print-config", "--set", "stages.9.steps=2"},
                      {"config error at /stages/9"});
  expect_config_error({"validate", "--set", "run.seed"}, {"expected KEY.PATH=VALUE"});
}

TEST_F(CliConfig, SetValuesInThePrintedConfig) {
  const CommandResult r = wanhost({"run", "--print-config", "--set", "run.seed=99", "--set",
                                   "run.name=hello world", "--set", "checkpoint.at_stage_end=false",
                                   "--set", "stages.0.optimizer={\"lr\": 0.5}", "--set",
                                   "model.wan21_dit.fx_dim=128", "--set", "/stages/0/steps=7"});
  ASSERT_EQ(r.code, 0) << shown(r);
  const Json c = Json::parse(r.out);
  EXPECT_EQ(c["run"]["seed"], 99);
  EXPECT_EQ(c["run"]["name"], "hello world");
  EXPECT_EQ(c["checkpoint"]["at_stage_end"], false);
  EXPECT_EQ(c["stages"][0]["optimizer"]["lr"], 0.5);
  EXPECT_EQ(c["stages"][0]["optimizer"]["beta1"], 0.9);
  EXPECT_EQ(c["model"]["wan21_dit"]["fx_dim"], 128);
  EXPECT_EQ(c["stages"][0]["steps"], 7);
  // --out is a --set of run.out.
  const CommandResult o = wanhost({"run", "--print-config", "--out", "somewhere/else"});
  ASSERT_EQ(o.code, 0) << shown(o);
  EXPECT_EQ(Json::parse(o.out)["run"]["out"], "somewhere/else");
  // An empty --out is a mistake, not the default folder.
  const CommandResult e = wanhost({"run", "--print-config", "--out", ""});
  EXPECT_EQ(e.code, 2) << shown(e);
  EXPECT_CONTAINS(e.err, "--out: the run folder must not be empty");
}

TEST_F(CliConfig, PluginsByName) {
  CommandResult r = wanhost({"run", "--print-config", "--plugins", "fx_combo,packed"});
  ASSERT_EQ(r.code, 0) << shown(r);
  Json c = Json::parse(r.out);
  EXPECT_EQ(c["model"]["plugin"], "fx_combo");
  EXPECT_EQ(c["scheduler"]["plugin"], "fx_combo");
  EXPECT_EQ(c["collator"]["plugin"], "packed");
  r = wanhost({"validate", small_manifest(dir_), "--plugins", "fx_data_alt", "--print-config"});
  ASSERT_EQ(r.code, 0) << shown(r);
  c = Json::parse(r.out);
  EXPECT_EQ(c["data"]["plugin"], "fx_data_alt");
  EXPECT_EQ(c["data"]["fx_data_alt"]["shuffle"], true);
}

TEST_F(CliConfig, UnknownPluginName) {
  expect_config_error({"validate", "--plugins", "nope"},
                      {"no plugin named 'nope'; available: ddp, dense, flow_matching, fx_combo, "
                       "fx_data_alt, packed, synthetic, wan21_dit; searched:",
                       builtin_.string() + " (built-in)"});
  expect_config_error({"validate", manifest(R"({"scheduler": {"plugin": "nope"}})")},
                      {"config error at /scheduler/plugin",
                       "available scheduler plugins: flow_matching, fx_combo"});
}

TEST_F(CliConfig, PluginConfigTypoNamesThePlugin) {
  expect_config_error(
      {"validate", manifest(R"({"model": {"wan21_dit": {"fx_variannt": "tiny"}}})")},
      {"config error at /model/wan21_dit/fx_variannt (plugin 'wan21_dit')",
       "did you mean 'fx_variant'?"});
  expect_config_error({"run", "--print-config", "--set", "data.synthetic.fx_mode=video"},
                      {"config error at /data/synthetic/fx_mode (plugin 'synthetic')"});
}

// Stage data overrides for another data plugin (the recipe's, before --plugins swapped it) are
// dropped with a warning naming them; a key that names no data plugin is an error.
TEST_F(CliConfig, StageDataKeyedByAnotherPlugin) {
  const std::string m = manifest(R"({"stages": [{"name": "a", "steps": 1, "global_batch": 1,
                                                 "micro_batch": 1, "data": {"fx_data_alt": {}}}]})");
  CommandResult r = wanhost({"validate", m, "--print-config"});
  ASSERT_EQ(r.code, 0) << shown(r);
  EXPECT_CONTAINS(r.err,
                  "/stages/0/data/fx_data_alt: these overrides are for data plugin "
                  "'fx_data_alt', but the run uses 'synthetic'; they are dropped");
  EXPECT_FALSE(Json::parse(r.out)["stages"][0]["data"].contains("fx_data_alt"));
  // The default recipe's stage overrides (keyed synthetic) when --plugins picks another source.
  r = wanhost({"validate", "--plugins", "fx_data_alt"});
  ASSERT_EQ(r.code, 0) << shown(r);
  EXPECT_CONTAINS(r.err,
                  "/stages/1/data/synthetic: these overrides are for data plugin "
                  "'synthetic', but the run uses 'fx_data_alt'");
  expect_config_error(
      {"validate", manifest(R"({"stages": [{"name": "a", "steps": 1, "global_batch": 1,
                                              "micro_batch": 1, "data": {"nope": {}}}]})")},
      {"config error at /stages/0/data/nope", "'nope' is not an installed data source plugin"});
}

// validate builds the plugins (not the model): their own checks run before a run does.
TEST_F(CliConfig, ValidateBuildsThePlugins) {
  const CommandResult r = wanhost({"validate"});
  ASSERT_EQ(r.code, 0) << shown(r);
  EXPECT_CONTAINS(r.out, "parallelism ddp: dp=1 tp=1 pp=1 cp=1 for 1 process(es)");
  EXPECT_CONTAINS(r.out, "stage t2v data: fixture stand-in");
  const CommandResult w = wanhost({"validate", "--world-size", "3"});
  EXPECT_EQ(w.code, 2) << shown(w);
  EXPECT_CONTAINS(w.err, "config error at /stages/0/global_batch");
  EXPECT_CONTAINS(w.err, "must split into 3 data-parallel rank(s)");
}

// An error from a plugin names the plugin, its kind and the call; the exit code follows the
// plugin's exception; a non-standard exception is caught at the boundary (no crash).
TEST_F(CliConfig, ErrorsFromAPluginNameIt) {
  const fs::path p = dir_ / "p";
  stage_fixture("throws", "fx_throws", p);
  stage_fixture("throws", "fx_throws_int", p);
  CommandResult r = wanhost({"--plugin-dir", p.string(), "validate", "--plugins", "fx_throws"});
  EXPECT_EQ(r.code, 1) << shown(r);
  EXPECT_CONTAINS(r.err,
                  "plugin 'fx_throws' (scheduler) failed in create_scheduler: the "
                  "fixture's factory failed on purpose");
  r = wanhost({"--plugin-dir", p.string(), "run", small_manifest(dir_), "--plugins",
               "fx_throws_int", "--out", (dir_ / "r").string()});
  EXPECT_EQ(r.code, 1) << shown(r);
  EXPECT_CONTAINS(r.err,
                  "plugin 'fx_throws_int' (scheduler) failed in create_scheduler: a "
                  "non-standard exception");
}

TEST_F(CliConfig, BadFlagsAndFiles) {
  CommandResult r = wanhost({"validate", (dir_ / "absent.json").string()});
  EXPECT_EQ(r.code, 2) << shown(r);
  r = wanhost({"validate", "--no-such-flag"});
  EXPECT_EQ(r.code, 2) << shown(r);
  r = wanhost({});
  EXPECT_EQ(r.code, 2) << shown(r);
  r = wanhost({"--version"});
  EXPECT_EQ(r.code, 0) << shown(r);
  EXPECT_CONTAINS(r.out, "SDK ABI " + kHostMajor + ".");
}

TEST_F(CliConfig, LaunchVariablesAreChecked) {
  expect_config_error({"run", "--print-config"}, {"RANK='abc' is not an integer"},
                      {{"RANK", "abc"}, {"WORLD_SIZE", "2"}});
  expect_config_error({"run", "--print-config"}, {"RANK=2", "WORLD_SIZE=2"},
                      {{"RANK", "2"}, {"WORLD_SIZE", "2"}});
  expect_config_error({"run", "--print-config", "--master-port", "70000"},
                      {"--master-port=70000 is not a port"});
}

}  // namespace
