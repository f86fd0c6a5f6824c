// The plugin loader in-process (core/plugin/registry.hpp): finding plugins, refusing unsafe or
// malformed ones with their own messages, checking the ABI tag from the file before any plugin
// code runs, and loading the good ones.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core_test_util.hpp"
#include "plugin/abi_reader.hpp"
#include "plugin/registry.hpp"
#include "wanhost/errors.hpp"

namespace {

using namespace coretest;
using wanhost::core::PluginManifest;
using wanhost::core::PluginRefused;
using wanhost::core::PluginRegistry;
using wanhost::core::SearchPath;

const std::string kHostMajor = std::to_string(WANHOST_SDK_ABI_MAJOR);
const std::string kNextMajor = std::to_string(WANHOST_SDK_ABI_MAJOR + 1);
const std::string kHostTorch = WANHOST_TORCH_VERSION;

std::vector<SearchPath> flag_dirs(const std::vector<fs::path>& dirs) {
  std::vector<SearchPath> out;
  for (const auto& d : dirs) out.push_back({d.string(), "--plugin-dir"});
  return out;
}

// The message of the PluginRefused that loading `name` from a registry over `dir` throws.
std::string refusal(const fs::path& dir, const std::string& name) {
  PluginRegistry reg(flag_dirs({dir}));
  if (!reg.find(name)) {
    ADD_FAILURE() << name << " was not found in " << dir;
    return {};
  }
  try {
    reg.load(name);
  } catch (const PluginRefused& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected PluginRefused, got: " << e.what();
    return {};
  }
  ADD_FAILURE() << "loading " << name << " was not refused";
  return {};
}

// The reason the registry over `dirs` gives for refusing `file`, or "" when it did not.
std::string refused_reason(const PluginRegistry& reg, const fs::path& file) {
  for (const auto& [path, why] : reg.refused())
    if (path == file.string()) return why;
  return {};
}

class Loader : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = scratch_dir(); }
  fs::path dir_;
};

TEST_F(Loader, GoodPluginIsListedAndLoads) {
  const fs::path so = stage_fixture("good", "fx_good", dir_ / "good");
  PluginRegistry reg(flag_dirs({dir_ / "good"}));
  ASSERT_EQ(reg.plugins().size(), 1u);
  EXPECT_TRUE(reg.refused().empty());
  const PluginManifest& m = reg.plugins()[0];
  EXPECT_EQ(m.name, "fx_good");
  EXPECT_EQ(m.version, "1.0.0");
  EXPECT_EQ(m.kinds, std::vector<std::string>{"data_source"});
  EXPECT_EQ(m.library_path, so.string());
  EXPECT_EQ(m.manifest_path, (dir_ / "good" / "fx_good.json").string());
  EXPECT_EQ(m.options["samples"]["default"], 4);
  EXPECT_EQ(reg.find("fx_good"), &m);
  EXPECT_EQ(reg.find("nope"), nullptr);

  const wanhost::PluginDescriptor& d = reg.load("fx_good");
  EXPECT_STREQ(d.name, "fx_good");
  EXPECT_STREQ(d.version, "1.0.0");
  EXPECT_EQ(d.kinds, wanhost::kKindDataSource);
  EXPECT_EQ(d.tag.sdk_major, static_cast<std::uint32_t>(WANHOST_SDK_ABI_MAJOR));
  ASSERT_NE(d.factories.create_data_source, nullptr);
  EXPECT_EQ(d.factories.create_model, nullptr);
  // Its factory works with a config filled from its option table.
  wanhost::PluginConfig cfg;
  cfg.plugin = "fx_good";
  cfg.pointer = "/data/fx_good";
  cfg.values = {{"samples", 3}, {"label", "clip"}};
  auto source = d.factories.create_data_source(cfg);
  ASSERT_NE(source, nullptr);
  EXPECT_EQ(source->size(), 3);
  EXPECT_EQ(source->get(2).caption, "clip 2");
  EXPECT_EQ(source->describe(), "fx_good: 3 samples");
  // A second load returns the same descriptor.
  EXPECT_EQ(&reg.load("fx_good"), &d);
}

TEST_F(Loader, LoadPluginLibraryDirectly) {
  const fs::path so = stage_fixture("good", "fx_good", dir_);
  const PluginManifest m =
      wanhost::core::read_plugin_manifest((dir_ / "fx_good.json").string(), so.string());
  auto holder = std::make_unique<wanhost::core::LoadedPluginPtr>();
  const wanhost::PluginDescriptor& d = wanhost::core::load_plugin_library(m, *holder);
  EXPECT_NE(holder->get(), nullptr);
  EXPECT_STREQ(d.name, "fx_good");
  EXPECT_EQ(d.kinds, wanhost::kKindDataSource);
}

TEST_F(Loader, AbiTagReadFromTheFile) {
  const fs::path good = stage_fixture("good", "fx_good", dir_ / "a");
  auto tag = wanhost::core::read_abi_tag(good.string());
  ASSERT_TRUE(tag.has_value());
  EXPECT_STREQ(tag->plugin_name, "fx_good");
  EXPECT_STREQ(tag->torch_version, WANHOST_TORCH_VERSION);
  EXPECT_EQ(wanhost::core::abi_mismatch(*tag, wanhost::current_abi_tag()), "");

  const fs::path bad = stage_fixture("sdk_major", "fx_sdk_major", dir_ / "b");
  tag = wanhost::core::read_abi_tag(bad.string());
  ASSERT_TRUE(tag.has_value());
  EXPECT_EQ(tag->sdk_major, static_cast<std::uint32_t>(WANHOST_SDK_ABI_MAJOR + 1));
  EXPECT_EQ(wanhost::core::abi_mismatch(*tag, wanhost::current_abi_tag()),
            "SDK ABI major: plugin " + kNextMajor + ", host " + kHostMajor);
  EXPECT_EQ(wanhost::core::describe(*tag).rfind(
                "sdk " + kNextMajor + "." + std::to_string(WANHOST_SDK_ABI_MINOR) + ", torch ", 0),
            0u)
      << wanhost::core::describe(*tag);
}

TEST_F(Loader, WrongSdkMajorRefusedNamingBothSides) {
  const fs::path so = stage_fixture("sdk_major", "fx_sdk_major", dir_);
  const std::string msg = refusal(dir_, "fx_sdk_major");
  EXPECT_CONTAINS(msg, "plugin 'fx_sdk_major' refused: " + so.string());
  EXPECT_CONTAINS(msg, "SDK ABI major: plugin " + kNextMajor + ", host " + kHostMajor);
  EXPECT_CONTAINS(msg, "rebuild the plugin against this SDK");
  // The other fields match, so nothing else is blamed.
  EXPECT_EQ(msg.find("LibTorch version:"), std::string::npos) << msg;
}

// Minors only add: a host loads plugins of an older or equal minor, never a newer one (the plugin
// could call what this host does not have).
TEST_F(Loader, NewerSdkMinorRefusedNamingBothSides) {
  const fs::path so = stage_fixture("sdk_minor", "fx_sdk_minor", dir_);
  const std::string msg = refusal(dir_, "fx_sdk_minor");
  EXPECT_CONTAINS(msg, "plugin 'fx_sdk_minor' refused: " + so.string());
  EXPECT_CONTAINS(msg, "SDK ABI minor (plugin needs a newer host): plugin " +
                           std::to_string(WANHOST_SDK_ABI_MINOR + 1) + ", host " +
                           std::to_string(WANHOST_SDK_ABI_MINOR));
}

// A plugin built against SDK 1.x (before the 2.0 contract) is refused naming both versions.
TEST_F(Loader, PluginOfSdk1Refused) {
  stage_fixture("sdk_old", "fx_sdk_old", dir_);
  const std::string msg = refusal(dir_, "fx_sdk_old");
  EXPECT_CONTAINS(msg, "was built for sdk 1.2, torch");
  EXPECT_CONTAINS(msg, "SDK ABI major: plugin 1, host " + std::to_string(WANHOST_SDK_ABI_MAJOR));
}

TEST_F(Loader, WrongTorchVersionRefusedNamingBothSides) {
  stage_fixture("torch_version", "fx_torch_version", dir_);
  const std::string msg = refusal(dir_, "fx_torch_version");
  EXPECT_CONTAINS(msg, "plugin 'fx_torch_version' refused");
  EXPECT_CONTAINS(msg, "LibTorch version: plugin 2.10.0, host " + kHostTorch);
  EXPECT_CONTAINS(msg, "torch 2.10.0");
  EXPECT_EQ(msg.find("SDK ABI major"), std::string::npos) << msg;
}

TEST_F(Loader, MissingEntryPoint) {
  const fs::path so = stage_fixture("no_entry", "fx_no_entry", dir_);
  const std::string msg = refusal(dir_, "fx_no_entry");
  EXPECT_CONTAINS(msg, "plugin 'fx_no_entry' refused: " + so.string() +
                           " has no entry point 'wanhost_plugin_descriptor'");
}

TEST_F(Loader, UnresolvedSymbolGivesTheDlerrorText) {
  const fs::path so = stage_fixture("unresolved", "fx_unresolved", dir_);
  const std::string msg = refusal(dir_, "fx_unresolved");
  EXPECT_CONTAINS(msg, "plugin 'fx_unresolved' failed to load from " + so.string() + ": ");
  EXPECT_CONTAINS(msg, "undefined symbol: wanhost_fixture_missing_symbol");
}

TEST_F(Loader, SidecarDeclaresAKindTheLibraryLacks) {
  stage_fixture("kinds", "fx_kinds", dir_);
  const std::string msg = refusal(dir_, "fx_kinds");
  EXPECT_CONTAINS(msg, "plugin 'fx_kinds': sidecar " + (dir_ / "fx_kinds.json").string() +
                           " declares kind 'scheduler' that the library does not provide");
}

TEST_F(Loader, SidecarOmitsAKindTheLibraryProvides) {
  stage_fixture("good", "fx_good", dir_);
  fs::copy_file(fixture_source("malformed/omits_kind.json"), dir_ / "fx_good.json",
                fs::copy_options::overwrite_existing);
  const std::string msg = refusal(dir_, "fx_good");
  EXPECT_CONTAINS(msg, "omits kind 'data_source' that the library provides");
}

TEST_F(Loader, TagNameMustMatchTheSidecar) {
  make_dir(dir_ / "p");
  fs::copy_file(stage_fixture("good", "fx_good", dir_ / "src"), dir_ / "p" / "renamed.so");
  write_file(dir_ / "p" / "renamed.json",
             R"({"name": "renamed", "version": "1.0.0", "kinds": ["data_source"]})");
  const std::string msg = refusal(dir_ / "p", "renamed");
  EXPECT_CONTAINS(msg, (dir_ / "p" / "renamed.so").string() +
                           " calls itself 'fx_good' but its sidecar " +
                           (dir_ / "p" / "renamed.json").string() + " says 'renamed'");
}

TEST_F(Loader, FileWithoutAbiSectionOrNotElf) {
  // A shared object of another kind: this test program itself (a PIE is ET_DYN).
  fs::copy_file("/proc/self/exe", dir_ / "other.so");
  write_file(dir_ / "other.json", R"({"name": "other", "version": "1", "kinds": ["model"]})");
  std::string msg = refusal(dir_, "other");
  if (msg.find("not a shared object") == std::string::npos)  // non-PIE build of the test
    EXPECT_CONTAINS(msg, "has no .wanhost_abi section");
  // Not ELF at all.
  write_file(dir_ / "text.so",
             "just text, long enough to hold an ELF header......................");
  write_file(dir_ / "text.json", R"({"name": "text", "version": "1", "kinds": ["model"]})");
  msg = refusal(dir_, "text");
  EXPECT_CONTAINS(msg,
                  "plugin 'text' refused: " + (dir_ / "text.so").string() + ": not an ELF file");
  // Truncated.
  write_file(dir_ / "short.so",
             "\x7f"
             "ELF");
  write_file(dir_ / "short.json", R"({"name": "short", "version": "1", "kinds": ["model"]})");
  msg = refusal(dir_, "short");
  EXPECT_CONTAINS(msg, "truncated ELF file");
}

// (g) A refused plugin runs no code at all, not even static constructors; the control fixture
// (same constructor, correct tag) shows that the constructor would have written the file.
TEST_F(Loader, RefusedPluginRunsNoCode) {
  const fs::path sentinel = dir_ / "sentinel";
  ASSERT_EQ(setenv("WANHOST_TEST_SENTINEL", sentinel.c_str(), 1), 0);
  stage_fixture("sentinel_bad", "fx_sentinel_bad", dir_ / "bad");
  const std::string msg = refusal(dir_ / "bad", "fx_sentinel_bad");
  EXPECT_CONTAINS(msg, "SDK ABI major: plugin " + kNextMajor + ", host " + kHostMajor);
  EXPECT_FALSE(fs::exists(sentinel)) << "the refused plugin's static constructor ran";

  stage_fixture("sentinel_good", "fx_sentinel_good", dir_ / "good");
  PluginRegistry reg(flag_dirs({dir_ / "good"}));
  EXPECT_FALSE(fs::exists(sentinel)) << "listing plugins ran plugin code";
  const wanhost::PluginDescriptor& d = reg.load("fx_sentinel_good");
  EXPECT_EQ(d.kinds, wanhost::kKindModel);
  ASSERT_TRUE(fs::exists(sentinel)) << "the control fixture's constructor did not run";
  EXPECT_EQ(read_file(sentinel), "fx_sentinel_good");
  unsetenv("WANHOST_TEST_SENTINEL");
}

// Two folders with a plugin of one name: the folder searched first wins, the other file is
// named as not used (developing the next version of an installed plugin with --plugin-dir).
TEST_F(Loader, DuplicateNamesTheFolderSearchedFirstWins) {
  const fs::path a = stage_fixture("dup_a", "fx_dup", dir_ / "a");
  const fs::path b = stage_fixture("dup_b", "fx_dup", dir_ / "b");
  for (const bool a_first : {true, false}) {
    PluginRegistry reg(a_first ? flag_dirs({dir_ / "a", dir_ / "b"})
                               : flag_dirs({dir_ / "b", dir_ / "a"}));
    ASSERT_NE(reg.find("fx_dup"), nullptr);
    const fs::path used = a_first ? a : b, unused = a_first ? b : a;
    EXPECT_EQ(reg.find("fx_dup")->library_path, used.string());
    ASSERT_EQ(reg.shadowed().size(), 1u);
    EXPECT_EQ(reg.shadowed()[0].first, unused.string());
    EXPECT_EQ(reg.shadowed()[0].second, used.string());
    EXPECT_TRUE(reg.refused().empty());
  }
}

// Two files of one plugin name in the same folder: the first in name order is used, the other
// refused with a reason naming both; nothing else stops.
TEST_F(Loader, DuplicateNamesInOneFolderRefuseTheSecondFile) {
  const fs::path first = stage_fixture("dup_a", "fx_dup", dir_ / "c");
  stage_fixture("good", "fx_good", dir_ / "c");
  const fs::path src = stage_fixture("dup_b", "fx_dup", dir_ / "src");
  fs::copy_file(src, dir_ / "c" / "zz_other.so");
  fs::copy_file(dir_ / "src" / "fx_dup.json", dir_ / "c" / "zz_other.json");
  PluginRegistry reg(flag_dirs({dir_ / "c"}));
  ASSERT_NE(reg.find("fx_dup"), nullptr);
  EXPECT_EQ(reg.find("fx_dup")->library_path, first.string());
  EXPECT_NE(reg.find("fx_good"), nullptr);
  EXPECT_CONTAINS(
      refused_reason(reg, dir_ / "c" / "zz_other.so"),
      "another file in the same folder, " + first.string() + ", is also plugin 'fx_dup'");
}

TEST_F(Loader, SameFileThroughTwoFoldersCountsOnce) {
  const fs::path so = stage_fixture("good", "fx_good", dir_ / "a");
  // The same folder twice (e.g. --plugin-dir and WANHOST_PLUGIN_PATH) ...
  PluginRegistry twice(
      {{(dir_ / "a").string(), "--plugin-dir"}, {(dir_ / "a").string(), "WANHOST_PLUGIN_PATH"}});
  ASSERT_EQ(twice.plugins().size(), 1u);
  EXPECT_EQ(twice.plugins()[0].library_path, so.string());
  // ... and a hard link in another folder.
  make_dir(dir_ / "b");
  fs::create_hard_link(so, dir_ / "b" / "fx_good.so");
  fs::copy_file(dir_ / "a" / "fx_good.json", dir_ / "b" / "fx_good.json");
  PluginRegistry linked(flag_dirs({dir_ / "a", dir_ / "b"}));
  ASSERT_EQ(linked.plugins().size(), 1u);
  EXPECT_EQ(linked.plugins()[0].library_path, so.string());
  EXPECT_TRUE(linked.refused().empty());
}

TEST_F(Loader, SymlinkRefused) {
  const fs::path real = stage_fixture("good", "fx_good", dir_ / "real");
  make_dir(dir_ / "links");
  fs::create_symlink(real, dir_ / "links" / "fx_good.so");
  fs::copy_file(dir_ / "real" / "fx_good.json", dir_ / "links" / "fx_good.json");
  PluginRegistry reg(flag_dirs({dir_ / "links"}));
  EXPECT_TRUE(reg.plugins().empty());
  EXPECT_CONTAINS(refused_reason(reg, dir_ / "links" / "fx_good.so"), "is a symbolic link");
  // A symlinked folder is refused as a whole.
  fs::create_directory_symlink(dir_ / "real", dir_ / "dirlink");
  PluginRegistry via_link(flag_dirs({dir_ / "dirlink"}));
  EXPECT_TRUE(via_link.plugins().empty());
  EXPECT_CONTAINS(refused_reason(via_link, dir_ / "dirlink"), "plugin folder is a symbolic link");
}

TEST_F(Loader, FifoRefused) {
  make_dir(dir_ / "p");
  ASSERT_EQ(mkfifo((dir_ / "p" / "x.so").c_str(), 0644), 0);
  write_file(dir_ / "p" / "x.json", R"({"name": "x", "version": "1", "kinds": ["model"]})");
  PluginRegistry reg(flag_dirs({dir_ / "p"}));  // must not block on the fifo
  EXPECT_TRUE(reg.plugins().empty());
  EXPECT_EQ(refused_reason(reg, dir_ / "p" / "x.so"), "is not a regular file");
}

TEST_F(Loader, WritablePluginFilesRefused) {
  const fs::path so = stage_fixture("good", "fx_good", dir_ / "g");
  ASSERT_EQ(chmod(so.c_str(), 0775), 0);
  PluginRegistry group(flag_dirs({dir_ / "g"}));
  EXPECT_TRUE(group.plugins().empty());
  EXPECT_EQ(refused_reason(group, so), "is writable by its group (mode 775); run chmod go-w on it");

  ASSERT_EQ(chmod(so.c_str(), 0757), 0);
  PluginRegistry others(flag_dirs({dir_ / "g"}));
  EXPECT_TRUE(others.plugins().empty());
  EXPECT_CONTAINS(refused_reason(others, so), "is writable by others (mode 757)");

  // The sidecar counts as much as the library.
  ASSERT_EQ(chmod(so.c_str(), 0755), 0);
  const fs::path json = dir_ / "g" / "fx_good.json";
  ASSERT_EQ(chmod(json.c_str(), 0664), 0);
  PluginRegistry sidecar(flag_dirs({dir_ / "g"}));
  EXPECT_TRUE(sidecar.plugins().empty());
  EXPECT_CONTAINS(refused_reason(sidecar, json), "is writable by its group");
}

TEST_F(Loader, WritablePluginFolderRefused) {
  stage_fixture("good", "fx_good", dir_ / "g");
  ASSERT_EQ(chmod((dir_ / "g").c_str(), 0775), 0);
  PluginRegistry group(flag_dirs({dir_ / "g"}));
  EXPECT_TRUE(group.plugins().empty());
  EXPECT_EQ(refused_reason(group, dir_ / "g"),
            "plugin folder is writable by its group (mode 775); run chmod go-w on it");
  ASSERT_EQ(chmod((dir_ / "g").c_str(), 0757), 0);
  PluginRegistry others(flag_dirs({dir_ / "g"}));
  EXPECT_TRUE(others.plugins().empty());
  EXPECT_CONTAINS(refused_reason(others, dir_ / "g"), "plugin folder is writable by others");
  ASSERT_EQ(chmod((dir_ / "g").c_str(), 0755), 0);
}

// A plugin folder inside a folder that others may write to could be swapped for another one:
// refused, unless that folder is sticky (like /tmp), where only an entry's owner may rename it.
TEST_F(Loader, PluginFolderBelowAWritableFolderRefused) {
  stage_fixture("good", "fx_good", dir_ / "open" / "g");
  ASSERT_EQ(chmod((dir_ / "open").c_str(), 0777), 0);
  PluginRegistry open(flag_dirs({dir_ / "open" / "g"}));
  EXPECT_TRUE(open.plugins().empty());
  EXPECT_CONTAINS(
      refused_reason(open, dir_ / "open" / "g"),
      "lies in " + (dir_ / "open").string() + ", which is writable by others and not sticky");
  ASSERT_EQ(chmod((dir_ / "open").c_str(), 01777), 0);
  PluginRegistry sticky(flag_dirs({dir_ / "open" / "g"}));
  EXPECT_NE(sticky.find("fx_good"), nullptr);
  ASSERT_EQ(chmod((dir_ / "open").c_str(), 0755), 0);
}

TEST_F(Loader, MissingSidecar) {
  const fs::path so = stage_fixture("good", "fx_good", dir_);
  fs::remove(dir_ / "fx_good.json");
  PluginRegistry reg(flag_dirs({dir_}));
  EXPECT_TRUE(reg.plugins().empty());
  EXPECT_EQ(refused_reason(reg, so), "no sidecar manifest fx_good.json beside it");
}

// (i) Malformed sidecars: each is refused with its own message naming the sidecar.
TEST_F(Loader, MalformedSidecars) {
  struct Case {
    const char* file;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"bad_json.json", ":4:9 (byte 53): invalid JSON: parse error at line 4, column 9"},
      {"unknown_key.json", ": unknown key 'homepage' in sidecar manifest"},
      {"bad_option_table.json", ": option 'steps' needs a \"default\""},
      {"bad_default.json", ": option 'samples': its default is invalid"},
      {"unknown_kind.json",
       ": unknown plugin kind \"renderer\" (known: model, parallelism, "
       "data_source, collator, scheduler, video_autoencoder, text_encoder)"},
      {"bad_name.json", ": plugin name 'Fx-Good' must match [a-z][a-z0-9_]*"},
      {"no_kinds.json", ": sidecar manifest needs a non-empty array \"kinds\""},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.file);
    const fs::path d = dir_ / fs::path(c.file).stem();
    const fs::path so = stage_fixture("good", "fx_good", d);
    fs::copy_file(fixture_source(std::string("malformed/") + c.file), d / "fx_good.json",
                  fs::copy_options::overwrite_existing);
    PluginRegistry reg(flag_dirs({d}));
    EXPECT_TRUE(reg.plugins().empty());
    const std::string why = refused_reason(reg, so);
    EXPECT_CONTAINS(why, (d / "fx_good.json").string() + c.expected);
    // read_plugin_manifest says the same.
    try {
      wanhost::core::read_plugin_manifest((d / "fx_good.json").string(), so.string());
      ADD_FAILURE() << "read_plugin_manifest accepted " << c.file;
    } catch (const std::runtime_error& e) {
      EXPECT_CONTAINS(e.what(), c.expected);
    }
  }
  // A sidecar that is not an object, and one without a version.
  const fs::path d = dir_ / "misc";
  const fs::path so = stage_fixture("good", "fx_good", d);
  write_file(d / "fx_good.json", "[1, 2]");
  EXPECT_CONTAINS(refused_reason(PluginRegistry(flag_dirs({d})), so),
                  "sidecar manifest needs a string \"name\"");
  write_file(d / "fx_good.json", R"({"name": "fx_good", "kinds": ["model"]})");
  EXPECT_CONTAINS(refused_reason(PluginRegistry(flag_dirs({d})), so),
                  "sidecar manifest needs a string \"version\"");
}

TEST_F(Loader, OnlySoFilesAreConsidered) {
  stage_fixture("good", "fx_good", dir_);
  write_file(dir_ / "README.txt", "not a plugin");
  write_file(dir_ / "other.so.1", "not a plugin either");
  PluginRegistry reg(flag_dirs({dir_}));
  EXPECT_EQ(reg.plugins().size(), 1u);
  EXPECT_TRUE(reg.refused().empty());
}

TEST_F(Loader, MissingFoldersAreSkipped) {
  PluginRegistry reg(flag_dirs({dir_ / "does-not-exist"}));
  EXPECT_TRUE(reg.plugins().empty());
  EXPECT_TRUE(reg.refused().empty());
}

TEST_F(Loader, SearchPathOrderAndFiltering) {
  std::vector<std::string> warnings;
  const std::string cwd = fs::current_path().string();
  const auto path = wanhost::core::plugin_search_path(
      {"rel/dir", "/abs/flag"}, ":/env/one::relative/two:.:/env/x/../three:", &warnings);
  ASSERT_GE(path.size(), 4u);
  EXPECT_EQ(path[0].dir, (fs::path(cwd) / "rel/dir").string());
  EXPECT_EQ(path[0].origin, "--plugin-dir");
  EXPECT_EQ(path[1].dir, "/abs/flag");
  EXPECT_EQ(path[1].origin, "--plugin-dir");
  EXPECT_EQ(path[2].dir, "/env/one");
  EXPECT_EQ(path[2].origin, "WANHOST_PLUGIN_PATH");
  EXPECT_EQ(path[3].dir, "/env/three");
  EXPECT_EQ(path[3].origin, "WANHOST_PLUGIN_PATH");
  // Everything after the flags and the variable is the built-in folder; never the current one.
  for (std::size_t i = 4; i < path.size(); ++i) {
    EXPECT_EQ(path[i].origin, "built-in");
    EXPECT_NE(path[i].dir, cwd);
  }
  for (const auto& p : path) EXPECT_NE(p.dir, ".");
  // Relative entries of the variable are ignored with a warning each; empty ones silently.
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_EQ(warnings[0], "WANHOST_PLUGIN_PATH entry 'relative/two' ignored: not an absolute path");
  EXPECT_EQ(warnings[1], "WANHOST_PLUGIN_PATH entry '.' ignored: not an absolute path");
  // No variable at all.
  warnings.clear();
  const auto bare = wanhost::core::plugin_search_path({}, nullptr, &warnings);
  EXPECT_TRUE(warnings.empty());
  for (const auto& p : bare) EXPECT_EQ(p.origin, "built-in");
}

TEST_F(Loader, RegistryKeepsSearchOrder) {
  stage_fixture("good", "fx_good", dir_ / "first");
  stage_fixture("dup_a", "fx_dup", dir_ / "second");
  PluginRegistry reg({{(dir_ / "first").string(), "--plugin-dir"},
                      {(dir_ / "second").string(), "WANHOST_PLUGIN_PATH"}});
  ASSERT_EQ(reg.plugins().size(), 2u);
  EXPECT_EQ(reg.plugins()[0].name, "fx_good");
  EXPECT_EQ(reg.plugins()[1].name, "fx_dup");
  EXPECT_EQ(reg.describe_search_path(), "\n  " + (dir_ / "first").string() + " (--plugin-dir)\n  " +
                                            (dir_ / "second").string() + " (WANHOST_PLUGIN_PATH)");
}

TEST_F(Loader, RequireListsWhatExists) {
  stage_fixture("good", "fx_good", dir_ / "p");
  const fs::path bad = stage_fixture("good", "fx_good", dir_ / "q");
  ASSERT_EQ(chmod(bad.c_str(), 0777), 0);
  PluginRegistry reg(flag_dirs({dir_ / "p", dir_ / "q"}));
  try {
    reg.require("fx_nope", "", "/model/plugin");
    FAIL() << "require() accepted an unknown plugin";
  } catch (const wanhost::ConfigError& e) {
    EXPECT_EQ(e.pointer(), "/model/plugin");
    EXPECT_CONTAINS(e.what(), "no plugin named 'fx_nope'; available: fx_good; searched:\n  " +
                                  (dir_ / "p").string() + " (--plugin-dir)\n  " +
                                  (dir_ / "q").string() + " (--plugin-dir)");
    EXPECT_CONTAINS(e.what(), "\n  refused " + bad.string() + ": is writable by others");
  }
  try {
    reg.require("fx_good", "model", "/model/plugin");
    FAIL() << "require() accepted a plugin of the wrong kind";
  } catch (const wanhost::ConfigError& e) {
    EXPECT_CONTAINS(e.what(),
                    "plugin 'fx_good' is not a model plugin (it provides data_source); "
                    "available model plugins: none");
  }
  EXPECT_EQ(&reg.require("fx_good", "data_source", "/data/plugin"), reg.find("fx_good"));
}

TEST_F(Loader, LoadingAnUnknownNameIsAConfigError) {
  PluginRegistry reg(flag_dirs({dir_}));
  EXPECT_THROW(reg.load("fx_nope"), wanhost::ConfigError);
}

}  // namespace
