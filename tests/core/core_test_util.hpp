// Helpers shared by the host tests: per-test scratch folders, fixture plugins copied where a test
// wants them (with permissions under its control), and running the `wanhost` program.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

// Non-fatal check that `haystack` (a string) contains `needle`, printing both when it does not.
#define EXPECT_CONTAINS(haystack, needle)                             \
  do {                                                                \
    const std::string h_ = (haystack);                                \
    EXPECT_NE(h_.find(needle), std::string::npos)                     \
        << "expected to find [" << (needle) << "] in [" << h_ << "]"; \
  } while (0)

namespace coretest {

namespace fs = std::filesystem;

// A fresh, empty folder for the running test: $WANHOST_TEST_TMP/<Suite>.<Test> (mode 0755).
fs::path scratch_dir();

// Creates `dir` (and missing parents) and sets its mode to 0755 whatever the umask.
void make_dir(const fs::path& dir);

// Where the fixture plugins of case `fixture_case` were built, and where their sources live.
fs::path fixture_build_dir(const std::string& fixture_case);
fs::path fixture_source(const std::string& relative);

// Copies fixture plugin `plugin` of `fixture_case` (the .so, mode 0755, and its sidecar .json,
// mode 0644) into `dir`, created if needed. Returns the path of the copied .so.
fs::path stage_fixture(const std::string& fixture_case, const std::string& plugin,
                       const fs::path& dir);
// Copies every plugin of a fixture case into `dir`.
void stage_case(const std::string& fixture_case, const fs::path& dir);

// Copies the config stand-ins (fixtures/config: plugins named like the built-in ones of the
// default recipe, plus fx_data_alt and fx_combo) into `dir`, and adds to each stand-in's option
// table an option of type "any" for every key that `recipe` sets in that plugin's config (in its
// section and in stage data overrides), so that the recipe resolves whatever its plugin settings
// are today. The stand-ins' own options are all named fx_*.
void stage_config_plugins(const fs::path& dir, const nlohmann::json& recipe);

// Whether the real built-in plugins of the default recipe are part of this build and built
// (else the tests that use them skip).
bool have_builtin_plugins();

void write_file(const fs::path& path, const std::string& text);
std::string read_file(const fs::path& path);

struct CommandResult {
  int code = -1;  // exit status (128 + signal when killed by one)
  std::string out, err;
};

// Runs `program args...` from `cwd` with a clean environment (PATH, LD_LIBRARY_PATH when set,
// plus `env`), capturing stdout and stderr through files in `scratch`.
CommandResult run_program(const std::string& program, const std::vector<std::string>& args,
                          const std::vector<std::pair<std::string, std::string>>& env,
                          const fs::path& cwd, const fs::path& scratch);

}  // namespace coretest
