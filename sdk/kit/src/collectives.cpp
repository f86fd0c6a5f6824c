#include "wanhost/kit/collectives.hpp"

#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/grad_mode.h>

namespace wanhost::collectives {
namespace {

using torch::autograd::variable_list;

bool trivial(const CommunicatorPtr& group) {
  return !group || group->size() == 1;
}

at::Tensor all_reduced(const at::Tensor& x, const CommunicatorPtr& group) {
  at::Tensor t = x.contiguous().clone();
  group->all_reduce(t, ReduceOp::Sum);
  return t;
}

at::Tensor gathered(const at::Tensor& x, std::int64_t dim, const CommunicatorPtr& group) {
  // all_gather concatenates along dim 0: move `dim` to the front and back again.
  const at::Tensor front = x.movedim(dim, 0).contiguous();
  std::vector<std::int64_t> shape = front.sizes().vec();
  shape[0] *= group->size();
  at::Tensor out = at::empty(shape, front.options());
  group->all_gather(out, front);
  return out.movedim(0, dim).contiguous();
}

at::Tensor sliced(const at::Tensor& x, std::int64_t dim, const CommunicatorPtr& group) {
  const int n = group->size();
  const std::int64_t size = x.size(dim);
  if (size % n != 0)
    throw std::invalid_argument("slice_along: dimension " + std::to_string(dim) + " of size " +
                                std::to_string(size) + " does not split over " + std::to_string(n) +
                                " ranks");
  const std::int64_t part = size / n;
  return x.narrow(dim, group->rank() * part, part).contiguous();
}

at::Tensor reduce_scattered(const at::Tensor& x, std::int64_t dim, const CommunicatorPtr& group) {
  const at::Tensor front = x.movedim(dim, 0).contiguous();
  std::vector<std::int64_t> shape = front.sizes().vec();
  shape[0] /= group->size();
  at::Tensor out = at::empty(shape, front.options());
  group->reduce_scatter(out, front, ReduceOp::Sum);
  return out.movedim(0, dim).contiguous();
}

// The backward of one collective: applies `grad_fn` to the incoming gradient.
class CollectiveBackward final : public torch::autograd::Node {
 public:
  CollectiveBackward(std::string name, std::function<at::Tensor(const at::Tensor&)> grad_fn)
      : name_(std::move(name)), grad_fn_(std::move(grad_fn)) {}
  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined()) return {at::Tensor()};
    return {grad_fn_(grads[0])};
  }
  std::string name() const override { return name_; }
  void release_variables() override { grad_fn_ = nullptr; }

 private:
  std::string name_;
  std::function<at::Tensor(const at::Tensor&)> grad_fn_;
};

// out = forward(x) without a graph; its gradient is backward(grad) (when x needs one).
at::Tensor differentiable(const char* name, const at::Tensor& x,
                          const std::function<at::Tensor(const at::Tensor&)>& forward,
                          std::function<at::Tensor(const at::Tensor&)> backward) {
  at::Tensor out;
  {
    at::NoGradGuard no_grad;
    out = forward(x);
  }
  if (at::GradMode::is_enabled() && x.requires_grad()) {
    auto node = std::shared_ptr<CollectiveBackward>(
        new CollectiveBackward(std::string("wanhost::collectives::") + name, std::move(backward)),
        torch::autograd::deleteNode);
    node->set_next_edges(torch::autograd::collect_next_edges(x));
    torch::autograd::create_gradient_edge(out, node);
  }
  return out;
}

}  // namespace

at::Tensor copy_to_group(const at::Tensor& x, const CommunicatorPtr& group) {
  if (trivial(group)) return x;
  return differentiable(
      "copy_to_group", x, [](const at::Tensor& t) { return t.detach(); },
      [group](const at::Tensor& g) { return all_reduced(g, group); });
}

at::Tensor reduce_from_group(const at::Tensor& x, const CommunicatorPtr& group) {
  if (trivial(group)) return x;
  return differentiable(
      "reduce_from_group", x, [group](const at::Tensor& t) { return all_reduced(t, group); },
      [](const at::Tensor& g) { return g; });
}

at::Tensor sum_over_group(const at::Tensor& x, const CommunicatorPtr& group) {
  if (trivial(group)) return x;
  return differentiable(
      "sum_over_group", x, [group](const at::Tensor& t) { return all_reduced(t, group); },
      [group](const at::Tensor& g) { return all_reduced(g, group); });
}

at::Tensor gather_along(const at::Tensor& x, std::int64_t dim, const CommunicatorPtr& group) {
  if (trivial(group)) return x;
  const std::int64_t d = dim < 0 ? dim + x.dim() : dim;
  return differentiable(
      "gather_along", x, [group, d](const at::Tensor& t) { return gathered(t, d, group); },
      [group, d](const at::Tensor& g) { return sliced(g, d, group); });
}

at::Tensor all_gather_along(const at::Tensor& x, std::int64_t dim, const CommunicatorPtr& group) {
  if (trivial(group)) return x;
  const std::int64_t d = dim < 0 ? dim + x.dim() : dim;
  return differentiable(
      "all_gather_along", x, [group, d](const at::Tensor& t) { return gathered(t, d, group); },
      [group, d](const at::Tensor& g) { return reduce_scattered(g, d, group); });
}

at::Tensor reduce_scatter_along(const at::Tensor& x, std::int64_t dim,
                                const CommunicatorPtr& group) {
  if (trivial(group)) return x;
  const std::int64_t d = dim < 0 ? dim + x.dim() : dim;
  if (x.size(d) % group->size() != 0)
    throw std::invalid_argument("reduce_scatter_along: dimension " + std::to_string(d) +
                                " of size " + std::to_string(x.size(d)) + " does not split over " +
                                std::to_string(group->size()) + " ranks");
  return differentiable(
      "reduce_scatter_along", x,
      [group, d](const at::Tensor& t) { return reduce_scattered(t, d, group); },
      [group, d](const at::Tensor& g) { return gathered(g, d, group); });
}

}  // namespace wanhost::collectives
