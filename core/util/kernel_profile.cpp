#include "kernel_profile.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>

#include <torch/csrc/autograd/profiler_kineto.h>

#include "device_timing.hpp"
#include "wanhost/errors.hpp"

namespace wanhost::core {
namespace {

bool has_any(const std::string& s, std::initializer_list<const char*> parts) {
  for (const char* p : parts)
    if (s.find(p) != std::string::npos) return true;
  return false;
}

}  // namespace

std::string kernel_class(const std::string& name) {
  std::string s(name);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  // Order matters: cuDNN's attention kernels also carry "sm90", wanhost's kernels "norm".
  if (has_any(s, {"wanhost"})) return "wanhost fused";
  if (has_any(s, {"flash", "fmha", "sdpa", "attention", "attn"})) return "attention";
  if (has_any(s, {"gemm", "nvjet", "xmma", "cutlass", "splitk", "cublas", "sm90_", "sm80_",
                  "aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"}))
    return "matmul";
  if (has_any(s, {"norm"})) return "norm";
  if (has_any(s, {"copy", "memcpy", "memset", "aten::to", "aten::cat", "fill"})) return "copy/fill";
  if (has_any(s, {"reduce", "aten::sum", "aten::mean"})) return "reduction";
  if (has_any(s, {"elementwise", "aten::"})) return "elementwise";
  return "other";
}

std::vector<std::pair<std::string, double>> KernelProfile::classes() const {
  std::map<std::string, double> sum;
  for (const auto& k : kernels) sum[k.kind] += k.ms;
  std::vector<std::pair<std::string, double>> out(sum.begin(), sum.end());
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.second > b.second; });
  return out;
}

Json KernelProfile::to_json(std::size_t top) const {
  Json classes_json = Json::object();
  for (const auto& [kind, ms] : classes()) classes_json[kind] = ms;
  Json kernels_json = Json::array();
  for (std::size_t i = 0; i < std::min(top, kernels.size()); ++i)
    kernels_json.push_back({{"name", kernels[i].name},
                            {"class", kernels[i].kind},
                            {"ms", kernels[i].ms},
                            {"calls", kernels[i].calls}});
  Json j = {{"total_ms", total_ms}, {"classes_ms", classes_json}, {"top", kernels_json}};
  if (span_ms > 0) {
    j["span_ms"] = span_ms;
    j["idle_ms"] = span_ms - total_ms;
    j["launches"] = launches;
  }
  return j;
}

std::string KernelProfile::table(std::size_t top) const {
  std::string out;
  char line[512];
  if (total_ms >= 0) {
    std::snprintf(line, sizeof line, "  kernel time per step: %.3f ms\n", total_ms);
    out += line;
    if (span_ms > 0) {
      std::snprintf(line, sizeof line,
                    "  device span per step: %.3f ms (first activity's start to last one's "
                    "end), of it idle %.3f ms between %.0f activities\n",
                    span_ms, span_ms - total_ms, launches);
      out += line;
    }
  } else {
    out += "  CPU operator times per step, inclusive (nested operators overlap):\n";
  }
  for (const auto& [kind, ms] : classes()) {
    if (total_ms > 0)
      std::snprintf(line, sizeof line, "    %-14s %9.3f ms  %5.1f%%\n", kind.c_str(), ms,
                    100 * ms / total_ms);
    else
      std::snprintf(line, sizeof line, "    %-14s %9.3f ms\n", kind.c_str(), ms);
    out += line;
  }
  out += "  longest kernels (ms per step, calls per step, class, name):\n";
  for (std::size_t i = 0; i < std::min(top, kernels.size()); ++i) {
    const auto& k = kernels[i];
    std::snprintf(line, sizeof line, "    %8.3f %6.1f  %-14s %.150s\n", k.ms, k.calls,
                  k.kind.c_str(), k.name.c_str());
    out += line;
  }
  return out;
}

KernelProfile profile_kernels(const c10::Device& device, const std::function<void()>& fn,
                              int repeats, const std::string& trace_path) {
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  using torch::profiler::impl::ProfilerConfig;
  using torch::profiler::impl::ProfilerState;
  if (repeats < 1) throw UsageError("profile: repeats must be >= 1");
  const bool gpu = device.is_cuda();
  // Kineto looks for GPUs even when asked for CPU activity only and logs an error on machines
  // without one; on the CPU its errors say nothing useful (an explicit setting wins).
  if (!gpu) ::setenv("KINETO_LOG_LEVEL", "5", /*overwrite=*/0);
  std::set<ActivityType> activities{ActivityType::CPU};
  if (gpu) activities.insert(ActivityType::CUDA);
  const ProfilerConfig config(ProfilerState::KINETO);
  sync_device(device);
  prof::prepareProfiler(config, activities);
  prof::enableProfiler(config, activities);
  for (int i = 0; i < repeats; ++i) fn();
  sync_device(device);
  auto result = prof::disableProfiler();
  if (!trace_path.empty()) result->save(trace_path);

  // GPUs: device kernels, memcpy and memset. CPU: operators, inclusive (nested ones overlap).
  std::map<std::string, std::pair<double, double>> by_name;  // ns, calls
  std::int64_t first_ns = 0, last_ns = 0;
  double device_events = 0;
  for (const auto& e : result->events()) {
    const bool on_device = e.deviceType() == c10::DeviceType::CUDA;
    if (gpu != on_device) continue;
    if (!gpu && e.name().rfind("aten::", 0) != 0) continue;
    auto& [ns, calls] = by_name[e.name()];
    ns += static_cast<double>(e.durationNs());
    calls += 1;
    if (gpu) {
      const auto start = static_cast<std::int64_t>(e.startNs());
      const auto end = start + static_cast<std::int64_t>(e.durationNs());
      if (device_events == 0 || start < first_ns) first_ns = start;
      if (device_events == 0 || end > last_ns) last_ns = end;
      device_events += 1;
    }
  }
  KernelProfile p;
  if (device_events > 0) {
    p.span_ms = static_cast<double>(last_ns - first_ns) / 1e6 / repeats;
    p.launches = device_events / repeats;
  }
  for (const auto& [name, v] : by_name) {
    KernelTime k{name, kernel_class(name), v.first / 1e6 / repeats, v.second / repeats};
    p.total_ms += k.ms;
    p.kernels.push_back(std::move(k));
  }
  std::sort(p.kernels.begin(), p.kernels.end(),
            [](const KernelTime& a, const KernelTime& b) { return a.ms > b.ms; });
  if (!gpu) p.total_ms = -1;  // inclusive operator times do not add up
  return p;
}

}  // namespace wanhost::core
