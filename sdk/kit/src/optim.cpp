#include "wanhost/kit/optim.hpp"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <map>
#include <optional>
#include <stdexcept>
#include <tuple>

#include <ATen/ATen.h>

#if WANHOST_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "adamw_kernels.hpp"
#endif
#include "side_tensors.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/compute_weights.hpp"
#include "wanhost/kit/kernel_options.hpp"
#include "wanhost/log.hpp"

namespace wanhost {

AdamW::AdamW(std::vector<std::pair<std::string, at::Tensor>> params, const OptimizerConfig& config,
             bool decay_1d)
    : config_(config) {
  for (auto& [name, p] : params)
    slots_.push_back({name, p, at::zeros_like(p, at::MemoryFormat::Contiguous),
                      at::zeros_like(p, at::MemoryFormat::Contiguous),
                      decays(name, p.dim(), decay_1d)});
}

AdamW::AdamW(std::vector<AdamWParam> params, const OptimizerConfig& config) : config_(config) {
  // State in the parameter's dtype (fp32 master weights by default make this fp32); fp32 state
  // for bf16 parameters would change the reference bf16 path.
  for (auto& p : params)
    slots_.push_back({p.name, p.tensor, at::zeros_like(p.tensor, at::MemoryFormat::Contiguous),
                      at::zeros_like(p.tensor, at::MemoryFormat::Contiguous), p.decay});
}

bool AdamW::decays(const std::string& name, std::int64_t dims, bool decay_1d) {
  const bool one_d =
      dims <= 1 || (name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0);
  return decay_1d || !one_d;
}

namespace {

// LibTorch's fused AdamW (one multi-tensor kernel pass over parameter, gradient and both moments
// instead of eight elementwise passes per tensor) until it refuses once; then tensor by tensor.
// KernelOptions::fused_adamw = false (run.kernels.adamw = loop) asks for the per-tensor update
// from the start (to compare the two).
std::atomic<bool>& fused_refused() {
  static std::atomic<bool> refused{false};
  return refused;
}

bool fused_usable() {
  return kernel_options().fused_adamw && !fused_refused().load();
}

// One update's tensors of one device, dtype and weight decay (what a fused kernel takes at once).
struct Group {
  std::vector<at::Tensor> p, g, m, v;
};

#if WANHOST_WITH_CUDA
// The update of at::_fused_adamw_ with these arguments by wanhost's multi-tensor kernel
// (run.kernels.adamw = wanhost; kernels/adamw_kernels.hpp), gradients left as they are (`count`:
// the update count, a float scalar on the tensors' device; `device_lr` when defined, else `lr`).
// False, with nothing done, unless every tensor is a contiguous fp32 one of a single GPU.
bool wanhost_adamw(const Group& gr, const at::Tensor& count, double lr, const at::Tensor& device_lr,
                   const at::Tensor& divisor, const at::Tensor& skip, double weight_decay,
                   const OptimizerConfig& c) {
  const c10::Device device = gr.p[0].device();
  const char* names[] = {"parameter", "gradient", "exp_avg", "exp_avg_sq"};
  int which = 0;
  for (const auto* list : {&gr.p, &gr.g, &gr.m, &gr.v}) {
    for (const at::Tensor& t : *list)
      if (!t.is_cuda() || t.device() != device || t.scalar_type() != at::kFloat ||
          !t.is_contiguous()) {
        // Said once a process: LibTorch's fused kernel updates such groups.
        static std::atomic<bool> said{false};
        if (!said.exchange(true))
          logger()->warn(
              "AdamW (run.kernels.adamw = wanhost): a {} is not a contiguous fp32 tensor of {} "
              "({} {} on {}, contiguous {}); LibTorch's fused kernel updates its group",
              names[which], device.str(), c10::str(t.sizes()), c10::toString(t.scalar_type()),
              t.device().str(), t.is_contiguous());
        return false;
      }
    ++which;
  }
  const c10::cuda::CUDAGuard guard(device);
  // Scalars on the device, alive until the launch is queued (the allocator orders reuse by stream).
  const auto on = [&](const at::Tensor& t) {
    return t.defined() ? t.to(device, at::kFloat).reshape({}).contiguous() : at::Tensor();
  };
  const at::Tensor lr_t = on(device_lr), step_t = on(count), divisor_t = on(divisor),
                   skip_t = on(skip);
  std::vector<kernels::AdamWTensor> tensors(gr.p.size());
  for (std::size_t i = 0; i < tensors.size(); ++i)
    tensors[i] = {gr.p[i].data_ptr<float>(), gr.g[i].data_ptr<float>(), gr.m[i].data_ptr<float>(),
                  gr.v[i].data_ptr<float>(), gr.p[i].numel()};
  kernels::AdamWScalars s{};
  s.beta1 = static_cast<float>(c.beta1), s.beta2 = static_cast<float>(c.beta2);
  s.weight_decay = static_cast<float>(weight_decay), s.eps = static_cast<float>(c.eps);
  s.lr = static_cast<float>(lr);
  s.lr_ptr = lr_t.defined() ? lr_t.data_ptr<float>() : nullptr;
  s.step = step_t.data_ptr<float>();
  s.grad_divisor = divisor_t.defined() ? divisor_t.data_ptr<float>() : nullptr;
  s.skip = skip_t.defined() ? skip_t.data_ptr<float>() : nullptr;
  const cudaError_t err =
      kernels::adamw_update(tensors.data(), static_cast<int>(tensors.size()), s,
                            at::cuda::getCurrentCUDAStream(device.index()).stream());
  TORCH_CHECK(err == cudaSuccess, "AdamW (run.kernels.adamw = wanhost): the kernel failed on ",
              tensors.size(), " tensors: ", cudaGetErrorString(err));
  return true;
}
#endif

// One tensor's AdamW update (torch.optim.AdamW, decoupled weight decay).
void update_tensor(at::Tensor& p, const at::Tensor& g, at::Tensor& m, at::Tensor& v, bool decay,
                   double lr, std::int64_t step, const OptimizerConfig& c) {
  const double bias1 = 1.0 - std::pow(c.beta1, static_cast<double>(step));
  const double bias2_sqrt = std::sqrt(1.0 - std::pow(c.beta2, static_cast<double>(step)));
  if (decay && c.weight_decay != 0.0) p.mul_(1.0 - lr * c.weight_decay);
  m.lerp_(g, 1.0 - c.beta1);
  v.mul_(c.beta2).addcmul_(g, g, 1.0 - c.beta2);
  at::Tensor denom = (v.sqrt() / bias2_sqrt).add_(c.eps);
  p.addcdiv_(m, denom, -lr / bias1);
}

}  // namespace

namespace {

// Per AdamW object that has stepped: its updates so far (skipped steps not counted), a float32
// scalar on its parameters' device beside the object (side_tensors.hpp), advanced there by each
// step. The fused kernel reads its bias corrections from it, so that a step
// captured in a CUDA graph counts on every replay (a count made from the host's number would be
// the capture's forever) and a skip decided on the device is never counted.
SideTensors& device_steps() {
  static SideTensors& table = SideTensors::make();
  return table;
}

}  // namespace

void AdamW::step(double lr) {
  step(lr, at::Tensor(), at::Tensor());
}

void AdamW::step(double lr, const at::Tensor& grad_divisor) {
  step(lr, grad_divisor, at::Tensor());
}

AdamW::~AdamW() {
  device_steps().set(this, at::Tensor());
}

std::int64_t AdamW::steps() const {
  const at::Tensor count = device_steps().get(this);
  return count.defined() ? static_cast<std::int64_t>(count.item<float>()) : step_;
}

void AdamW::step(double lr, const at::Tensor& grad_divisor, const at::Tensor& skip) {
  update(lr, at::Tensor(), grad_divisor, skip);
}

void AdamW::step(const at::Tensor& lr, const at::Tensor& grad_divisor, const at::Tensor& skip) {
  if (!lr.defined() || lr.numel() != 1)
    throw std::invalid_argument("AdamW::step: the learning rate tensor must hold one value");
  update(0.0, lr, grad_divisor, skip);
}

void AdamW::update(double lr, const at::Tensor& device_lr, const at::Tensor& grad_divisor,
                   const at::Tensor& skip) {
  at::NoGradGuard no_grad;
  // Copies of the weights made before this update (compute_weights.hpp, FP8) are stale after it,
  // whichever kernel writes the weights (wanhost's does not move their version counters).
  weights_changed();
  // found_inf of the fused kernel: exactly 1 to skip, 0 to update.
  at::Tensor skipped_now;
  if (skip.defined()) skipped_now = (skip != 0).to(at::kFloat).reshape({});
  // The fused kernel takes tensors of one device and dtype, and one weight decay.
  std::map<std::tuple<std::string, at::ScalarType, bool>, Group> groups;
  for (auto& s : slots_) {
    at::Tensor g = s.param.grad();
    if (!g.defined()) continue;
    if (g.scalar_type() != s.param.scalar_type()) g = g.to(s.param.scalar_type());
    auto& gr = groups[{s.param.device().str(), s.param.scalar_type(), s.decay}];
    gr.p.push_back(s.param);
    gr.g.push_back(g);
    gr.m.push_back(s.exp_avg);
    gr.v.push_back(s.exp_avg_sq);
  }
  // The update count with this step, advanced where the parameters are (step_ only seeds it: at
  // the first step with gradients, or after load_state).
  at::Tensor count = device_steps().get(this);
  if (!count.defined()) {
    if (groups.empty()) {  // no gradient anywhere yet: nothing to update, counted on the host
      ++step_;
      return;
    }
    const c10::Device device = groups.begin()->second.p[0].device();
    count = at::full({}, static_cast<double>(step_), at::TensorOptions(at::kFloat).device(device));
    device_steps().set(this, count);
  }
  skipped_now.defined() ? count.add_(1.0 - skipped_now.to(count.device())) : count.add_(1.0);
  // The per-tensor path's host values, read once (a synchronisation on a GPU).
  std::optional<std::int64_t> host_step;
  bool host_skip = false;
  for (auto& [key, gr] : groups) {
    const bool decay = std::get<2>(key);
    const double decay_rate = decay ? config_.weight_decay : 0.0;
    const c10::Device device = gr.p[0].device();
#if WANHOST_WITH_CUDA
    // wanhost's kernel is for GPU groups; a CPU group takes LibTorch's fused update without a
    // word (its warning is for GPU tensors the kernel cannot take).
    if (device.is_cuda() && fused_usable() && kernel_options().wanhost_adamw &&
        wanhost_adamw(gr, count, lr, device_lr, grad_divisor, skipped_now, decay_rate, config_))
      continue;
#endif
    if (fused_usable()) {
      try {
        // The step count, read (not changed) by the kernel: one tensor per parameter.
        const std::vector<at::Tensor> counts(gr.p.size(), count.to(device));
        std::optional<at::Tensor> divisor, found_inf;
        if (grad_divisor.defined()) divisor = grad_divisor.to(device, at::kFloat).reshape({});
        if (skipped_now.defined()) found_inf = skipped_now.to(device);
        // The learning rate as a host double or a device tensor (float32, on the parameters'
        // device, read by the kernel): the two overloads of the same operator.
        const auto fused = [&](const auto& learning_rate) {
          at::_fused_adamw_(gr.p, gr.g, gr.m, gr.v, {}, counts, learning_rate, config_.beta1,
                            config_.beta2, decay_rate, config_.eps,
                            /*amsgrad=*/false, /*maximize=*/false, divisor, found_inf);
        };
        device_lr.defined() ? fused(device_lr.to(device, at::kFloat).reshape({})) : fused(lr);
        continue;
      } catch (const c10::Error& e) {
        // Its checks run before any tensor changes: this group is updated below instead.
        fused_refused().store(true);
        logger()->warn("AdamW: LibTorch's fused kernel refused ({}); updating tensor by tensor",
                       e.what_without_backtrace());
      }
    }
    if (!host_step) {
      host_step = steps();
      host_skip = skipped_now.defined() && skipped_now.item<float>() != 0;
      if (device_lr.defined()) lr = device_lr.item<double>();
    }
    if (host_skip) continue;
    // Divided as the fused kernel divides: in fp32, the divisor rounded to float first.
    // (A 0-dim float divisor keeps a bf16 gradient bf16, computed in float.)
    const at::Tensor divisor =
        grad_divisor.defined() ? grad_divisor.to(device, at::kFloat) : at::Tensor();
    for (std::size_t i = 0; i < gr.p.size(); ++i)
      update_tensor(gr.p[i], divisor.defined() ? gr.g[i] / divisor : gr.g[i], gr.m[i], gr.v[i],
                    decay, lr, *host_step, config_);
  }
}

std::map<std::string, at::Tensor> AdamW::state() const {
  std::map<std::string, at::Tensor> out;
  for (const auto& s : slots_) {
    out[s.name + ".exp_avg"] = s.exp_avg;
    out[s.name + ".exp_avg_sq"] = s.exp_avg_sq;
  }
  out["__step__"] = at::scalar_tensor(steps(), at::kLong);
  return out;
}

void AdamW::load_state(const std::map<std::string, at::Tensor>& state) {
  std::string problems;
  auto get = [&](const std::string& key, const at::Tensor& like) -> const at::Tensor* {
    auto it = state.find(key);
    if (it == state.end()) {
      problems += "\n  missing " + key;
      return nullptr;
    }
    if (it->second.sizes() != like.sizes()) {
      problems += "\n  " + key + " has shape " + c10::str(it->second.sizes()) + ", expected " +
                  c10::str(like.sizes());
      return nullptr;
    }
    return &it->second;
  };
  for (auto& s : slots_) {
    const at::Tensor* m = get(s.name + ".exp_avg", s.exp_avg);
    const at::Tensor* v = get(s.name + ".exp_avg_sq", s.exp_avg_sq);
    if (m && v) {
      s.exp_avg.copy_(*m);
      s.exp_avg_sq.copy_(*v);
    }
  }
  auto it = state.find("__step__");
  if (it == state.end()) problems += "\n  missing __step__";
  if (!problems.empty())
    throw std::runtime_error("optimizer state does not match the parameters:" + problems);
  step_ = it->second.item<std::int64_t>();
  device_steps().set(this, at::Tensor());  // made again from step_ by the next step
}

std::int64_t AdamW::state_bytes() const {
  std::int64_t n = 0;
  for (const auto& s : slots_)
    n += 2 * s.exp_avg.numel() * static_cast<std::int64_t>(s.exp_avg.element_size());
  return n;
}

at::Tensor grad_norm_squared(const std::vector<at::Tensor>& params) {
  // Per-tensor norms by multi-tensor kernels (one launch per device and dtype, not three per
  // tensor), their squares summed in float64.
  std::map<std::pair<std::string, at::ScalarType>, std::vector<at::Tensor>> groups;
  for (const auto& p : params)
    if (p.grad().defined())
      groups[{p.grad().device().str(), p.grad().scalar_type()}].push_back(p.grad());
  at::Tensor total;
  for (const auto& [key, grads] : groups) {
    const auto norms = at::_foreach_norm(grads, 2);
    const auto sq = at::stack(norms).to(at::kDouble).pow(2).sum();
    total = total.defined() ? total + sq.to(total.device()) : sq;
  }
  if (!total.defined()) total = at::zeros({}, at::TensorOptions().dtype(at::kDouble));
  return total;
}

at::Tensor clip_divisor(const at::Tensor& total_norm, double max_norm) {
  // torch.nn.utils.clip_grad_norm_ multiplies by min(1, max_norm / (norm + 1e-6)); this is its
  // inverse, computed in float64 on the device, so the norm is never read on the host. A
  // non-finite norm gives 1: the gradients stay as they are (the host skips or aborts that step).
  const at::Tensor norm = total_norm.to(at::kDouble);
  if (max_norm <= 0) return at::ones({}, norm.options().dtype(at::kFloat));
  const at::Tensor divisor = at::clamp_min((norm + 1e-6) / max_norm, 1.0);
  return at::where(at::isfinite(norm), divisor, at::ones_like(divisor)).to(at::kFloat);
}

void clip_gradients(const std::vector<at::Tensor>& params, double max_norm,
                    const at::Tensor& total_norm) {
  if (max_norm <= 0) return;  // (clip_divisor would give 1)
  at::NoGradGuard no_grad;
  std::map<std::pair<std::string, at::ScalarType>, std::vector<at::Tensor>> groups;
  for (const auto& p : params)
    if (p.grad().defined())
      groups[{p.grad().device().str(), p.grad().scalar_type()}].push_back(p.grad());
  if (groups.empty()) return;
  // The rule of clip_divisor, applied in a pass of its own (a divisor of exactly 1 changes
  // nothing); AdamW::step(lr, divisor) applies it without one.
  const at::Tensor divisor = clip_divisor(total_norm, max_norm);
  for (auto& [key, grads] : groups)
    at::_foreach_div_(grads, divisor.to(grads.front().device(), grads.front().scalar_type()));
}

}  // namespace wanhost
