#include "core_test_util.hpp"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <gtest/gtest.h>

namespace coretest {

fs::path scratch_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  fs::path dir =
      fs::path(WANHOST_TEST_TMP) / (std::string(info->test_suite_name()) + "." + info->name());
  // Earlier runs may have left read-only or odd entries behind; make them removable first.
  std::error_code ec;
  if (fs::exists(dir, ec))
    for (const auto& e : fs::recursive_directory_iterator(dir, ec))
      if (e.is_directory(ec) && !e.is_symlink(ec))
        fs::permissions(e.path(), fs::perms::owner_all, fs::perm_options::add, ec);
  fs::remove_all(dir);
  make_dir(dir);
  return dir;
}

void make_dir(const fs::path& dir) {
  fs::create_directories(dir);
  fs::permissions(dir, fs::perms(0755));
}

fs::path fixture_build_dir(const std::string& fixture_case) {
  return fs::path(WANHOST_CORE_FIXTURES) / fixture_case;
}

fs::path fixture_source(const std::string& relative) {
  return fs::path(WANHOST_CORE_FIXTURE_SRC) / relative;
}

fs::path stage_fixture(const std::string& fixture_case, const std::string& plugin,
                       const fs::path& dir) {
  make_dir(dir);
  const fs::path from = fixture_build_dir(fixture_case);
  const fs::path so = dir / (plugin + ".so"), json = dir / (plugin + ".json");
  fs::copy_file(from / (plugin + ".so"), so, fs::copy_options::overwrite_existing);
  fs::copy_file(from / (plugin + ".json"), json, fs::copy_options::overwrite_existing);
  fs::permissions(so, fs::perms(0755));
  fs::permissions(json, fs::perms(0644));
  return so;
}

void stage_case(const std::string& fixture_case, const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(fixture_build_dir(fixture_case)))
    if (e.path().extension() == ".so") stage_fixture(fixture_case, e.path().stem().string(), dir);
}

void stage_config_plugins(const fs::path& dir, const nlohmann::json& recipe) {
  using Json = nlohmann::json;
  stage_case("config", dir);
  for (const char* section : {"model", "parallelism", "scheduler", "data"}) {
    if (!recipe.contains(section) || !recipe[section].is_object()) continue;
    const std::string plugin = recipe[section].value("plugin", "");
    const fs::path sidecar = dir / (plugin + ".json");
    if (plugin.empty() || !fs::exists(sidecar)) continue;
    Json manifest = Json::parse(read_file(sidecar));
    Json& options = manifest["config"];
    auto allow = [&options](const Json& config) {
      if (!config.is_object()) return;
      for (auto it = config.begin(); it != config.end(); ++it)
        if (!options.contains(it.key()))
          options[it.key()] = {
              {"type", "any"}, {"default", nullptr}, {"description", "set by the default recipe"}};
    };
    if (recipe[section].contains(plugin)) allow(recipe[section][plugin]);
    if (std::string(section) == "data" && recipe.contains("stages"))
      for (const auto& stage : recipe["stages"])
        if (stage.contains("data") && stage["data"].contains(plugin)) allow(stage["data"][plugin]);
    write_file(sidecar, manifest.dump(2));
  }
}

bool have_builtin_plugins() {
  if (!WANHOST_HAVE_BUILTINS) return false;
  for (const char* name : {"wan21_dit", "ddp", "flow_matching", "synthetic"})
    if (!fs::exists(fs::path(WANHOST_BUILTIN_PLUGINS) / (std::string(name) + ".so"))) return false;
  return true;
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

namespace {

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

}  // namespace

CommandResult run_program(const std::string& program, const std::vector<std::string>& args,
                          const std::vector<std::pair<std::string, std::string>>& env,
                          const fs::path& cwd, const fs::path& scratch) {
  // The pid as well as a counter: a scratch folder shared by cases (ctest runs them at once) keeps
  // each command's output apart.
  static int counter = 0;
  const std::string tag = "cmd" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
  const fs::path out = scratch / (tag + ".out"), err = scratch / (tag + ".err");
  std::string cmd = "cd " + quote(cwd.string()) + " && exec env -i PATH=/usr/bin:/bin";
  if (const char* ld = std::getenv("LD_LIBRARY_PATH"))
    cmd += " " + quote(std::string("LD_LIBRARY_PATH=") + ld);
  for (const auto& [k, v] : env) cmd += " " + quote(k + "=" + v);
  cmd += " " + quote(program);
  for (const auto& a : args) cmd += " " + quote(a);
  cmd += " >" + quote(out.string()) + " 2>" + quote(err.string()) + " </dev/null";
  const int status = std::system(cmd.c_str());
  CommandResult r;
  if (status == -1)
    r.code = -1;
  else if (WIFEXITED(status))
    r.code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status))
    r.code = 128 + WTERMSIG(status);
  r.out = read_file(out);
  r.err = read_file(err);
  return r;
}

}  // namespace coretest
