// Run-manifest resolution in-process (core/run/resolve.hpp): built-in default recipe <-
// manifest <- --plugins <- --set, validated against the run schema and the selected plugins'
// option tables. The registry holds the fixture plugins of tests/core/fixtures/config (stand-ins
// named like the built-in plugins of the default recipe, plus fx_data_alt and fx_combo), so these
// tests do not depend on the real plugins. The stand-ins' own options are named fx_*; the keys the
// default recipe sets are accepted as they are (see stage_config_plugins), and the tests do not
// depend on the recipe's values beyond comparing with default_recipe().
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "config/run_config.hpp"
#include "config/schema.hpp"
#include "core_test_util.hpp"
#include "plugin/registry.hpp"
#include "run/resolve.hpp"
#include "wanhost/errors.hpp"

namespace {

using namespace coretest;
using wanhost::ConfigError;
using wanhost::Json;
using wanhost::core::PluginRegistry;
using wanhost::core::RunConfigRequest;

const char* kOneStage =
    R"("stages": [{"name": "only", "steps": 5, "global_batch": 4, "micro_batch": 2}])";

class RunConfig : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = scratch_dir();
    stage_config_plugins(dir_ / "plugins", wanhost::core::default_recipe());
    reg_ = std::make_unique<PluginRegistry>(
        std::vector<wanhost::core::SearchPath>{{(dir_ / "plugins").string(), "--plugin-dir"}});
    ASSERT_EQ(reg_->plugins().size(), 8u);
    ASSERT_TRUE(reg_->refused().empty());
  }

  // Writes a manifest and returns its path.
  std::string manifest(const std::string& text, const std::string& name = "m.json") {
    write_file(dir_ / name, text);
    return (dir_ / name).string();
  }

  Json resolve(const std::string& manifest_text = "", std::vector<std::string> plugins = {},
               std::vector<std::string> sets = {}) {
    RunConfigRequest r;
    if (!manifest_text.empty()) r.manifest_paths = {manifest(manifest_text)};
    r.plugins = std::move(plugins);
    r.sets = std::move(sets);
    return wanhost::core::resolve_run_config(r, *reg_);
  }

  // The ConfigError of resolving (fails the test when there is none).
  ConfigError error(const std::string& manifest_text, std::vector<std::string> plugins = {},
                    std::vector<std::string> sets = {}) {
    try {
      resolve(manifest_text, std::move(plugins), std::move(sets));
    } catch (const ConfigError& e) {
      return e;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "expected a ConfigError, got: " << e.what();
      return ConfigError("?", "?");
    }
    ADD_FAILURE() << "expected a ConfigError, the config resolved";
    return ConfigError("?", "?");
  }

  fs::path dir_;
  std::unique_ptr<PluginRegistry> reg_;
};

TEST_F(RunConfig, DefaultRecipeResolvesWithDefaultsFilled) {
  const Json& recipe = wanhost::core::default_recipe();
  const Json c = resolve();
  EXPECT_EQ(c["model"]["plugin"], "wan21_dit");
  EXPECT_EQ(c["parallelism"]["plugin"], "ddp");
  EXPECT_EQ(c["scheduler"]["plugin"], "flow_matching");
  EXPECT_EQ(c["data"]["plugin"], "synthetic");
  // What the recipe sets stays; the rest comes from the plugins' option tables ...
  if (recipe["model"].contains("wan21_dit")) {
    const Json& given = recipe["model"]["wan21_dit"];
    for (auto it = given.begin(); it != given.end(); ++it) {
      EXPECT_EQ(c["model"]["wan21_dit"][it.key()], it.value()) << it.key();
    }
  }
  EXPECT_EQ(c["model"]["wan21_dit"]["fx_dim"], 64);
  EXPECT_EQ(c["model"]["wan21_dit"]["fx_qk_norm"], true);
  EXPECT_TRUE(c["model"]["wan21_dit"]["fx_weights"].is_null());
  EXPECT_EQ(c["model"]["wan21_dit"]["fx_extra"], Json::object());
  EXPECT_EQ(c["parallelism"]["ddp"]["fx_bucket_mb"], 25);  // a section without a config object
  EXPECT_EQ(c["scheduler"]["flow_matching"]["fx_shift"], 5.0);
  EXPECT_EQ(c["data"]["synthetic"]["fx_mode"], "frames");
  // ... and from the run schema.
  EXPECT_EQ(c["collator"]["plugin"], "dense");
  EXPECT_EQ(c["run"]["device"], "auto");
  EXPECT_EQ(c["run"]["seed"], recipe["run"].value("seed", 1234));
  ASSERT_EQ(c["stages"].size(), recipe["stages"].size());
  EXPECT_EQ(c["stages"][0]["optimizer"]["beta2"], 0.999);
  EXPECT_EQ(c["stages"][0]["optimizer_state"], "fresh");
  EXPECT_EQ(c["checkpoint"]["at_stage_end"], true);

  const wanhost::PluginConfig m = wanhost::core::section_config(c, "model");
  EXPECT_EQ(m.plugin, "wan21_dit");
  EXPECT_EQ(m.pointer, "/model/wan21_dit");
  EXPECT_EQ(m.values["fx_dim"], 64);
}

TEST_F(RunConfig, StageDataOverridesMergeOverTheDataSection) {
  const Json c = resolve(R"({
    "data": {"synthetic": {"fx_samples": 100}},
    "stages": [{"name": "a", "steps": 1, "global_batch": 1, "micro_batch": 1},
               {"name": "b", "steps": 1, "global_batch": 1, "micro_batch": 1,
                "data": {"synthetic": {"fx_mode": "clips"}}}]
  })");
  const wanhost::PluginConfig d0 = wanhost::core::stage_data_config(c, 0);
  EXPECT_EQ(d0.plugin, "synthetic");
  EXPECT_EQ(d0.pointer, "/data/synthetic");
  EXPECT_EQ(d0.values["fx_mode"], "frames");
  EXPECT_EQ(d0.values["fx_samples"], 100);
  const wanhost::PluginConfig d1 = wanhost::core::stage_data_config(c, 1);
  // Errors name where the user set each value: the override in the stage, the rest in /data.
  EXPECT_EQ(d1.pointer, "/data/synthetic");
  EXPECT_EQ(d1.where("fx_mode"), "/stages/1/data/synthetic/fx_mode");
  EXPECT_EQ(d1.where("fx_samples"), "/data/synthetic/fx_samples");
  EXPECT_EQ(d1.values["fx_mode"], "clips");
  EXPECT_EQ(d1.values["fx_samples"], 100);
}

TEST_F(RunConfig, ManifestUsingOtherPlugins) {
  const Json c = resolve(R"({
    "data": {"plugin": "fx_data_alt", "fx_data_alt": {"root": "/datasets/x"}},
    "model": {"plugin": "fx_combo"},
    "stages": [{"name": "only", "steps": 5, "global_batch": 4, "micro_batch": 2,
                "data": {"fx_data_alt": {"shuffle": false}}}]
  })");
  EXPECT_EQ(c["data"]["plugin"], "fx_data_alt");
  EXPECT_EQ(c["data"]["fx_data_alt"]["root"], "/datasets/x");
  EXPECT_EQ(c["data"]["fx_data_alt"]["shuffle"], true);
  EXPECT_EQ(c["data"]["fx_data_alt"]["resolution"], Json::parse("[256, 256]"));
  EXPECT_EQ(c["model"]["fx_combo"]["width"], 32);
  ASSERT_EQ(c["stages"].size(), 1u);  // arrays are replaced, not merged
  EXPECT_EQ(c["stages"][0]["name"], "only");
  const wanhost::PluginConfig d = wanhost::core::stage_data_config(c, 0);
  EXPECT_EQ(d.values["shuffle"], false);
  EXPECT_EQ(d.values["root"], "/datasets/x");
}

TEST_F(RunConfig, ManifestsAreLayeredInOrder) {
  RunConfigRequest r;
  r.manifest_paths = {
      manifest(
          R"({"run": {"seed": 1, "name": "first"}, "data": {"synthetic": {"fx_samples": 10}}})",
          "first.json"),
      manifest(R"({"run": {"seed": 2}, "data": {"synthetic": {"fx_mode": "clips"}}})",
               "second.json")};
  const Json c = wanhost::core::resolve_run_config(r, *reg_);
  EXPECT_EQ(c["run"]["seed"], 2);
  EXPECT_EQ(c["run"]["name"], "first");
  EXPECT_EQ(c["data"]["synthetic"]["fx_samples"], 10);
  EXPECT_EQ(c["data"]["synthetic"]["fx_mode"], "clips");
  // An error in the second names the second.
  write_file(dir_ / "second.json", "{\n  \"run\": 1,\n");
  try {
    wanhost::core::resolve_run_config(r, *reg_);
    FAIL() << "broken second manifest accepted";
  } catch (const ConfigError& e) {
    EXPECT_CONTAINS(e.what(), (dir_ / "second.json").string() + ":");
  }
}

TEST_F(RunConfig, StageDefaultsUnderEveryStage) {
  const Json c = resolve(R"({
    "stage_defaults": {"text_rows": 226, "optimizer": {"lr": 0.1, "eps": 1e-6}},
    "stages": [{"name": "a", "steps": 1, "global_batch": 1, "micro_batch": 1},
               {"name": "b", "steps": 1, "global_batch": 1, "micro_batch": 1,
                "optimizer": {"lr": 0.2}, "text_rows": 512}]
  })");
  EXPECT_EQ(c["stages"][0]["text_rows"], 226);
  EXPECT_EQ(c["stages"][0]["optimizer"]["lr"], 0.1);
  EXPECT_EQ(c["stages"][1]["text_rows"], 512);
  EXPECT_EQ(c["stages"][1]["optimizer"]["lr"], 0.2);
  EXPECT_EQ(c["stages"][1]["optimizer"]["eps"], 1e-6);
  auto e = error(R"({"stage_defaults": {"optimizer": {"lrr": 0.1}}})");
  EXPECT_EQ(e.pointer(), "/stage_defaults/optimizer/lrr");
  EXPECT_CONTAINS(e.what(), "did you mean 'lr'?");
  e = error(R"({"stage_defaults": {"text_rows": -1}})");
  EXPECT_EQ(e.pointer(), "/stage_defaults/text_rows");
}

TEST_F(RunConfig, TypoKeySuggestsTheRightOne) {
  auto e = error(R"({"run": {"seeed": 7}})");
  EXPECT_EQ(e.pointer(), "/run/seeed");
  EXPECT_CONTAINS(e.what(),
                  "config error at /run/seeed: unknown key 'seeed' (did you mean 'seed'?)");
  e = error(R"({"chekpoint": {}})");
  EXPECT_EQ(e.pointer(), "/chekpoint");
  EXPECT_CONTAINS(e.what(), "did you mean 'checkpoint'?");
  e = error(R"({"stages": [{"name": "a", "steps": 1, "global_batch": 1, "micro_batch": 1,
                            "micro_bach": 2}]})");
  EXPECT_EQ(e.pointer(), "/stages/0/micro_bach");
  EXPECT_CONTAINS(e.what(), "did you mean 'micro_batch'?");
}

TEST_F(RunConfig, WrongType) {
  auto e = error(R"({"run": {"seed": "abc"}})");
  EXPECT_EQ(e.pointer(), "/run/seed");
  EXPECT_CONTAINS(e.what(), "expected integer, got string \"abc\"");
  e = error(R"({"stages": {"name": "a"}})");
  EXPECT_EQ(e.pointer(), "/stages");
  EXPECT_CONTAINS(e.what(), "expected array, got object");
}

TEST_F(RunConfig, OutOfRange) {
  auto e = error(std::string("{") + R"("stages": [{"name": "a", "steps": 0, "global_batch": 1,
                                                   "micro_batch": 1}]})");
  EXPECT_EQ(e.pointer(), "/stages/0/steps");
  EXPECT_CONTAINS(e.what(), "value 0 is below the minimum 1");
  e = error(R"({"stages": [{"name": "a", "steps": 1, "global_batch": 1, "micro_batch": 1,
                            "optimizer": {"beta1": 1.5}}]})");
  EXPECT_EQ(e.pointer(), "/stages/0/optimizer/beta1");
  EXPECT_CONTAINS(e.what(), "value 1.5 is above the maximum 1");
}

TEST_F(RunConfig, EnumViolation) {
  auto e = error(R"({"run": {"device": "tpu"}})");
  EXPECT_EQ(e.pointer(), "/run/device");
  EXPECT_CONTAINS(e.what(), R"(value "tpu" is not one of ["auto","cpu","cuda"])");
}

TEST_F(RunConfig, CarriedOptimizerStateNeedsThePreviousWeights) {
  const std::string stage0 = R"({"name": "a", "steps": 1, "global_batch": 1, "micro_batch": 1})";
  for (const char* init : {"random", "/some/weights"}) {
    auto e = error(R"({"stages": [)" + stage0 +
                   R"(, {"name": "b", "steps": 1, "global_batch": 1, "micro_batch": 1, "init": ")" +
                   init + R"(", "optimizer_state": "carry"}]})");
    EXPECT_EQ(e.pointer(), "/stages/1/optimizer_state");
    EXPECT_CONTAINS(e.what(), "'carry' keeps the optimizer state of the previous stage's weights");
    EXPECT_CONTAINS(e.what(), init);
  }
  // Carrying across a stage that continues from the previous weights is fine.
  const auto ok = resolve(R"({"stages": [)" + stage0 +
                          R"(, {"name": "b", "steps": 1, "global_batch": 1, "micro_batch": 1,
                                "optimizer_state": "carry"}]})");
  EXPECT_EQ(ok["stages"][1]["optimizer_state"], "carry");
}

TEST_F(RunConfig, MissingRequiredValue) {
  auto e = error(R"({"stages": [{"name": "a", "steps": 1, "global_batch": 1}]})");
  EXPECT_EQ(e.pointer(), "/stages/0/micro_batch");
  EXPECT_CONTAINS(e.what(), "missing required value");
}

TEST_F(RunConfig, BrokenJsonNamesFileLineAndColumn) {
  const std::string path = manifest("{\n  \"run\": {\n    \"seed\": ]\n  }\n}\n", "broken.json");
  RunConfigRequest r;
  r.manifest_paths = {path};
  try {
    wanhost::core::resolve_run_config(r, *reg_);
    FAIL() << "broken JSON accepted";
  } catch (const ConfigError& e) {
    EXPECT_CONTAINS(e.what(), path + ":3:13 ");
    EXPECT_CONTAINS(e.what(), "invalid JSON");
  }
  // Unterminated at the very end: the last line.
  const std::string open = manifest("{\n  \"run\": {\"seed\": 1}", "open.json");
  r.manifest_paths = {open};
  try {
    wanhost::core::resolve_run_config(r, *reg_);
    FAIL() << "unterminated JSON accepted";
  } catch (const ConfigError& e) {
    EXPECT_CONTAINS(e.what(), open + ":2:");
  }
}

TEST_F(RunConfig, ManifestMustBeAnObjectAndReadable) {
  auto e = error("[1, 2]");
  EXPECT_CONTAINS(e.what(), "m.json: a manifest must be a JSON object");
  RunConfigRequest r;
  r.manifest_paths = {(dir_ / "absent.json").string()};
  try {
    wanhost::core::resolve_run_config(r, *reg_);
    FAIL() << "a missing manifest was accepted";
  } catch (const ConfigError& e2) {
    EXPECT_CONTAINS(e2.what(),
                    "manifest " + (dir_ / "absent.json").string() + ": cannot open: No such file");
  }
}

TEST_F(RunConfig, SetOnAPathThatDoesNotExist) {
  auto e = error("", {}, {"nothere.x=1"});
  EXPECT_EQ(e.pointer(), "/nothere");
  EXPECT_CONTAINS(e.what(), "--set nothere.x: there is no such setting");
  e = error("", {}, {"stages.7.steps=1"});
  EXPECT_EQ(e.pointer(), "/stages/7");
  EXPECT_CONTAINS(e.what(), "there is no such setting");
  e = error("", {}, {"run.seed.deeper=1"});
  EXPECT_EQ(e.pointer(), "/run/seed");
  // The last step may be new to the object, but the schema must know it.
  e = error("", {}, {"run.sead=1"});
  EXPECT_EQ(e.pointer(), "/run/sead");
  EXPECT_CONTAINS(e.what(), "did you mean 'seed'?");
  e = error("", {}, {"run.seed"});
  EXPECT_CONTAINS(e.what(), "--set 'run.seed': expected KEY.PATH=VALUE");
}

TEST_F(RunConfig, SetChangesValues) {
  const Json c = resolve("", {},
                         {"run.seed=7", "stages.0.steps=3", "/run/name=pointer-form",
                          "checkpoint.export_diffusers=false", "data.synthetic.fx_samples=8"});
  EXPECT_EQ(c["run"]["seed"], 7);
  EXPECT_EQ(c["stages"][0]["steps"], 3);
  EXPECT_EQ(c["stages"].size(), wanhost::core::default_recipe()["stages"].size());
  EXPECT_EQ(c["run"]["name"], "pointer-form");
  EXPECT_EQ(c["checkpoint"]["export_diffusers"], false);  // only a schema default before
  EXPECT_EQ(c["data"]["synthetic"]["fx_samples"], 8);     // only an option default before
  EXPECT_EQ(c["data"]["synthetic"]["fx_mode"], "frames");
  // The last --set of a key wins.
  EXPECT_EQ(resolve("", {}, {"run.seed=1", "run.seed=2"})["run"]["seed"], 2);
  // Over a manifest.
  EXPECT_EQ(resolve(R"({"run": {"seed": 5}})", {}, {"run.seed=6"})["run"]["seed"], 6);
}

TEST_F(RunConfig, SetTakesJsonValuesElseStrings) {
  const Json c =
      resolve("", {},
              {"run.seed=42", "stages.0.optimizer.lr=0.25", "checkpoint.at_stage_end=false",
               "model.wan21_dit.fx_extra={\"k\": [1, 2]}", "stages.0.optimizer={\"eps\": 0.5}",
               "model.wan21_dit.fx_weights=null", "run.name=hello world", "run.out=runs/x",
               "description=\"42\""});
  EXPECT_TRUE(c["run"]["seed"].is_number_integer());
  EXPECT_EQ(c["run"]["seed"], 42);
  EXPECT_EQ(c["checkpoint"]["at_stage_end"], false);
  EXPECT_EQ(c["model"]["wan21_dit"]["fx_extra"], Json::parse(R"({"k": [1, 2]})"));
  // An object replaces the old one (the lr set before is gone); the schema fills the rest again.
  EXPECT_EQ(c["stages"][0]["optimizer"]["eps"], 0.5);
  EXPECT_EQ(c["stages"][0]["optimizer"]["lr"], 5e-5);
  EXPECT_EQ(c["stages"][0]["optimizer"]["beta1"], 0.9);
  EXPECT_TRUE(c["model"]["wan21_dit"]["fx_weights"].is_null());
  EXPECT_EQ(c["run"]["name"], "hello world");
  EXPECT_EQ(c["run"]["out"], "runs/x");
  EXPECT_EQ(c["description"], "42");
  EXPECT_EQ(resolve("", {}, {"stages.0.optimizer.lr=0.25"})["stages"][0]["optimizer"]["lr"], 0.25);
  // A value that parses as JSON of the wrong type is reported at its pointer.
  auto e = error("", {}, {"run.name=42"});
  EXPECT_EQ(e.pointer(), "/run/name");
  EXPECT_CONTAINS(e.what(), "expected string, got integer 42");
  e = error("", {}, {"run.seed=abc"});
  EXPECT_EQ(e.pointer(), "/run/seed");
  EXPECT_CONTAINS(e.what(), "expected integer, got string \"abc\"");
  e = error("", {}, {"run.device=tpu"});
  EXPECT_EQ(e.pointer(), "/run/device");
}

TEST_F(RunConfig, PluginsChosenByName) {
  // A plugin becomes the choice for every kind it provides.
  Json c = resolve("", {"fx_combo"});
  EXPECT_EQ(c["model"]["plugin"], "fx_combo");
  EXPECT_EQ(c["scheduler"]["plugin"], "fx_combo");
  EXPECT_EQ(c["model"]["fx_combo"]["width"], 32);
  EXPECT_EQ(c["scheduler"]["fx_combo"]["width"], 32);
  EXPECT_EQ(c["parallelism"]["plugin"], "ddp");
  // Collators are plugins like the others.
  EXPECT_EQ(resolve("", {"packed"})["collator"]["plugin"], "packed");
  // Over a manifest, and with --set on the chosen plugin's options.
  c = resolve(std::string("{") + kOneStage + "}", {"fx_data_alt"},
              {"data.fx_data_alt.root=/elsewhere"});
  EXPECT_EQ(c["data"]["plugin"], "fx_data_alt");
  EXPECT_EQ(c["data"]["fx_data_alt"]["root"], "/elsewhere");
}

TEST_F(RunConfig, UnknownPluginNameListsAvailablePluginsAndFolders) {
  auto e = error("", {"nope"});
  EXPECT_CONTAINS(e.what(),
                  "no plugin named 'nope'; available: ddp, dense, flow_matching, fx_combo, "
                  "fx_data_alt, packed, synthetic, wan21_dit; searched:\n  " +
                      (dir_ / "plugins").string() + " (--plugin-dir)");
  e = error(R"({"model": {"plugin": "nope"}})");
  EXPECT_EQ(e.pointer(), "/model/plugin");
  EXPECT_CONTAINS(e.what(), "no plugin named 'nope'; available model plugins: fx_combo, wan21_dit");
  e = error(R"({"model": {"plugin": "synthetic"}})");
  EXPECT_EQ(e.pointer(), "/model/plugin");
  EXPECT_CONTAINS(e.what(), "plugin 'synthetic' is not a model plugin (it provides data_source)");
  e = error(R"({"collator": {"plugin": "sparse"}})");
  EXPECT_EQ(e.pointer(), "/collator/plugin");
  EXPECT_CONTAINS(e.what(), "available collator plugins: dense, packed");
}

TEST_F(RunConfig, PluginConfigErrorsNameThePlugin) {
  auto e = error(R"({"model": {"wan21_dit": {"fx_variannt": "tiny"}}})");
  EXPECT_EQ(e.pointer(), "/model/wan21_dit/fx_variannt");
  EXPECT_EQ(e.plugin(), "wan21_dit");
  EXPECT_CONTAINS(e.what(),
                  "config error at /model/wan21_dit/fx_variannt (plugin 'wan21_dit'): "
                  "unknown key 'fx_variannt' (did you mean 'fx_variant'?)");
  e = error(R"({"model": {"wan21_dit": {"fx_variant": "huge"}}})");
  EXPECT_EQ(e.pointer(), "/model/wan21_dit/fx_variant");
  EXPECT_EQ(e.plugin(), "wan21_dit");
  EXPECT_CONTAINS(e.what(), R"(value "huge" is not one of ["tiny","small"])");
  e = error(R"({"model": {"wan21_dit": {"fx_dim": 4}}})");
  EXPECT_EQ(e.pointer(), "/model/wan21_dit/fx_dim");
  EXPECT_CONTAINS(e.what(), "below the minimum 8");
  e = error(R"({"model": {"wan21_dit": {"fx_qk_norm": "yes"}}})");
  EXPECT_EQ(e.pointer(), "/model/wan21_dit/fx_qk_norm");
  EXPECT_CONTAINS(e.what(), "expected boolean, got string");
  e = error(R"({"model": {"wan21_dit": 3}})");
  EXPECT_EQ(e.pointer(), "/model/wan21_dit");
  EXPECT_CONTAINS(e.what(), "expected the config object of plugin 'wan21_dit'");
  // Configs kept for another plugin of the section are checked too.
  e = error(R"({"model": {"fx_combo": {"width": 0}}})");
  EXPECT_EQ(e.pointer(), "/model/fx_combo/width");
  EXPECT_EQ(e.plugin(), "fx_combo");
  // A key that is no plugin of the section's kind.
  e = error(R"({"model": {"synthetic": {}}})");
  EXPECT_EQ(e.pointer(), "/model/synthetic");
  EXPECT_CONTAINS(e.what(),
                  "'synthetic' is neither \"plugin\" nor the name of an installed model "
                  "plugin");
  // Through --set.
  e = error("", {}, {"model.wan21_dit.fx_dimm=3"});
  EXPECT_EQ(e.pointer(), "/model/wan21_dit/fx_dimm");
  EXPECT_EQ(e.plugin(), "wan21_dit");
  EXPECT_CONTAINS(e.what(), "did you mean 'fx_dim'?");
}

TEST_F(RunConfig, StageDataOverridesKeyedByTheWrongPlugin) {
  // Overrides for another data plugin are dropped (with a warning); a name that is no data
  // plugin is an error.
  const Json c = resolve(R"({"stages": [{"name": "a", "steps": 1, "global_batch": 1,
                                         "micro_batch": 1, "data": {"fx_data_alt": {"root": "/x"}}}]})");
  EXPECT_TRUE(c["stages"][0]["data"].empty());
  auto e = error(R"({"stages": [{"name": "a", "steps": 1, "global_batch": 1, "micro_batch": 1,
                                 "data": {"fx_combo": {}}}]})");
  EXPECT_EQ(e.pointer(), "/stages/0/data/fx_combo");
  EXPECT_CONTAINS(e.what(), "'fx_combo' is not an installed data source plugin");
  e = error(R"({"stages": [{"name": "a", "steps": 1, "global_batch": 1, "micro_batch": 1,
                            "data": {"synthetic": {"fx_mode": "video"}}}]})");
  EXPECT_EQ(e.pointer(), "/stages/0/data/synthetic/fx_mode");
  EXPECT_EQ(e.plugin(), "synthetic");
  e = error(R"({"stages": [{"name": "a", "steps": 1, "global_batch": 1, "micro_batch": 1,
                            "data": {"synthetic": {}}}]})",
            {}, {"stages.0.data.synthetic.fx_mdoe=clips"});
  EXPECT_EQ(e.pointer(), "/stages/0/data/synthetic/fx_mdoe");
  EXPECT_CONTAINS(e.what(), "did you mean 'fx_mode'?");
}

// --plugins that swaps the data source of the default recipe: the recipe's stage data overrides
// (keyed "synthetic") are dropped, not an error.
TEST_F(RunConfig, PluginsSwapTheDataSourceOfTheDefaultRecipe) {
  const Json c = resolve("", {"fx_data_alt"});
  EXPECT_EQ(c["data"]["plugin"], "fx_data_alt");
  for (const auto& stage : c["stages"]) EXPECT_FALSE(stage["data"].contains("synthetic"));
}
// --set into an array element that exists only as a default materialises an object
//    ({"0": 512}) instead of the array.
TEST_F(RunConfig, SetIntoAnArrayThatIsOnlyADefault) {
  const Json c = resolve(R"({"data": {"plugin": "fx_data_alt"}, "stages": [{"name": "a",
                             "steps": 1, "global_batch": 1, "micro_batch": 1}]})",
                         {}, {"data.fx_data_alt.resolution.0=512"});
  EXPECT_EQ(c["data"]["fx_data_alt"]["resolution"], Json::parse("[512, 256]"));
}

// The embedded recipe and schema agree, and validation fills every default the recipe leaves out.
TEST(RunSchema, DefaultRecipeMatchesTheRunSchema) {
  const Json& schema = wanhost::core::run_schema();
  Json recipe = wanhost::core::default_recipe();
  wanhost::core::validate_config(recipe, schema, "");
  for (const char* section : {"run", "checkpoint", "logging"})
    for (auto it = schema["properties"][section]["properties"].begin();
         it != schema["properties"][section]["properties"].end(); ++it)
      EXPECT_TRUE(recipe[section].contains(it.key())) << section << "." << it.key();
  const Json& stage = schema["properties"]["stages"]["items"]["properties"];
  for (const auto& s : recipe["stages"]) {
    for (auto it = stage.begin(); it != stage.end(); ++it)
      EXPECT_TRUE(s.contains(it.key())) << it.key();
    EXPECT_EQ(s["optimizer"].size(), stage["optimizer"]["properties"].size());
    EXPECT_EQ(s["lr_schedule"].size(), stage["lr_schedule"]["properties"].size());
  }
  EXPECT_TRUE(recipe["collator"].contains("plugin"));
}

// The same checks against the real built-in plugins, when this build has them.
TEST(RunConfigBuiltins, DefaultRecipeResolvesWithTheRealPlugins) {
  if (!have_builtin_plugins()) GTEST_SKIP() << "the built-in plugins are not built";
  PluginRegistry reg(std::vector<wanhost::core::SearchPath>{{WANHOST_BUILTIN_PLUGINS, "built-in"}});
  for (const auto& [file, why] : reg.refused()) ADD_FAILURE() << "refused " << file << ": " << why;
  const Json c = wanhost::core::resolve_run_config(RunConfigRequest{}, reg);
  EXPECT_EQ(c["model"]["plugin"], "wan21_dit");
  EXPECT_EQ(c["data"]["plugin"], "synthetic");
  RunConfigRequest typo;
  typo.sets = {"model.wan21_dit.no_such_option_anywhere=1"};
  try {
    wanhost::core::resolve_run_config(typo, reg);
    FAIL() << "a typo in the model's config was accepted";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.pointer(), "/model/wan21_dit/no_such_option_anywhere");
    EXPECT_EQ(e.plugin(), "wan21_dit");
  }
}

}  // namespace
