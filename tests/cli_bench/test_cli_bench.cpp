#include <gtest/gtest.h>

#include <unistd.h>

#include <regex>
#include <string>
#include <vector>

#include "parity_util.hpp"

namespace {

using wanhost::testing::exists;
using wanhost::testing::read_json;
using wanhost::testing::run_wanhost;

// The tiny preset: D 64, FFN 256, 2 heads; 2 samples of 60 tokens, text 16, 2 blocks.
const std::string kBase = "bench --text-tokens 16 --warmup 1 --no-peak";
const std::string kCase = kBase + " --batch 2 --preset tiny --blocks 2 --video-tokens 60 --iters 2";

nlohmann::json last_json_line(const std::string& out) {
  const auto start = out.rfind("\n{");
  return nlohmann::json::parse(out.substr(start == std::string::npos ? 0 : start + 1));
}

// The plain-PyTorch peer benchmark's FLOP count (docs/performance.md): 3 x (linears + attention
// products) per block.
double peer_flops(double b, double s, double t, double d, double f, double l) {
  const double lin = 2 * b * (s * (4 * d * d + 2 * d * d + 2 * d * f) + t * 2 * d * d);
  const double att = 2 * b * (2 * s * s * d + 2 * s * t * d);
  return 3 * l * (lin + att);
}

// `wanhost <args>`, which must succeed, and its JSON report (null when it failed).
nlohmann::json json_report(const std::string& args) {
  const auto r = run_wanhost(args);
  EXPECT_EQ(r.code, 0) << args << "\n" << r.output;
  return r.code == 0 ? last_json_line(r.output) : nlohmann::json();
}

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "/" + name + "." + std::to_string(::getpid());
}

TEST(CliBench, JsonReportCountsFlopsLikeThePeer) {
  for (const char* layout : {"", " --packed"}) {
    const auto j = json_report(kCase + " --json" + layout);
    ASSERT_FALSE(j.is_null());
    EXPECT_EQ(j["packed"].get<bool>(), std::string(layout).empty() ? false : true);
    EXPECT_EQ(j["device"], "cpu");
    EXPECT_EQ(j["cuda_graph"], false);  // eager steps (--cuda-graph is GPU only)
    EXPECT_NEAR(j["step_tflop"].get<double>() * 1e12, peer_flops(2, 60, 16, 64, 256, 2), 1.0);
    EXPECT_GT(j["step_s"].get<double>(), 0.0);
    EXPECT_LE(j["min_s"].get<double>(), j["step_s"].get<double>());
    EXPECT_NEAR(j["tokens_per_s"].get<double>(), 120 / j["step_s"].get<double>(),
                1e-6 * 120 / j["step_s"].get<double>());
    EXPECT_NEAR(j["model_tflops"].get<double>(),
                j["step_tflop"].get<double>() / j["step_s"].get<double>(), 1e-9);
    EXPECT_TRUE(j["mfu"].is_null());  // --no-peak
  }
}

// A pack of mixed sizes (--grid repeated): sample i takes grid i mod n; FLOPs add up per sample.
TEST(CliBench, MixedPackCountsEverySample) {
  const auto j = json_report(kBase +
                             " --preset tiny --blocks 2 --iters 2 --json --packed --batch 3 "
                             "--grid 1,6,10 --grid 1,4,5");
  ASSERT_FALSE(j.is_null());
  EXPECT_EQ(j["grids"], nlohmann::json::parse("[[1,6,10],[1,4,5]]"));
  const double want = 2 * peer_flops(1, 60, 16, 64, 256, 2) + peer_flops(1, 20, 16, 64, 256, 2);
  EXPECT_NEAR(j["step_tflop"].get<double>() * 1e12, want, 1.0);
  EXPECT_NEAR(j["tokens_per_s"].get<double>() * j["step_s"].get<double>(), 140.0, 1e-6);
}

// --caption-tokens: every sample's caption length drawn from the range, the same in every run, and
// samples/s reported beside tokens/s.
TEST(CliBench, CaptionLengthsAreDrawnFromTheRange) {
  const std::string six = kBase + " --batch 6 --preset tiny --blocks 1 --video-tokens 60 --iters 1";
  const auto a = json_report(six + " --json --caption-tokens 3:12");
  ASSERT_FALSE(a.is_null());
  const auto lengths = a["caption_tokens"].get<std::vector<std::int64_t>>();
  ASSERT_EQ(lengths.size(), 6u);
  for (auto l : lengths) {
    EXPECT_GE(l, 3);
    EXPECT_LE(l, 12);
  }
  EXPECT_EQ(json_report(six + " --json --caption-tokens 3:12")["caption_tokens"],
            a["caption_tokens"]);
  EXPECT_NEAR(a["samples_per_s"].get<double>() * a["step_s"].get<double>(), 6.0, 1e-9);
  EXPECT_EQ(json_report(kCase + " --json")["caption_tokens"],
            nlohmann::json::parse("[16, 16]"));  // default: every row real
}

TEST(CliBench, ProfileWritesATraceAndSumsKernelTimeByClass) {
  const auto trace = temp_path("bench-trace.json");
  const auto r = run_wanhost(kCase + " --json --profile " + trace + " --profile-top 5");
  ASSERT_EQ(r.code, 0) << r.output;
  ASSERT_TRUE(exists(trace)) << trace;
  const auto t = read_json(trace);
  ASSERT_TRUE(t.contains("traceEvents"));
  EXPECT_FALSE(t["traceEvents"].empty());
  const auto p = last_json_line(r.output)["profile"];
  EXPECT_EQ(p["trace"], trace);
  ASSERT_TRUE(p["classes_ms"].contains("matmul")) << p.dump();
  EXPECT_GT(p["classes_ms"]["matmul"].get<double>(), 0.0);
  ASSERT_EQ(p["top"].size(), 5u);
  for (std::size_t i = 1; i < p["top"].size(); ++i)
    EXPECT_GE(p["top"][i - 1]["ms"].get<double>(), p["top"][i]["ms"].get<double>());
  std::remove(trace.c_str());

  // Text mode: the per-class table and the longest operators.
  const auto text = run_wanhost(kCase + " --profile " + trace);
  ASSERT_EQ(text.code, 0) << text.output;
  EXPECT_NE(text.output.find("CPU operator times per step"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("longest kernels"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("trace: " + trace), std::string::npos) << text.output;
  // Kineto's complaint about a missing GPU is kept off the CPU report.
  if (!at::hasCUDA()) {
    EXPECT_EQ(text.output.find("gpuGetDeviceCount"), std::string::npos) << text.output;
  }
  std::remove(trace.c_str());
}

// --kernels: each fused operator, forward + backward, against its ATen reference at the preset's
// widths. On the CPU both columns run ATen and the report says so; the memory-bound operators
// count 3 x their inputs' bytes + 2 x their outputs'.
TEST(CliBench, KernelsTimeEveryFusedOperatorAgainstItsReference) {
  const auto j = json_report(kBase +
                             " --kernels --preset tiny --batch 2 --video-tokens 60 --iters 2 "
                             "--device cpu --json");
  ASSERT_FALSE(j.is_null());
  EXPECT_EQ(j["dim"], 64);
  EXPECT_EQ(j["heads"], 2);
  EXPECT_EQ(j["ffn"], 256);
  EXPECT_EQ(j["dtype"], "float32");
  EXPECT_EQ(j["fused_kernels"], false);
  std::vector<std::string> ops;
  for (const auto& e : j["ops"]) {
    ops.push_back(e["op"]);
    EXPECT_GT(e["fused_us"].get<double>(), 0.0) << e;
    EXPECT_GT(e["reference_us"].get<double>(), 0.0) << e;
    EXPECT_NEAR(e["speedup"].get<double>(),
                e["reference_us"].get<double>() / e["fused_us"].get<double>(), 1e-9);
  }
  EXPECT_EQ(
      ops, (std::vector<std::string>{"layer_norm_modulate", "gated_residual", "gated_residual_norm",
                                     "rms_norm_rope", "linear (bias gradient by the column kernel)",
                                     "gelu_feed_forward"}));
  // x [2, 60, 64] and scale, shift [2, 1, 64] in; y [2, 60, 64] out; float32.
  const double x = 2 * 60 * 64 * 4, v = 2 * 64 * 4;
  EXPECT_EQ(j["ops"][0]["bytes"].get<double>(), 3 * (x + 2 * v) + 2 * x);
  EXPECT_FALSE(j["ops"][5].contains("bytes"));  // matrix products: no bandwidth figure
}

// --weight-casts per_step (fp32 master weights, bf16 compute): the weights the blocks read in bf16
// are cast in one pass a step, which the report and the log say.
TEST(CliBench, WeightCastsInOnePassAStep) {
  const auto r =
      run_wanhost(kCase + " --json --fp32-master --dtype bfloat16 --weight-casts per_step");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(last_json_line(r.output)["weight_casts"], "per_step");
  std::smatch said;  // "weight casts: N master weights cast ...": copies the blocks read, N > 0
  ASSERT_TRUE(std::regex_search(
      r.output, said,
      std::regex("weight casts: (\\d+) master weights cast to BFloat16 in one pass")))
      << r.output;
  EXPECT_GT(std::stol(said[1]), 0) << "no copy was read: " << said[0];
}

// --fp8-gelu (run.kernels.fp8_gelu) with FP8 layers: taken and reported. (On a CPU the model
// keeps its feed-forward's plain path, so the operator's values are the kit tests' to check.)
TEST(CliBench, Fp8FeedForwardOptionIsReported) {
  const auto r = run_wanhost(kCase + " --json --fp8 tensorwise --fp8-gelu fused");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(last_json_line(r.output)["fp8_gelu"], "fused");
  EXPECT_EQ(last_json_line(r.output)["fp8"], "tensorwise");
}

// --fp8 delayed (run.fp8 = delayed): the timed steps begin a step each, so the histories fill and
// the run reports the recipe.
TEST(CliBench, DelayedFp8IsReported) {
  const auto r = run_wanhost(kCase + " --json --fp8 delayed");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(last_json_line(r.output)["fp8"], "delayed");
  EXPECT_EQ(r.output.find("no training step has begun"), std::string::npos) << r.output;
}

// --fp8-fast-accumulation and --fp8-input-gradients (run.fp8_fast_accumulation,
// run.kernels.fp8_input_gradients): taken and reported as the kit holds them (their effect on the
// products is the GPU tests'; the CPU emulation accumulates exactly), and a bad value names its
// flag. The input gradients' default is summed (as run.kernels.fp8_input_gradients'), so the
// flag is tested with the other value.
TEST(CliBench, Fp8ProductOptionsAreReported) {
  const auto r = run_wanhost(kCase +
                             " --json --fp8 delayed --fp8-fast-accumulation all "
                             "--fp8-input-gradients separate");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(last_json_line(r.output)["fp8_fast_accumulation"], "all");
  EXPECT_EQ(last_json_line(r.output)["fp8_input_gradients"], "separate");
  const auto by_default = run_wanhost(kCase + " --json --fp8 delayed");
  ASSERT_EQ(by_default.code, 0) << by_default.output;
  EXPECT_EQ(last_json_line(by_default.output)["fp8_fast_accumulation"], "forward");
  EXPECT_EQ(last_json_line(by_default.output)["fp8_input_gradients"], "summed");
  const auto bad = run_wanhost(kCase + " --fp8 delayed --fp8-fast-accumulation sometimes");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("--fp8-fast-accumulation"), std::string::npos) << bad.output;
}

TEST(CliBench, UsageErrorsNameTheFlag) {
  const std::string tiny = kBase + " --batch 2 --preset tiny --video-tokens 60 ";
  const std::pair<std::string, std::string> cases[] = {
      {tiny + "--blocks 0", "must be positive"},
      {tiny + "--iters 0", "--iters must be >= 1"},
      {tiny + "--grid 1,2", "--grid 1,2: expected three positive integers"},
      {tiny + "--grid 1,6,9", "holds 54 tokens but --video-tokens is 60"},
      {tiny + "--grid 1,6,10 --grid 1,4,5", "samples of different sizes need --packed"},
      {tiny + "--packed --grid 1,6,10 --grid 1,4,5 --grid 1,2,2",
       "--grid given 3 times for --batch 2"},
      {tiny + "--option fused_kernels", "--option fused_kernels: expected key=value"},
      {tiny + "--option fused_kernels=sometimes", "/model/wan21_dit/fused_kernels"},
      {kBase + " --preset huge", "huge"},
      {tiny + "--device cuda", "no CUDA device"},
      {tiny + "--device cpu --cuda-graph", "--cuda-graph needs a GPU (--device cuda)"},
      {tiny + "--kernels --packed", "--kernels times single operators on dense rows"},
      {tiny + "--caption-tokens 5:17", "--caption-tokens 5:17: expected MIN:MAX"},
      {tiny + "--caption-tokens 9", "--caption-tokens 9: expected MIN:MAX"},
      {tiny + "--weight-casts sometimes", "--weight-casts"},
      {tiny + "--fp8-gelu inline", "--fp8-gelu"},
      {tiny + "--fp8 rowwise", "--fp8"},
      {tiny + "--fp8-gelu fused", "--fp8-gelu fused makes the feed-forward one FP8 operator"},
      {tiny + "--weight-casts per_step --dtype bfloat16",
       "needs --fp32-master and --dtype bfloat16"},
  };
  for (const auto& [args, says] : cases) {
    if (args.find("--device cuda") != std::string::npos && at::hasCUDA()) continue;
    const auto r = run_wanhost(args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(says), std::string::npos) << args << "\n" << r.output;
  }
}

}  // namespace
