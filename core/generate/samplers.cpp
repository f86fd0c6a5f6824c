#include "samplers.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace wanhost::core {
namespace {

class EulerSampler final : public Sampler {
 public:
  EulerSampler(const Scheduler& scheduler, std::int64_t steps) : scheduler_(scheduler) {
    sigmas_ = scheduler.sampling_sigmas(steps);
    if (static_cast<std::int64_t>(sigmas_.size()) != steps + 1)
      throw std::runtime_error("the scheduler's sampling schedule has " +
                               std::to_string(sigmas_.size()) + " sigmas for " +
                               std::to_string(steps) + " steps (expected steps + 1)");
    for (std::int64_t i = 0; i < steps; ++i)
      timesteps_.push_back(scheduler.model_timestep(sigma(i)));
  }
  at::Tensor step(std::int64_t i, const at::Tensor& x, const at::Tensor& v) override {
    return scheduler_.sampling_step(x, v, sigma(i), sigma(i + 1));
  }

 private:
  const Scheduler& scheduler_;
};

// log(alpha / sigma) of a flow-matching noise level (alpha = 1 - sigma): +inf at sigma = 0.
double half_log_snr(double sigma) {
  return std::log(1.0 - sigma) - std::log(sigma);
}

// UniPC-bh2 in its data-prediction form: the model's velocity becomes an x0 prediction
// m = x - sigma v; each step first corrects the current sample with the new prediction (UniC),
// then predicts the next one (UniP) from the last two predictions.
class UniPcSampler final : public Sampler {
 public:
  UniPcSampler(double shift, std::int64_t num_train_timesteps, std::int64_t steps) {
    unipc_flow_schedule(shift, num_train_timesteps, steps, sigmas_, timesteps_);
  }

  at::Tensor step(std::int64_t i, const at::Tensor& x, const at::Tensor& v) override {
    if (i != next_)
      throw std::logic_error("unipc: step " + std::to_string(i) + " taken out of order");
    ++next_;
    const at::Tensor m = x - sigma(i) * v.to(x.scalar_type());
    at::Tensor sample = x;
    if (i > 0) sample = correct(i, m);
    if (predictions_.size() == 2) predictions_.erase(predictions_.begin());
    predictions_.push_back(m);
    // Lower orders at the start (no history yet) and at the last step (lower_order_final).
    order_ = static_cast<int>(std::min<std::int64_t>({2, steps() - i, lower_order_nums_ + 1}));
    last_sample_ = sample;
    at::Tensor next = predict(i, sample);
    lower_order_nums_ = std::min(lower_order_nums_ + 1, 2);
    return next;
  }

 private:
  // Coefficients shared by predictor and corrector between noise levels s0 -> t.
  struct Step {
    double ratio, alpha_t, h_phi_1, b_h, h;
  };
  Step coefficients(double s0, double t) const {
    Step c;
    c.h = half_log_snr(t) - half_log_snr(s0);
    const double hh = -c.h;
    c.ratio = t / s0;
    c.alpha_t = 1.0 - t;
    c.h_phi_1 = std::expm1(hh);
    c.b_h = std::expm1(hh);  // bh2
    return c;
  }

  // UniP from sigma(i) to sigma(i + 1).
  at::Tensor predict(std::int64_t i, const at::Tensor& x) const {
    const Step c = coefficients(sigma(i), sigma(i + 1));
    const at::Tensor& m0 = predictions_.back();
    at::Tensor out = c.ratio * x - (c.alpha_t * c.h_phi_1) * m0;
    if (order_ == 2) {
      const double rk = (half_log_snr(sigma(i - 1)) - half_log_snr(sigma(i))) / c.h;
      const at::Tensor d1 = (predictions_.front() - m0) / rk;
      out = out - (c.alpha_t * c.b_h * 0.5) * d1;  // order 2: rho_p = 1/2
    }
    return out;
  }

  // UniC of the step from sigma(i - 1) to sigma(i) with the new prediction m_t, at the order of
  // that step.
  at::Tensor correct(std::int64_t i, const at::Tensor& m_t) const {
    const Step c = coefficients(sigma(i - 1), sigma(i));
    const double hh = -c.h;
    const at::Tensor& m0 = predictions_.back();
    at::Tensor out = c.ratio * last_sample_ - (c.alpha_t * c.h_phi_1) * m0;
    double rho_t = 0.5;  // order 1
    at::Tensor corr;
    if (order_ == 2) {
      // Solve [[1, 1], [rk, 1]] rho = b with b_k = k! h_phi_k / B(h).
      const double rk = (half_log_snr(sigma(i - 2)) - half_log_snr(sigma(i - 1))) / c.h;
      const double phi_1 = c.h_phi_1 / hh - 1.0;
      const double phi_2 = phi_1 / hh - 0.5;
      const double b1 = phi_1 / c.b_h, b2 = 2.0 * phi_2 / c.b_h;
      const double rho_0 = (b1 - b2) / (1.0 - rk);
      rho_t = b1 - rho_0;
      corr = rho_0 * ((predictions_.front() - m0) / rk);
    }
    at::Tensor res = rho_t * (m_t - m0);
    if (corr.defined()) res = res + corr;
    return out - (c.alpha_t * c.b_h) * res;
  }

  std::vector<at::Tensor> predictions_;  // the last two x0 predictions, newest last
  at::Tensor last_sample_;
  int order_ = 0, lower_order_nums_ = 0;
  std::int64_t next_ = 0;
};

}  // namespace

void unipc_flow_schedule(double shift, std::int64_t num_train_timesteps, std::int64_t steps,
                         std::vector<double>& sigmas, std::vector<double>& timesteps) {
  if (steps < 1) throw std::invalid_argument("unipc: sampling needs at least one step");
  if (!(shift > 0)) throw std::invalid_argument("unipc: the shift must be > 0");
  const double t = static_cast<double>(num_train_timesteps);
  sigmas.clear();
  timesteps.clear();
  for (std::int64_t k = 0; k < steps; ++k) {
    // np.linspace(1, 1/T, steps + 1)[:-1] (computed as numpy does: k * step + start), shifted.
    const double u = static_cast<double>(k) * ((1.0 / t - 1.0) / static_cast<double>(steps)) + 1.0;
    double s = shift * u / (1.0 + (shift - 1.0) * u);
    // Diffusers keeps the first sigma off 1 so that log(alpha) stays finite.
    if (k == 0 && std::fabs(s - 1.0) < 1e-6) s -= 1e-6;
    timesteps.push_back(std::trunc(s * t));
    sigmas.push_back(static_cast<float>(s));
  }
  sigmas.push_back(0.0);
}

std::unique_ptr<Sampler> make_euler_sampler(const Scheduler& scheduler, std::int64_t steps) {
  return std::make_unique<EulerSampler>(scheduler, steps);
}

std::unique_ptr<Sampler> make_unipc_sampler(double shift, std::int64_t num_train_timesteps,
                                            std::int64_t steps) {
  return std::make_unique<UniPcSampler>(shift, num_train_timesteps, steps);
}

}  // namespace wanhost::core
