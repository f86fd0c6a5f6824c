// The config schema language (core/config/schema.hpp): defaults, nested objects, arrays,
// nullable values, ranges, enums, unknown keys, and checks of plugins' option tables.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "config/schema.hpp"
#include "wanhost/errors.hpp"

namespace {

using wanhost::ConfigError;
using wanhost::Json;
using wanhost::core::validate_config;

// The ConfigError `f` throws (fails the test when it throws nothing or something else).
template <class F>
ConfigError config_error(F&& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected a ConfigError, got: " << e.what();
    return ConfigError("", "");
  }
  ADD_FAILURE() << "expected a ConfigError, nothing was thrown";
  return ConfigError("", "");
}

template <class F>
std::string runtime_error_of(F&& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a std::runtime_error, nothing was thrown";
  return {};
}

const Json kSpec = Json::parse(R"({
  "type": "object",
  "additional": false,
  "properties": {
    "name": {"type": "string", "default": "run"},
    "steps": {"type": "integer", "default": 10, "min": 1, "max": 100},
    "lr": {"type": "number", "default": 0.5, "min": 0, "max": 1},
    "mode": {"type": "string", "default": "fast", "enum": ["fast", "slow"]},
    "flag": {"type": "boolean", "default": false},
    "weights": {"type": "string", "nullable": true, "default": null},
    "opt": {
      "type": "object",
      "additional": false,
      "properties": {
        "beta": {"type": "number", "default": 0.9},
        "inner": {"type": "object", "properties": {"depth": {"type": "integer", "default": 3}}, "additional": false}
      }
    },
    "stages": {
      "type": "array",
      "min_items": 1,
      "default": [{}],
      "items": {
        "type": "object",
        "additional": false,
        "properties": {
          "id": {"type": "string", "required": true},
          "batch": {"type": "integer", "default": 4, "min": 1}
        }
      }
    },
    "free": {"type": "object", "additional": true, "properties": {"known": {"type": "integer", "default": 1}}},
    "anything": {"type": "object"}
  }
})");

TEST(Schema, DefaultsFilledEverywhere) {
  Json v = Json::parse(R"({"stages": [{"id": "a"}, {"id": "b", "batch": 2}]})");
  validate_config(v, kSpec, "");
  EXPECT_EQ(v["name"], "run");
  EXPECT_EQ(v["steps"], 10);
  EXPECT_EQ(v["lr"], 0.5);
  EXPECT_EQ(v["mode"], "fast");
  EXPECT_EQ(v["flag"], false);
  EXPECT_TRUE(v["weights"].is_null());
  // An absent object without a default is created and filled.
  EXPECT_EQ(v["opt"]["beta"], 0.9);
  EXPECT_EQ(v["opt"]["inner"]["depth"], 3);
  // Items of arrays get their defaults too; given values stay.
  EXPECT_EQ(v["stages"][0]["batch"], 4);
  EXPECT_EQ(v["stages"][1]["batch"], 2);
  EXPECT_EQ(v["free"]["known"], 1);
}

TEST(Schema, GivenValuesKept) {
  Json v = Json::parse(
      R"({"name": "x", "steps": 100, "lr": 0, "mode": "slow", "flag": true, "weights": "w.st",
          "opt": {"beta": 0.5, "inner": {"depth": 7}}, "stages": [{"id": "s"}]})");
  validate_config(v, kSpec, "");
  EXPECT_EQ(v["name"], "x");
  EXPECT_EQ(v["steps"], 100);
  EXPECT_EQ(v["lr"], 0);
  EXPECT_EQ(v["mode"], "slow");
  EXPECT_EQ(v["flag"], true);
  EXPECT_EQ(v["weights"], "w.st");
  EXPECT_EQ(v["opt"]["inner"]["depth"], 7);
}

TEST(Schema, DefaultOfAnArrayIsValidatedToo) {
  // The default [{}] lacks the required "id" of its items.
  Json v = Json::object();
  auto e = config_error([&] { validate_config(v, kSpec, ""); });
  EXPECT_EQ(e.pointer(), "/stages/0/id");
  EXPECT_NE(std::string(e.what()).find("missing required value"), std::string::npos) << e.what();
}

TEST(Schema, WrongTypeNamesPointerAndBothTypes) {
  Json v = Json::parse(R"({"stages": [{"id": "a"}], "opt": {"inner": {"depth": "deep"}}})");
  auto e = config_error([&] { validate_config(v, kSpec, "/root"); });
  EXPECT_EQ(e.pointer(), "/root/opt/inner/depth");
  EXPECT_EQ(std::string(e.what()),
            "config error at /root/opt/inner/depth: expected integer, got string \"deep\"");
}

TEST(Schema, IntegerAndNumber) {
  Json v = Json::parse(R"({"stages": [{"id": "a"}], "steps": 2.5})");
  auto e = config_error([&] { validate_config(v, kSpec, ""); });
  EXPECT_EQ(e.pointer(), "/steps");
  EXPECT_NE(std::string(e.what()).find("expected integer, got number 2.5"), std::string::npos);
  // An integer is a number.
  Json ok = Json::parse(R"({"stages": [{"id": "a"}], "lr": 1})");
  EXPECT_NO_THROW(validate_config(ok, kSpec, ""));
  // A boolean is not an integer.
  Json b = Json::parse(R"({"stages": [{"id": "a"}], "steps": true})");
  EXPECT_EQ(config_error([&] { validate_config(b, kSpec, ""); }).pointer(), "/steps");
}

TEST(Schema, Nullable) {
  Json v = Json::parse(R"({"stages": [{"id": "a"}], "weights": null})");
  EXPECT_NO_THROW(validate_config(v, kSpec, ""));
  Json n = Json::parse(R"({"stages": [{"id": "a"}], "name": null})");
  auto e = config_error([&] { validate_config(n, kSpec, ""); });
  EXPECT_EQ(e.pointer(), "/name");
  EXPECT_NE(std::string(e.what()).find("expected string, got null"), std::string::npos);
}

TEST(Schema, MinAndMax) {
  Json lo = Json::parse(R"({"stages": [{"id": "a"}], "steps": 0})");
  auto e = config_error([&] { validate_config(lo, kSpec, ""); });
  EXPECT_EQ(e.pointer(), "/steps");
  EXPECT_NE(std::string(e.what()).find("value 0 is below the minimum 1"), std::string::npos)
      << e.what();
  Json hi = Json::parse(R"({"stages": [{"id": "a"}], "lr": 1.5})");
  e = config_error([&] { validate_config(hi, kSpec, ""); });
  EXPECT_EQ(e.pointer(), "/lr");
  EXPECT_NE(std::string(e.what()).find("value 1.5 is above the maximum 1"), std::string::npos)
      << e.what();
  // The bounds themselves are allowed.
  Json edge = Json::parse(R"({"stages": [{"id": "a"}], "steps": 100, "lr": 0})");
  EXPECT_NO_THROW(validate_config(edge, kSpec, ""));
  // In array items.
  Json item = Json::parse(R"({"stages": [{"id": "a"}, {"id": "b", "batch": 0}]})");
  EXPECT_EQ(config_error([&] { validate_config(item, kSpec, ""); }).pointer(), "/stages/1/batch");
}

TEST(Schema, Enum) {
  Json v = Json::parse(R"({"stages": [{"id": "a"}], "mode": "medium"})");
  auto e = config_error([&] { validate_config(v, kSpec, ""); });
  EXPECT_EQ(e.pointer(), "/mode");
  EXPECT_NE(std::string(e.what()).find(R"(value "medium" is not one of ["fast","slow"])"),
            std::string::npos)
      << e.what();
}

TEST(Schema, MinItems) {
  Json v = Json::parse(R"({"stages": []})");
  auto e = config_error([&] { validate_config(v, kSpec, ""); });
  EXPECT_EQ(e.pointer(), "/stages");
  EXPECT_NE(std::string(e.what()).find("needs at least 1 item(s), got 0"), std::string::npos);
}

TEST(Schema, RequiredInArrayItem) {
  Json v = Json::parse(R"({"stages": [{"id": "a"}, {"batch": 2}]})");
  auto e = config_error([&] { validate_config(v, kSpec, ""); });
  EXPECT_EQ(e.pointer(), "/stages/1/id");
}

TEST(Schema, UnknownKeySuggestsTheClosestKnownOne) {
  Json v = Json::parse(R"({"stages": [{"id": "a"}], "opt": {"betta": 0.1}})");
  auto e = config_error([&] { validate_config(v, kSpec, ""); });
  EXPECT_EQ(e.pointer(), "/opt/betta");
  const std::string msg = e.what();
  EXPECT_NE(msg.find("unknown key 'betta' (did you mean 'beta'?)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("allowed: beta, inner"), std::string::npos) << msg;
}

TEST(Schema, UnknownKeyWithoutCloseMatchHasNoHint) {
  Json v = Json::parse(R"({"stages": [{"id": "a"}], "completely_different": 1})");
  auto e = config_error([&] { validate_config(v, kSpec, ""); });
  EXPECT_EQ(e.pointer(), "/completely_different");
  EXPECT_EQ(std::string(e.what()).find("did you mean"), std::string::npos) << e.what();
}

TEST(Schema, AdditionalKeys) {
  // "additional": true lets unknown keys through; an object spec without properties does too.
  Json v = Json::parse(
      R"({"stages": [{"id": "a"}], "free": {"other": [1, 2]}, "anything": {"x": {"y": 1}}})");
  validate_config(v, kSpec, "");
  EXPECT_EQ(v["free"]["other"], Json::parse("[1, 2]"));
  EXPECT_EQ(v["free"]["known"], 1);
  EXPECT_EQ(v["anything"]["x"]["y"], 1);
}

TEST(Schema, PointerTokensAreEscaped) {
  Json v = Json::parse(R"({"stages": [{"id": "a"}], "opt": {"a/b~c": 1}})");
  EXPECT_EQ(config_error([&] { validate_config(v, kSpec, ""); }).pointer(), "/opt/a~1b~0c");
}

TEST(Schema, PluginNamedInTheMessage) {
  Json v = Json::parse(R"({"stages": [{"id": "a"}], "steps": -1})");
  auto e = config_error([&] { validate_config(v, kSpec, "/model/mine", "mine"); });
  EXPECT_EQ(e.pointer(), "/model/mine/steps");
  EXPECT_EQ(e.plugin(), "mine");
  EXPECT_NE(std::string(e.what()).find("config error at /model/mine/steps (plugin 'mine'): "),
            std::string::npos)
      << e.what();
}

TEST(Schema, OptionTableChecks) {
  using wanhost::core::check_option_table;
  EXPECT_NO_THROW(
      check_option_table(Json::parse(R"({"a": {"type": "integer", "default": 1, "min": 0},
                      "b": {"type": "string", "default": null, "nullable": true}})"),
                         "p.json"));
  EXPECT_EQ(runtime_error_of([] { check_option_table(Json::array(), "p.json"); }),
            "p.json: 'config' must be an object of options");
  EXPECT_EQ(runtime_error_of(
                [] { check_option_table(Json::parse(R"({"a": {"default": 1}})"), "p.json"); }),
            "p.json: option 'a' needs a \"type\"");
  EXPECT_EQ(runtime_error_of([] {
              check_option_table(Json::parse(R"({"a": {"type": "float", "default": 1}})"),
                                 "p.json");
            }),
            "p.json: option 'a' has unknown type 'float'");
  EXPECT_EQ(runtime_error_of(
                [] { check_option_table(Json::parse(R"({"a": {"type": "integer"}})"), "p.json"); }),
            "p.json: option 'a' needs a \"default\"");
  const std::string bad = runtime_error_of([] {
    check_option_table(Json::parse(R"({"a": {"type": "integer", "default": "x"}})"), "p.json");
  });
  EXPECT_NE(bad.find("p.json: option 'a': its default is invalid"), std::string::npos) << bad;
  EXPECT_NE(bad.find("expected integer"), std::string::npos) << bad;
}

TEST(Schema, KeyHelpers) {
  using wanhost::core::child_spec;
  using wanhost::core::spec_allows_key;
  EXPECT_TRUE(spec_allows_key(kSpec, "steps"));
  EXPECT_FALSE(spec_allows_key(kSpec, "nope"));
  EXPECT_TRUE(spec_allows_key(kSpec["properties"]["free"], "nope"));
  EXPECT_FALSE(spec_allows_key(kSpec["properties"]["steps"], "x"));
  ASSERT_NE(child_spec(kSpec, "steps"), nullptr);
  EXPECT_EQ((*child_spec(kSpec, "steps"))["max"], 100);
  EXPECT_EQ(child_spec(kSpec, "nope"), nullptr);
  ASSERT_NE(child_spec(kSpec["properties"]["stages"], "0"), nullptr);
  EXPECT_TRUE(child_spec(kSpec["properties"]["stages"], "0")->contains("properties"));
}

}  // namespace
