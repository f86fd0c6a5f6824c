// Unit tests of the trainer's parts: LR schedules, the sample order, CRC-32C and the TensorBoard
// event files (parsed here independently: TFRecord framing, masked CRC-32C, Event protos).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <optional>
#include <regex>
#include <set>
#include <stdexcept>

#include <ATen/ATen.h>
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include "plugin/plugin_call.hpp"
#include "train/lr_schedule.hpp"
#include "train/metrics.hpp"
#include "train/sample_order.hpp"
#include "train/step_graphs.hpp"
#include "train/step_inputs.hpp"
#include "train_test_util.hpp"
#include "util/host_read.hpp"

namespace traintest {
namespace {

// ---- Step inputs ----------------------------------------------------------------------------

// StepPrefetcher on a GPU: a step's tensors reach the device, except text_lengths when the model
// reads them on the host (SDK 2.4 models: `lengths_on_host`), which stay on the host, pinned when
// made on the worker (so the model's own copy need not wait); the values are make's.
TEST(StepPrefetcher, TextLengthsStayOnTheHostForModelsThatReadThemThere) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a GPU";
  const c10::Device gpu(c10::kCUDA, 0);
  auto make = [](long stage_step, long global_step) {
    wanhost::core::StepInputs in;
    in.stage_step = stage_step;
    in.global_step = global_step;
    wanhost::NoisedBatch nb;
    nb.noisy.latents = at::full({2, 4, 1, 2, 2}, static_cast<double>(stage_step));
    nb.noisy.text = at::ones({2, 3, 8});
    nb.noisy.text_lengths = at::tensor({1, 3}, at::kLong) + stage_step;
    nb.timesteps = at::tensor({10.0f, 20.0f});
    in.micro.push_back(nb);
    return in;
  };
  for (const bool on_host : {true, false}) {
    wanhost::core::StepPrefetcher inputs(make, gpu, 2, /*ahead=*/true, on_host);
    for (long step = 0; step <= 2; ++step) {  // step 0 made inline, later ones on the worker
      SCOPED_TRACE("step " + std::to_string(step) + (on_host ? ", on the host" : ", on the GPU"));
      const wanhost::core::StepInputs in = inputs.take(step, step);
      const wanhost::NoisedBatch& nb = in.micro.at(0);
      EXPECT_TRUE(nb.noisy.latents.is_cuda());
      EXPECT_TRUE(nb.timesteps.is_cuda());
      EXPECT_EQ(nb.noisy.text_lengths.is_cpu(), on_host);
      if (on_host) {
        EXPECT_TRUE(nb.noisy.text_lengths.is_pinned());  // inline (step 0) too
      }
      EXPECT_TRUE(at::equal(nb.noisy.text_lengths.cpu(), at::tensor({1, 3}, at::kLong) + step));
      EXPECT_EQ(nb.noisy.latents.cpu().max().item<double>(), static_cast<double>(step));
    }
  }
}

// read_on_host (util/host_read.hpp), how the trainer reads a step's numbers: the values of the
// work queued before it on the current stream (a chain of kernels still running when the read is
// asked for), in host memory; a host tensor as it is.
TEST(HostRead, ReadsAfterTheQueuedWorkAndLeavesHostTensorsAlone) {
  const at::Tensor cpu = at::arange(4, at::kDouble);
  EXPECT_EQ(wanhost::core::read_on_host(cpu).data_ptr(), cpu.data_ptr());
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a GPU";
  // 2^16 values of 200: every partial sum is an integer float32 holds exactly.
  at::Tensor x = at::zeros({1 << 16}, at::TensorOptions(at::kFloat).device(at::kCUDA));
  for (int i = 0; i < 200; ++i) x.add_(1.0);
  const at::Tensor sum = x.sum().to(at::kDouble).reshape({1});
  const at::Tensor host = wanhost::core::read_on_host(sum);
  EXPECT_TRUE(host.device().is_cpu());
  EXPECT_EQ(host.item<double>(), 200.0 * (1 << 16));
}

// ---- Whole-step CUDA graphs: the bookkeeping (train/step_graphs.hpp) -------------------------
//
// A stand-in capture: "capturing" calls the step once (as recording it would) and a replay calls
// it again, on the captured inputs, as a graph reads the captured tensors. What a real graph
// replays is tested on a GPU (CudaGraphs.*OnAGpu, test_train_learning).

wanhost::core::StepInputs graph_inputs(double value, std::int64_t batch = 2) {
  wanhost::core::StepInputs in;
  wanhost::NoisedBatch nb;
  nb.noisy.latents = at::full({batch, 4, 1, 2, 2}, value);
  nb.noisy.text = at::full({batch, 3, 8}, value);
  nb.noisy.text_lengths = at::full({batch}, static_cast<std::int64_t>(value), at::kLong);
  nb.timesteps = at::full({batch}, value);
  nb.sigmas = at::full({batch}, value);
  nb.target = at::full({batch, 4, 1, 2, 2}, -value);
  nb.weights = at::ones({batch});
  for (std::int64_t i = 0; i < batch; ++i) nb.noisy.sample_keys.push_back(i);
  in.micro.push_back(nb);
  in.tokens = value;
  return in;
}

struct GraphProbe {
  int launches = 0, captures = 0;
  std::vector<const void*> latents_seen;  // the latents' storage each launch read
  bool fail_capture = false;
  int out_of_memory_at = 0;  // this launch (1-based) throws LibTorch's out-of-memory error
  wanhost::core::StepGraphs::Launch launch() {
    return [this](const wanhost::core::StepInputs& in, const at::Tensor& counts) {
      ++launches;
      if (launches == out_of_memory_at)  // nested in a plugin boundary's error, as the trainer's
        wanhost::core::call_plugin("ddp", "parallelism", "forward_backward", [] {
          throw c10::OutOfMemoryError({__func__, __FILE__, __LINE__},
                                      "CUDA out of memory (stand-in)");
        });
      const wanhost::NoisedBatch& b = in.micro.at(0);
      latents_seen.push_back(b.noisy.latents.data_ptr());
      // What the step "computes": every input's value, and the host's counts.
      return at::stack({b.noisy.latents.mean(), b.noisy.text.mean(),
                        b.noisy.text_lengths.to(at::kFloat).mean(), b.timesteps.mean(),
                        b.target.mean(), counts[0].to(at::kFloat)});
    };
  }
  wanhost::core::StepGraphs::Capture capture() {
    return [this](const std::function<void()>& fn) -> std::function<void()> {
      ++captures;
      if (fail_capture) throw std::runtime_error("the stand-in capture failed");
      fn();
      return fn;
    };
  }
};

std::vector<float> values(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return {c.data_ptr<float>(), c.data_ptr<float>() + c.numel()};
}

TEST(StepGraphs, CapturesAKeysSecondStepAndReplaysLaterOnesWithTheirOwnValues) {
  GraphProbe probe;
  wanhost::core::StepGraphs graphs(c10::Device(c10::kCPU), 4, probe.capture());
  const std::optional<std::string> key = "k";
  auto step = [&](double v) {
    const at::Tensor counts = at::full({4}, 10 * v, at::kDouble);
    return graphs.run(key, graph_inputs(v), counts, probe.launch());
  };
  EXPECT_FALSE(graphs.replays(key));
  const auto first = step(1);  // eager
  EXPECT_EQ(probe.captures, 0);
  EXPECT_EQ(graphs.replays(), 0);
  EXPECT_FALSE(graphs.replays(key)) << "a key's first step captures nothing";
  const auto second = step(2);  // captured, then replayed
  // What the trainer asks before it profiles a step: a replay from here on, of this key only.
  EXPECT_TRUE(graphs.replays(key));
  EXPECT_FALSE(graphs.replays(std::string("other")));
  EXPECT_FALSE(graphs.replays(std::nullopt));
  EXPECT_EQ(probe.captures, 1);
  EXPECT_EQ(graphs.captures(), 1);
  EXPECT_EQ(graphs.replays(), 1);
  const void* captured_latents = probe.latents_seen.back();
  for (double v : {3.0, 7.0}) {  // replays: the captured tensors, holding this step's values
    const auto out = step(v);
    EXPECT_EQ(probe.latents_seen.back(), captured_latents);
    const float f = static_cast<float>(v);
    EXPECT_EQ(values(out), (std::vector<float>{f, f, f, f, -f, 10 * f})) << v;
  }
  EXPECT_EQ(graphs.replays(), 3);
  EXPECT_EQ(values(first), (std::vector<float>{1, 1, 1, 1, -1, 10}));
  EXPECT_EQ(values(second), (std::vector<float>{2, 2, 2, 2, -2, 20}));  // its own inputs
  EXPECT_TRUE(graphs.on());
}

TEST(StepGraphs, NewKeysAndKeylessStepsRunEagerlyAndTheGraphCountIsBounded) {
  GraphProbe probe;
  wanhost::core::StepGraphs graphs(c10::Device(c10::kCPU), 2, probe.capture());
  const at::Tensor counts = at::zeros({4}, at::kDouble);
  for (int i = 0; i < 3; ++i) graphs.run(std::nullopt, graph_inputs(1), counts, probe.launch());
  EXPECT_EQ(probe.captures, 0);
  EXPECT_EQ(probe.launches, 3);
  for (const char* k : {"a", "b", "c", "a", "b", "c", "a", "b", "c"})
    graphs.run(std::string(k), graph_inputs(1), counts, probe.launch());
  EXPECT_EQ(graphs.captures(), 2);  // "a" and "b"; "c" finds the two graphs taken
  EXPECT_EQ(graphs.replays(), 2 + 2);
}

TEST(StepGraphs, AFailedCaptureRunsTheStepEagerlyAndTurnsGraphsOff) {
  GraphProbe probe;
  probe.fail_capture = true;
  wanhost::core::StepGraphs graphs(c10::Device(c10::kCPU), 4, probe.capture());
  const at::Tensor counts = at::zeros({4}, at::kDouble);
  graphs.run(std::string("k"), graph_inputs(1), counts, probe.launch());
  const auto out = graphs.run(std::string("k"), graph_inputs(5), counts, probe.launch());
  EXPECT_EQ(probe.captures, 1);
  EXPECT_FALSE(graphs.on());
  EXPECT_EQ(probe.launches, 2);  // the failed capture's step ran eagerly, with its own inputs
  EXPECT_EQ(values(out)[0], 5.0f);
  graphs.run(std::string("k"), graph_inputs(6), counts, probe.launch());
  EXPECT_EQ(probe.captures, 1);  // never tried again
  EXPECT_EQ(probe.launches, 3);
  EXPECT_EQ(graphs.replays(), 0);
}

// A new key's eager step that runs out of device memory beside the captured graphs (their pool
// holds a step's activations: an 80 GB GPU at stage 1 of the 1.3B recipe) drops the graphs and
// runs again eagerly, with its own inputs; the stage stays eager. Other errors pass through.
TEST(StepGraphs, ANewKeyOutOfMemoryBesideTheGraphsDropsThemAndRunsAgainEagerly) {
  GraphProbe probe;
  wanhost::core::StepGraphs graphs(c10::Device(c10::kCPU), 4, probe.capture());
  const at::Tensor counts = at::zeros({4}, at::kDouble);
  // Eager (launch 1), captured (the stand-in capture runs the step: 2) and replayed (3), replayed
  // (4).
  for (double v : {1.0, 2.0, 3.0})
    graphs.run(std::string("k"), graph_inputs(v), counts, probe.launch());
  ASSERT_EQ(graphs.replays(), 2);
  ASSERT_EQ(probe.launches, 4);
  probe.out_of_memory_at = 5;
  const auto out = graphs.run(std::string("new"), graph_inputs(9), counts, probe.launch());
  EXPECT_EQ(probe.launches, 6) << "the step ran again";
  EXPECT_EQ(values(out)[0], 9.0f) << "with its own inputs";
  EXPECT_FALSE(graphs.on());
  EXPECT_FALSE(graphs.replays(std::string("k"))) << "its graph was dropped";
  graphs.run(std::string("k"), graph_inputs(4), counts, probe.launch());
  EXPECT_EQ(probe.launches, 7) << "the dropped key's step runs eagerly";
  EXPECT_EQ(graphs.replays(), 2);
  EXPECT_EQ(probe.captures, 1);

  // The first step of a key with no graph beside it, and any other error, are not retried.
  GraphProbe alone;
  wanhost::core::StepGraphs fresh(c10::Device(c10::kCPU), 4, alone.capture());
  alone.out_of_memory_at = 1;
  EXPECT_THROW(fresh.run(std::string("k"), graph_inputs(1), counts, alone.launch()),
               std::exception);
  EXPECT_EQ(alone.launches, 1);
  for (double v : {2.0, 3.0}) fresh.run(std::string("k"), graph_inputs(v), counts, alone.launch());
  const auto failing = [](const wanhost::core::StepInputs&, const at::Tensor&) -> at::Tensor {
    throw std::runtime_error("not memory");
  };
  EXPECT_THROW(fresh.run(std::string("other"), graph_inputs(1), counts, failing),
               std::runtime_error);
  EXPECT_TRUE(fresh.on());
}

// A model whose only host-side choice is a word the test sets (Model::graph_key); nothing else
// of it is used.
class KeyedModel final : public wanhost::Model {
 public:
  std::optional<std::string> key;
  torch::nn::Module& module() override { return root_; }
  wanhost::Activations embed(const wanhost::Batch&, const at::Tensor&) override { return {}; }
  std::int64_t num_blocks() const override { return 0; }
  torch::nn::Module& block_module(std::int64_t) override { return root_; }
  at::Tensor block_forward(std::int64_t, const at::Tensor& h,
                           const wanhost::Activations&) override {
    return h;
  }
  at::Tensor head(const at::Tensor& h, const wanhost::Activations&,
                  const wanhost::Batch&) override {
    return h;
  }
  double forward_flops(const wanhost::PackSegment&, std::int64_t) const override { return 0; }
  std::int64_t tokens(const wanhost::PackSegment& g) const override { return g.numel(); }
  void load_weights(const std::string&) override {}
  void save_weights(const std::string&) override {}
  std::string config_json() const override { return "{}"; }
  std::optional<std::string> graph_key(const wanhost::Batch&) const override { return key; }

 private:
  torch::nn::Module root_;
};

TEST(StepGraphs, KeysFollowShapesTheModelsChoiceAndTheLearningRate) {
  KeyedModel model;
  model.key = "text rows 64";
  const auto base = wanhost::core::step_graph_key(graph_inputs(1), model, 1e-4);
  ASSERT_TRUE(base.has_value());
  EXPECT_EQ(wanhost::core::step_graph_key(graph_inputs(7), model, 1e-4), base);  // values: same
  EXPECT_NE(wanhost::core::step_graph_key(graph_inputs(1, 3), model, 1e-4), base);
  EXPECT_NE(wanhost::core::step_graph_key(graph_inputs(1), model, 1e-4 + 1e-19), base);
  auto longer = graph_inputs(1);
  longer.micro[0].noisy.text = at::zeros({2, 4, 8});
  EXPECT_NE(wanhost::core::step_graph_key(longer, model, 1e-4), base);
  auto two = graph_inputs(1);
  two.micro.push_back(two.micro[0]);
  EXPECT_NE(wanhost::core::step_graph_key(two, model, 1e-4), base);
  model.key = "text rows 128";
  EXPECT_NE(wanhost::core::step_graph_key(graph_inputs(1), model, 1e-4), base);
  model.key = std::nullopt;  // the model cannot promise its work for this batch
  EXPECT_FALSE(wanhost::core::step_graph_key(graph_inputs(1), model, 1e-4).has_value());
  model.key = "text rows 64";
  // An update that reads the LR on the device (SDK 2.6): one key for every LR.
  const auto any_lr = wanhost::core::step_graph_key(graph_inputs(1), model, std::nullopt);
  ASSERT_TRUE(any_lr.has_value());
  EXPECT_NE(any_lr, base);
  EXPECT_EQ(any_lr, wanhost::core::step_graph_key(graph_inputs(3), model, std::nullopt));
  EXPECT_NE(any_lr, wanhost::core::step_graph_key(graph_inputs(1, 3), model, std::nullopt));
  auto packed = graph_inputs(1);
  packed.micro[0].noisy.segments = {{0, 1, 2, 2}, {4, 1, 2, 2}};
  EXPECT_FALSE(wanhost::core::step_graph_key(packed, model, 1e-4).has_value());
}

TEST(StepGraphs, InputsCopyOnlyIntoTensorsOfTheSameLayout) {
  wanhost::core::StepInputs into = graph_inputs(1), from = graph_inputs(4);
  const void* where = into.micro[0].noisy.text.data_ptr();
  wanhost::core::copy_step_inputs(into, from);
  EXPECT_EQ(into.micro[0].noisy.text.data_ptr(), where);
  EXPECT_TRUE(at::equal(into.micro[0].noisy.text, from.micro[0].noisy.text));
  EXPECT_TRUE(at::equal(into.micro[0].noisy.text_lengths, from.micro[0].noisy.text_lengths));
  EXPECT_TRUE(at::equal(into.micro[0].weights, from.micro[0].weights));
  EXPECT_EQ(into.tokens, 4.0);
  wanhost::core::StepInputs other = graph_inputs(1, 3);
  EXPECT_THROW(wanhost::core::copy_step_inputs(into, other), std::logic_error);
  other = graph_inputs(1);
  other.micro[0].target = other.micro[0].target.to(at::kDouble);
  EXPECT_THROW(wanhost::core::copy_step_inputs(into, other), std::logic_error);
  other = graph_inputs(1);
  other.micro.push_back(other.micro[0]);
  EXPECT_THROW(wanhost::core::copy_step_inputs(into, other), std::logic_error);
}

// ---- LR schedules -------------------------------------------------------------------------------

wanhost::core::StageConfig stage_with(const std::string& type, double lr, long steps,
                                      long warmup = 0, double start_factor = 0.0,
                                      double min_factor = 0.0) {
  wanhost::core::StageConfig s;
  s.name = "s";
  s.steps = steps;
  s.optimizer.lr = lr;
  s.lr_schedule = {type, warmup, start_factor, min_factor};
  return s;
}

using wanhost::core::learning_rate;

TEST(LrSchedule, Constant) {
  const auto s = stage_with("constant", 3e-4, 50, /*warmup (ignored)=*/10, 0.5);
  for (long n : {0L, 1L, 9L, 10L, 49L, 50L}) EXPECT_DOUBLE_EQ(learning_rate(s, n), 3e-4) << n;
}

TEST(LrSchedule, LinearWarmupFromStartFactor) {
  const double lr = 2e-3;
  const auto s = stage_with("linear_warmup_constant", lr, 100, 10, 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(s, 0), 0.1 * lr);  // AutoModel: starts at 0.1 * lr
  EXPECT_DOUBLE_EQ(learning_rate(s, 5), (0.1 + 0.9 * 0.5) * lr);
  EXPECT_DOUBLE_EQ(learning_rate(s, 9), (0.1 + 0.9 * 0.9) * lr);
  for (long n : {10L, 11L, 50L, 99L}) EXPECT_DOUBLE_EQ(learning_rate(s, n), lr) << n;
  for (long n = 1; n <= 10; ++n) EXPECT_GT(learning_rate(s, n), learning_rate(s, n - 1)) << n;
  // Megatron: from 0.
  const auto z = stage_with("linear_warmup_constant", lr, 100, 4, 0.0);
  EXPECT_DOUBLE_EQ(learning_rate(z, 0), 0.0);
  EXPECT_DOUBLE_EQ(learning_rate(z, 1), 0.25 * lr);
  EXPECT_DOUBLE_EQ(learning_rate(z, 4), lr);
}

TEST(LrSchedule, CosineWarmupPeakAndEndValue) {
  const double lr = 1e-3;
  const long steps = 110, warmup = 10;
  const auto s = stage_with("cosine", lr, steps, warmup, 0.0, 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(s, 0), 0.0);
  EXPECT_DOUBLE_EQ(learning_rate(s, 5), 0.5 * lr);
  EXPECT_DOUBLE_EQ(learning_rate(s, warmup), lr);                // the peak
  EXPECT_NEAR(learning_rate(s, warmup + 50), 0.55 * lr, 1e-15);  // half way: the mean
  EXPECT_NEAR(learning_rate(s, steps), 0.1 * lr, 1e-15);         // the end value
  EXPECT_NEAR(learning_rate(s, steps + 20), 0.1 * lr, 1e-15);    // stays there
  for (long n = warmup + 1; n <= steps; ++n) {
    EXPECT_LT(learning_rate(s, n), learning_rate(s, n - 1)) << n;
    EXPECT_GE(learning_rate(s, n), 0.1 * lr) << n;
  }
  // No warm-up, min 0: a plain half cosine from lr to 0.
  const auto c = stage_with("cosine", lr, 8, 0, 0.0, 0.0);
  for (long n = 0; n <= 8; ++n)
    EXPECT_NEAR(learning_rate(c, n), lr * 0.5 * (1 + std::cos(M_PI * n / 8.0)), 1e-17) << n;
}

// ---- Sample order -------------------------------------------------------------------------------

std::vector<std::int64_t> epoch_of(wanhost::core::SampleOrder& o, std::int64_t size,
                                   std::int64_t epoch) {
  std::vector<std::int64_t> v;
  for (std::int64_t i = 0; i < size; ++i) v.push_back(o.at(epoch * size + i));
  return v;
}

TEST(SampleOrder, EachEpochIsAPermutationAndEpochsDiffer) {
  const std::int64_t n = 37;
  wanhost::core::SampleOrder o(1234, 0, n);
  std::vector<std::int64_t> identity(n);
  std::iota(identity.begin(), identity.end(), 0);
  std::set<std::vector<std::int64_t>> epochs;
  for (std::int64_t e = 0; e < 4; ++e) {
    std::vector<std::int64_t> v = epoch_of(o, n, e);
    EXPECT_NE(v, identity) << "epoch " << e << " is not shuffled";
    std::sort(v.begin(), v.end());
    EXPECT_EQ(v, identity) << "epoch " << e << " is not a permutation of 0.." << n - 1;
    epochs.insert(epoch_of(o, n, e));
  }
  EXPECT_EQ(epochs.size(), 4u) << "every epoch has its own order";
}

TEST(SampleOrder, DeterministicAndRandomAccess) {
  const std::int64_t n = 20;
  wanhost::core::SampleOrder a(7, 1, n), b(7, 1, n);
  std::vector<std::int64_t> seq;
  for (std::int64_t p = 0; p < 3 * n; ++p) seq.push_back(a.at(p));
  // Another instance, asked out of order (across epochs, backwards): the same answers.
  for (std::int64_t p = 3 * n - 1; p >= 0; p -= 3) EXPECT_EQ(b.at(p), seq[p]) << p;
  for (std::int64_t p : {45L, 2L, 59L, 21L, 0L}) EXPECT_EQ(b.at(p), seq[p]) << p;
  // The seed and the stage pick the order.
  wanhost::core::SampleOrder other_seed(8, 1, n), other_stage(7, 0, n);
  EXPECT_NE(epoch_of(other_seed, n, 0), std::vector<std::int64_t>(seq.begin(), seq.begin() + n));
  EXPECT_NE(epoch_of(other_stage, n, 0), std::vector<std::int64_t>(seq.begin(), seq.begin() + n));
}

TEST(SampleOrder, SizeOne) {
  wanhost::core::SampleOrder o(1, 0, 1);
  for (std::int64_t p = 0; p < 5; ++p) EXPECT_EQ(o.at(p), 0);
}

// ---- CRC-32C ------------------------------------------------------------------------------------

// Bit by bit, straight from the definition (reflected polynomial 0x82F63B78).
std::uint32_t crc32c_reference(const std::string& s) {
  std::uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char c : s) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

std::uint32_t crc(const std::string& s) {
  return wanhost::core::crc32c(s.data(), s.size());
}

TEST(Crc32c, KnownAnswers) {
  EXPECT_EQ(crc("123456789"), 0xE3069283u);  // the CRC catalogue's check value
  EXPECT_EQ(crc(""), 0u);
  EXPECT_EQ(crc(std::string(32, '\0')), 0x8A9136AAu);    // RFC 3720 B.4
  EXPECT_EQ(crc(std::string(32, '\xff')), 0x62A8AB43u);  // RFC 3720 B.4
  std::string inc;
  for (int i = 0; i < 32; ++i) inc.push_back(static_cast<char>(i));
  EXPECT_EQ(crc(inc), 0x46DD794Eu);  // RFC 3720 B.4
  std::string bytes;
  for (int i = 0; i < 1000; ++i) bytes.push_back(static_cast<char>((i * 131 + 7) & 0xFF));
  for (std::size_t n : {1u, 7u, 64u, 999u, 1000u})
    EXPECT_EQ(crc(bytes.substr(0, n)), crc32c_reference(bytes.substr(0, n))) << n;
}

// ---- TensorBoard event files --------------------------------------------------------------------

std::uint32_t masked_crc(const std::string& s) {
  const std::uint32_t c = crc32c_reference(s);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

struct Event {
  double wall_time = 0;
  long step = 0;
  std::string file_version;
  std::vector<std::pair<std::string, float>> scalars;  // (tag, simple_value)
  int session_status = -1;                             // SessionLog.status; -1: none
};

// A protobuf reader for the few fields of Event, Summary, Summary.Value and SessionLog.
class Proto {
 public:
  explicit Proto(const std::string& b) : b_(b) {}
  bool done() const { return pos_ >= b_.size(); }
  std::uint64_t varint() {
    std::uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
      if (pos_ >= b_.size() || shift > 63) throw std::runtime_error("bad varint");
      const auto c = static_cast<unsigned char>(b_[pos_++]);
      v |= static_cast<std::uint64_t>(c & 0x7F) << shift;
      if (!(c & 0x80)) return v;
    }
  }
  std::string bytes(std::size_t n) {
    if (pos_ + n > b_.size()) throw std::runtime_error("field runs past the end");
    std::string s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  // Next field: (number, wire type); payload via the readers below.
  std::pair<int, int> key() {
    const std::uint64_t k = varint();
    return {static_cast<int>(k >> 3), static_cast<int>(k & 7)};
  }
  std::string payload(int wire) {
    switch (wire) {
      case 0:
        return std::to_string(varint());
      case 1:
        return bytes(8);
      case 2:
        return bytes(varint());
      case 5:
        return bytes(4);
      default:
        throw std::runtime_error("unexpected wire type " + std::to_string(wire));
    }
  }

 private:
  const std::string& b_;
  std::size_t pos_ = 0;
};

Event parse_event(const std::string& data) {
  Event e;
  Proto p(data);
  while (!p.done()) {
    const auto [field, wire] = p.key();
    const std::string v = p.payload(wire);
    if (field == 1 && wire == 1) {
      std::memcpy(&e.wall_time, v.data(), 8);
    } else if (field == 2 && wire == 0) {
      e.step = std::stol(v);
    } else if (field == 3 && wire == 2) {
      e.file_version = v;
    } else if (field == 5 && wire == 2) {  // Summary { repeated Value value = 1; }
      Proto s(v);
      while (!s.done()) {
        const auto [sf, sw] = s.key();
        const std::string value = s.payload(sw);
        if (sf != 1 || sw != 2) continue;
        Proto vp(value);  // Value { string tag = 1; float simple_value = 2; }
        std::string tag;
        float x = std::nanf("");
        while (!vp.done()) {
          const auto [vf, vw] = vp.key();
          const std::string vv = vp.payload(vw);
          if (vf == 1 && vw == 2) tag = vv;
          if (vf == 2 && vw == 5) std::memcpy(&x, vv.data(), 4);
        }
        e.scalars.emplace_back(tag, x);
      }
    } else if (field == 6 && wire == 2) {  // SessionLog { SessionStatus status = 1; }
      Proto s(v);
      e.session_status = 0;
      while (!s.done()) {
        const auto [sf, sw] = s.key();
        const std::string sv = s.payload(sw);
        if (sf == 1 && sw == 0) e.session_status = std::stoi(sv);
      }
    }
  }
  return e;
}

// Reads a TFRecord file: uint64 length, uint32 masked CRC-32C of the length, data, uint32 masked
// CRC-32C of the data. Every length and CRC is checked (gtest failures name the record).
std::vector<Event> read_events(const fs::path& file) {
  const std::string b = read_file(file);
  std::vector<Event> out;
  std::size_t pos = 0;
  auto u32 = [&](std::size_t at) {
    std::uint32_t v;
    std::memcpy(&v, b.data() + at, 4);
    return v;
  };
  while (pos < b.size()) {
    const std::size_t index = out.size();
    if (b.size() - pos < 12) {
      ADD_FAILURE() << file << ": record " << index << " has a truncated header";
      break;
    }
    std::uint64_t len;
    std::memcpy(&len, b.data() + pos, 8);
    EXPECT_EQ(u32(pos + 8), masked_crc(b.substr(pos, 8))) << "length CRC of record " << index;
    if (len > b.size() - pos - 12 || b.size() - pos - 12 - len < 4) {
      ADD_FAILURE() << file << ": record " << index << " (" << len << " bytes) runs past the end";
      break;
    }
    const std::string data = b.substr(pos + 12, len);
    EXPECT_EQ(u32(pos + 12 + len), masked_crc(data)) << "data CRC of record " << index;
    out.push_back(parse_event(data));
    pos += 12 + len + 4;
  }
  return out;
}

std::vector<fs::path> event_files(const fs::path& run) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(run / "tensorboard"))
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0)
      files.push_back(e.path());
  return files;
}

TEST(TensorBoard, WriterFraming) {
  const fs::path dir = scratch_dir();
  {
    wanhost::core::TensorBoardWriter w((dir / "fresh").string(), 0);
    w.scalar("train/loss", 0.25, 1);
    w.scalar("train/loss", 0.125, 2);
    w.scalar("train/lr", 1e-4, 2);
    w.flush();
  }
  auto files = event_files(dir / "fresh");
  ASSERT_EQ(files.size(), 1u);
  std::vector<Event> ev = read_events(files[0]);
  ASSERT_EQ(ev.size(), 4u);
  EXPECT_EQ(ev[0].file_version, "brain.Event:2");
  EXPECT_EQ(ev[0].session_status, -1) << "start_step 0: no SessionLog";
  EXPECT_GT(ev[0].wall_time, 1.6e9);
  EXPECT_EQ(ev[1].step, 1);
  EXPECT_EQ(ev[1].scalars, (std::vector<std::pair<std::string, float>>{{"train/loss", 0.25f}}));
  EXPECT_EQ(ev[2].step, 2);
  EXPECT_EQ(ev[3].scalars, (std::vector<std::pair<std::string, float>>{{"train/lr", 1e-4f}}));

  {
    wanhost::core::TensorBoardWriter w((dir / "resumed").string(), 7);
    w.scalar("train/loss", 1.5, 7);
  }
  files = event_files(dir / "resumed");
  ASSERT_EQ(files.size(), 1u);
  ev = read_events(files[0]);
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[1].step, 7);
  EXPECT_EQ(ev[1].session_status, 1) << "SessionLog START";
  EXPECT_EQ(ev[2].step, 7);
  EXPECT_EQ(ev[2].scalars.size(), 1u);
}

// The reader catches damage (so the framing checks can fail).
TEST(TensorBoard, ReaderDetectsCorruption) {
  const fs::path dir = scratch_dir();
  { wanhost::core::TensorBoardWriter((dir / "a").string(), 0).scalar("x", 1.0, 1); }
  const fs::path file = event_files(dir / "a").at(0);
  std::string b = read_file(file);
  b[b.size() - 6] ^= 0x01;  // inside the last record's data
  write_file(file, b);
  ::testing::TestPartResultArray failures;
  {
    ::testing::ScopedFakeTestPartResultReporter reporter(
        ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &failures);
    read_events(file);
  }
  ASSERT_EQ(failures.size(), 1);
  EXPECT_NE(std::string(failures.GetTestPartResult(0).message()).find("data CRC of record 1"),
            std::string::npos);
}

// A real run, stopped and resumed: the second events file starts with SessionLog START at the
// first step it writes, and the scalars of both files match metrics.jsonl.
TEST(TensorBoard, RunAndResume) {
  const fs::path run = scratch_dir() / "run";
  const std::vector<std::string> small = {"--set", "stages.0.steps=6", "--set", "stages.1.steps=2"};
  std::vector<std::string> a = small, b = small;
  a.insert(a.end(), {"--stop-after-steps", "5"});
  b.push_back("--resume");
  Result r = run_cli(run_args(run, a));
  ASSERT_EQ(r.code, 0) << r.describe();
  auto first = event_files(run);
  ASSERT_EQ(first.size(), 1u);
  r = run_cli(run_args(run, b));
  ASSERT_EQ(r.code, 0) << r.describe();
  auto files = event_files(run);
  ASSERT_EQ(files.size(), 2u);
  const fs::path second = files[0] == first[0] ? files[1] : files[0];

  const std::vector<Json> metrics = read_metrics(run);
  ASSERT_EQ(metrics.size(), 8u);
  const std::vector<std::string> tags = {"train/loss",         "train/lr",
                                         "train/grad_norm",    "train/samples_per_s",
                                         "train/tokens_per_s", "train/tflops_per_gpu"};
  auto check = [&](const fs::path& file, long from, long to, bool resumed) {
    SCOPED_TRACE(file.string());
    const std::vector<Event> ev = read_events(file);
    ASSERT_GE(ev.size(), 2u);
    EXPECT_EQ(ev[0].file_version, "brain.Event:2");
    const auto start =
        std::find_if(ev.begin(), ev.end(), [](const Event& e) { return e.session_status == 1; });
    if (resumed) {
      ASSERT_NE(start, ev.end()) << "no SessionLog START in the resumed run's events";
      EXPECT_EQ(start->step, from);
    }
    std::map<std::string, std::vector<long>> steps;
    for (const Event& e : ev)
      for (const auto& [tag, value] : e.scalars) {
        steps[tag].push_back(e.step);
        ASSERT_GE(e.step, from);
        ASSERT_LE(e.step, to);
        const Json& m = metrics.at(static_cast<std::size_t>(e.step - 1));
        const std::string key = tag.substr(6);
        if (key == "loss" || key == "lr" || key == "grad_norm") {
          EXPECT_EQ(value, static_cast<float>(m[key].get<double>())) << tag << " " << e.step;
        }
      }
    std::vector<long> expected(static_cast<std::size_t>(to - from + 1));
    std::iota(expected.begin(), expected.end(), from);
    for (const auto& t : tags) EXPECT_EQ(steps[t], expected) << t;
    std::size_t n = 0;
    for (const auto& [t, s] : steps) n += s.size();
    EXPECT_EQ(n, tags.size() * expected.size()) << "scalar events";
  };
  check(first[0], 1, 5, false);
  check(second, 6, 8, true);
}

// ---- run.cuda_graphs through the real program
// ----------------------------------------------------

// Both stages with text padded to a fixed row count, so that every step of a stage has one key
// and is replayed from its third step on (text padded to each batch's longest caption would change
// the shapes: eager). Their LR changes every step (stage 1 warms up, stage 2 decays: the update
// reads it on the device, SDK 2.6).
std::vector<std::string> graph_run(const std::string& device, bool graphs) {
  return {"--set", "run.device=\"" + device + "\"",
          "--set", std::string("run.cuda_graphs=") + (graphs ? "true" : "false"),
          "--set", "stages.0.text_rows=64",
          "--set", "stages.1.text_rows=64"};
}

// The largest relative difference of the two runs' losses and gradient norms, step by step.
double largest_difference(const std::vector<Json>& a, const std::vector<Json>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    for (const char* k : {"loss", "grad_norm"}) {
      const double x = a[i][k].get<double>(), y = b[i][k].get<double>();
      worst = std::max(worst, std::abs(x - y) / std::max(std::abs(x), 1e-30));
    }
  return worst;
}

TEST(CudaGraphs, OnACpuEveryStepRunsEagerlyAndSaysWhy) {
  const fs::path run = scratch_dir() / "run";
  const Result r = run_cli(run_args(run, graph_run("cpu", true)));
  ASSERT_EQ(r.code, 0) << r.describe();
  EXPECT_NE(r.err.find("run.cuda_graphs: every step runs eagerly: the run's device is cpu"),
            std::string::npos)
      << r.err;
  expect_same_steps(read_metrics(reference_run(graph_run("cpu", false))), read_metrics(run),
                    "run.cuda_graphs on a CPU");
}

// Whole steps replayed as graphs give the eager steps' numbers (the same kernels on the same
// values: bit for bit wherever two eager runs agree bit for bit), both stages, with two micro
// batches a step in stage 1 and a new LR every step (each replay's own, read on the device); and
// the weights and optimizer state of the last checkpoint agree. `extra`: more settings of all
// three runs, whose logs must say `logged`.
void expect_replayed_steps_train_as_eager_steps(const std::vector<std::string>& extra,
                                                const std::string& logged = "") {
  const fs::path dir = scratch_dir();
  std::map<std::string, std::vector<Json>> m;
  for (const auto& [name, graphs] : std::vector<std::pair<std::string, bool>>{
           {"eager", false}, {"eager2", false}, {"graphs", true}}) {
    const Result r =
        run_cli(run_args(dir / name, with(with(graph_run("cuda", graphs), kKeepAll), extra)));
    ASSERT_EQ(r.code, 0) << name << ": " << r.describe();
    EXPECT_NE(r.err.find(logged), std::string::npos) << name << ": " << r.describe();
    m[name] = read_metrics(dir / name);
    ASSERT_EQ(m[name].size(), static_cast<std::size_t>(kTotalSteps)) << name;
  }
  // Every step of a stage after its second is a replay (one key a stage).
  for (std::size_t i = 0; i < m["graphs"].size(); ++i) {
    const Json& rec = m["graphs"][i];
    const long k = rec["stage_step"].get<long>();
    EXPECT_EQ(rec["cuda_graph"], k == 1   ? "eager"
                                 : k == 2 ? "captured"
                                          : "replayed")
        << "global step " << rec["step"];
  }
  const double floor = largest_difference(m["eager"], m["eager2"]);
  const double got = largest_difference(m["eager"], m["graphs"]);
  std::printf(
      "[ figures  ] eager vs eager: %.3g, eager vs graphs: %.3g (largest relative "
      "difference of loss and gradient norm)\n",
      floor, got);
  if (floor == 0) {
    expect_same_steps(m["eager"], m["graphs"], "graphs vs eager");
    const std::string last = step(kTotalSteps);
    for (const char* f :
         {"state/model/diffusion_pytorch_model.safetensors", "state/optimizer.safetensors"}) {
      ASSERT_TRUE(fs::exists(dir / "eager" / "checkpoints" / last / f)) << f;
      expect_same_tensors(dir / "eager" / "checkpoints" / last / f,
                          dir / "graphs" / "checkpoints" / last / f, f);
    }
  } else {
    EXPECT_LE(got, 10 * floor + 1e-6);
  }
}

TEST(CudaGraphs, ReplayedStepsTrainAsEagerStepsOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a GPU";
  expect_replayed_steps_train_as_eager_steps({});
}

// The same with FP8 linear layers (run.fp8): each replay quantises the weights the step before
// it updated and the step's own inputs, on the device, as an eager step does.
TEST(CudaGraphs, ReplayedFp8StepsTrainAsEagerStepsOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a GPU";
  expect_replayed_steps_train_as_eager_steps({"--set", "run.fp8=\"tensorwise\""},
                                             "FP8 block linear layers (tensorwise)");
}

// The same with delayed FP8 scaling (run.fp8 = delayed): the step count that picks each amax
// history's slot advances on the device with every replay, and the casts read and record the
// histories there, as eager steps do.
TEST(CudaGraphs, ReplayedFp8DelayedStepsTrainAsEagerStepsOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a GPU";
  expect_replayed_steps_train_as_eager_steps(
      {"--set", "run.fp8=\"delayed\"", "--set", "run.fp8_amax_history=3"},
      "FP8 casts of the stage's second step took their scale");
}

// The same with every master weight cast in one pass a step (run.kernels.weight_casts=per_step):
// each replay casts the weights the step before it updated into the copies its kernels read.
TEST(CudaGraphs, ReplayedStepsWithOnePassWeightCastsTrainAsEagerStepsOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a GPU";
  expect_replayed_steps_train_as_eager_steps({"--set", "run.kernels.weight_casts=\"per_step\""},
                                             "in one pass a step");
}

// The same with the feed-forward as one FP8 operator (run.kernels.fp8_gelu=fused): GELU and its
// gradient inside the FP8 casts of each replay.
TEST(CudaGraphs, ReplayedFp8StepsWithTheFeedForwardOperatorTrainAsEagerStepsOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a GPU";
  expect_replayed_steps_train_as_eager_steps(
      {"--set", "run.fp8=\"tensorwise\"", "--set", "run.kernels.fp8_gelu=\"fused\""},
      "feed-forward passes of the first step ran as one FP8 operator");
}

// The same with the input gradients of the FP8 layers that share an input summed inside their
// products (run.kernels.fp8_input_gradients=summed): cuBLASLt's adding products inside each
// replay, and the log's count of those it added (every one on a GPU).
TEST(CudaGraphs, ReplayedFp8StepsWithSummedInputGradientsTrainAsEagerStepsOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a GPU";
  expect_replayed_steps_train_as_eager_steps(
      {"--set", "run.fp8=\"delayed\"", "--set", "run.kernels.fp8_input_gradients=\"summed\""},
      "were summed inside the FP8 products of the layers that share an input");
}

// run.kernels.fp8_gelu=fused through the program on a GPU (wan21_dit's fused kernels hand the
// feed-forward to the kit's operator): the losses and gradient norms of every step bit for bit
// those of the two FP8 layers with ATen's GELU between them (the kernels spell ATen's fp32 GELU
// arithmetic alike and round to bf16 as its kernels' outputs are), and the log counts the
// feed-forwards that took the operator (N > 0).
TEST(Fp8FeedForward, TrainsAsTheSeparateLayersOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a GPU";
  const fs::path dir = scratch_dir();
  const std::vector<std::string> fp8{"--set", "run.fp8=\"tensorwise\""};
  std::map<std::string, std::vector<Json>> m;
  for (const std::string gelu : {"separate", "fused"}) {
    const Result r =
        run_cli(run_args(dir / gelu, with(with(graph_run("cuda", false), fp8),
                                          {"--set", "run.kernels.fp8_gelu=\"" + gelu + "\""})));
    ASSERT_EQ(r.code, 0) << gelu << ": " << r.describe();
    m[gelu] = read_metrics(dir / gelu);
    if (gelu == "fused") {
      std::smatch said;
      ASSERT_TRUE(std::regex_search(
          r.err, said, std::regex("fp8_gelu=fused: (\\d+) feed-forward passes of the first step")))
          << r.describe();
      EXPECT_GT(std::stol(said[1]), 0) << said[0];
    }
  }
  std::printf(
      "[ figures  ] separate vs fused FP8 feed-forward: %.3g (largest relative difference "
      "of loss and gradient norm)\n",
      largest_difference(m["separate"], m["fused"]));
  expect_same_steps(m["separate"], m["fused"], "fused vs separate FP8 feed-forward");
}

// logging.profile_step on a step whose key has a captured graph profiles the replay (what a
// replayed step spends: its kernels and the device's idle time between them), and the run trains
// as without the profile; a step of a key not captured yet is profiled eagerly.
TEST(CudaGraphs, AProfiledStepOfACapturedKeyIsProfiledAsAReplayOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a GPU";
  const fs::path dir = scratch_dir();
  std::map<std::string, std::vector<Json>> m;
  for (const auto& [name, profile_step] :
       std::vector<std::pair<std::string, long>>{{"graphs", 0}, {"replay", 5}, {"first", 1}}) {
    auto args = graph_run("cuda", true);
    if (profile_step > 0)
      args = with(args, {"--set", "logging.profile_step=" + std::to_string(profile_step)});
    const Result r = run_cli(run_args(dir / name, args));
    ASSERT_EQ(r.code, 0) << name << ": " << r.describe();
    m[name] = read_metrics(dir / name);
    ASSERT_EQ(m[name].size(), static_cast<std::size_t>(kTotalSteps)) << name;
  }
  const Json& replayed = m["replay"][4];
  EXPECT_EQ(replayed["cuda_graph"], "replayed");
  EXPECT_EQ(replayed["profiled"], true);
  EXPECT_EQ(m["first"][0]["cuda_graph"], "eager");
  EXPECT_EQ(m["first"][0]["profiled"], true);
  EXPECT_EQ(m["first"][1]["cuda_graph"], "eager") << "the profiled step was not the key's first";
  EXPECT_EQ(m["first"][2]["cuda_graph"], "captured");
  const Json summary = Json::parse(read_file(dir / "replay" / "profile" / "summary.json"));
  EXPECT_GT(summary["total_ms"].get<double>(), 0);
  // One stream: kernels follow each other (programmatic dependent launches may overlap a
  // kernel's tail with the next one's start a little).
  EXPECT_GE(summary["span_ms"].get<double>(), 0.95 * summary["total_ms"].get<double>());
  EXPECT_GT(summary["launches"].get<double>(), 10);
  expect_same_steps(m["graphs"], m["replay"], "a replay profiled");
  expect_same_steps(m["graphs"], m["first"], "a first step profiled");
}

}  // namespace
}  // namespace traintest
