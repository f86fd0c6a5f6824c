#include "bench_kernels.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "../util/device_timing.hpp"
#include "wanhost/kit/fused.hpp"
#include "wanhost/kit/layers.hpp"

namespace wanhost::core {
namespace {

using Tensors = std::vector<at::Tensor>;

struct Case {
  std::string op;
  bool memory_bound;                // report bytes and GB/s
  std::function<Tensors()> inputs;  // fresh leaves
  std::function<Tensors(const Tensors&, bool fused)> forward;
};

// Seconds of one call: the median over `iters` samples of kBackToBack calls queued back to back
// between two events. One call between events would also count the device's wait for the host to
// launch it: an operator of ~100 us is then host-bound, and an H200 call timed that way measured
// the small linear layer anywhere between 0.75x and 1.47x of ATen's.
constexpr int kBackToBack = 10;

double median_seconds(const c10::Device& device, const std::function<void()>& fn, int warmup,
                      int iters) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> t;
  for (int i = 0; i < iters; ++i)
    t.push_back(time_once(device,
                          [&] {
                            for (int k = 0; k < kBackToBack; ++k) fn();
                          }) /
                kBackToBack);
  return median(std::move(t));
}

double nbytes(const Tensors& ts) {
  double n = 0;
  for (const auto& t : ts) n += static_cast<double>(t.numel() * t.element_size());
  return n;
}

}  // namespace

Json bench_kernels(const c10::Device& device, at::ScalarType dtype, const KernelBenchShape& s,
                   int warmup, int iters) {
  const auto act = at::TensorOptions().dtype(dtype).device(device);
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  const std::int64_t b = s.samples, n = s.rows_per_sample, d = s.dim, hd = s.dim / s.heads;
  const double eps = 1e-6;
  auto leaves = [](Tensors ts) {
    for (auto& t : ts) t = t.detach().requires_grad_(true);
    return ts;
  };
  auto rows = [&] { return at::randn({b, n, d}, act); };
  auto vec = [&] { return at::randn({b, 1, d}, f32) * 0.1; };
  const at::Tensor angles = at::rand({n, hd / 2}, f32) * 6.28;
  const at::Tensor cos = angles.cos(), sin = angles.sin();

  std::vector<Case> cases;
  cases.push_back({"layer_norm_modulate", true,
                   [&] {
                     return leaves({rows(), vec(), vec()});
                   },
                   [&](const Tensors& in, bool fused) -> Tensors {
                     return {fused
                                 ? fused::layer_norm_modulate(in[0], in[1], in[2], eps)
                                 : fused::reference::layer_norm_modulate(in[0], in[1], in[2], eps)};
                   }});
  cases.push_back({"gated_residual", true,
                   [&] {
                     return leaves({rows(), rows(), vec()});
                   },
                   [&](const Tensors& in, bool fused) -> Tensors {
                     return {fused ? fused::gated_residual(in[0], in[1], in[2])
                                   : fused::reference::gated_residual(in[0], in[1], in[2])};
                   }});
  cases.push_back({"gated_residual_norm", true,
                   [&] {
                     return leaves({rows(), rows(), vec(), vec(), vec()});
                   },
                   [&](const Tensors& in, bool fused) -> Tensors {
                     auto [x, y] =
                         fused ? fused::gated_residual_norm(in[0], in[1], in[2], in[3], in[4], eps)
                               : fused::reference::gated_residual_norm(in[0], in[1], in[2], in[3],
                                                                       in[4], eps);
                     return {x, y};
                   }});
  cases.push_back({"rms_norm_rope", true,
                   [&] {
                     return leaves({rows(), at::rand({d}, f32) + 0.5});
                   },
                   [&](const Tensors& in, bool fused) -> Tensors {
                     return {
                         fused ? fused::rms_norm_rope(in[0], in[1], cos, sin, hd, eps)
                               : fused::reference::rms_norm_rope(in[0], in[1], cos, sin, hd, eps)};
                   }});
  cases.push_back({"linear (bias gradient by the column kernel)", false,
                   [&] {
                     return leaves({rows(), at::randn({d, d}, act) * 0.02, at::randn({d}, act)});
                   },
                   [&](const Tensors& in, bool fused) -> Tensors {
                     return {fused ? fused::linear(in[0], in[1], in[2])
                                   : at::linear(in[0], in[1], in[2])};
                   }});
  cases.push_back(
      {"gelu_feed_forward", false,
       [&] {
         return leaves({rows(), at::randn({s.ffn, d}, act) * 0.02, at::randn({s.ffn}, act),
                        at::randn({d, s.ffn}, act) * 0.02, at::randn({d}, act)});
       },
       [&](const Tensors& in, bool fused) -> Tensors {
         return {fused ? fused::gelu_feed_forward(in[0], in[1], in[2], in[3], in[4])
                       : fused::reference::gelu_feed_forward(in[0], in[1], in[2], in[3], in[4])};
       }});

  Json out = Json::array();
  for (const auto& c : cases) {
    const Tensors in = c.inputs();
    Tensors grads_out;
    for (const auto& y : c.forward(in, true)) grads_out.push_back(at::randn_like(y));
    double seconds[2];
    for (const bool fused : {true, false}) {
      seconds[fused ? 0 : 1] = median_seconds(
          device,
          [&] {
            const Tensors y = c.forward(in, fused);
            torch::autograd::grad(y, in, grads_out);
          },
          warmup, iters);
    }
    Json e{{"op", c.op},
           {"fused_us", seconds[0] * 1e6},
           {"reference_us", seconds[1] * 1e6},
           {"speedup", seconds[1] / seconds[0]}};
    if (c.memory_bound) {
      const double bytes = 3 * nbytes(in) + 2 * nbytes(grads_out);
      e["bytes"] = bytes;
      e["fused_gbps"] = bytes / seconds[0] / 1e9;
    }
    out.push_back(e);
  }
  return {{"device", device.str()},
          {"dtype", dtype == at::kBFloat16 ? "bfloat16" : "float32"},
          {"samples", b},
          {"rows_per_sample", n},
          {"dim", d},
          {"heads", s.heads},
          {"ffn", s.ffn},
          {"fused_kernels", fused::kernels_apply(rows())},
          {"ops", out}};
}

std::string kernel_bench_table(const Json& r) {
  std::string t = fmt::format(
      "fused operators vs their ATen reference, forward + backward, {} x {} rows of {} ({} heads, "
      "FFN {}), {} on {}{}:\n",
      r["samples"].get<std::int64_t>(), r["rows_per_sample"].get<std::int64_t>(),
      r["dim"].get<std::int64_t>(), r["heads"].get<std::int64_t>(), r["ffn"].get<std::int64_t>(),
      r["dtype"].get<std::string>(), r["device"].get<std::string>(),
      r["fused_kernels"].get<bool>() ? "" : " (no fused kernels here: both columns are ATen)");
  t += fmt::format("  {:<46} {:>11} {:>13} {:>8} {:>9}\n", "operator", "fused us", "reference us",
                   "speedup", "GB/s");
  for (const auto& e : r["ops"])
    t += fmt::format("  {:<46} {:>11.1f} {:>13.1f} {:>7.2f}x {:>9}\n", e["op"].get<std::string>(),
                     e["fused_us"].get<double>(), e["reference_us"].get<double>(),
                     e["speedup"].get<double>(),
                     e.contains("fused_gbps") ? fmt::format("{:.0f}", e["fused_gbps"].get<double>())
                                              : std::string("-"));
  return t;
}

}  // namespace wanhost::core
