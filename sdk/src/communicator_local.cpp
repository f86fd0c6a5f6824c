// The communicator of a single process: every collective is the identity.
#include <stdexcept>

#include <ATen/ATen.h>

#include "wanhost/communicator.hpp"

namespace wanhost {
namespace {

class DoneWork final : public Work {
 public:
  void wait() override {}
};

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "local"; }

  WorkPtr all_reduce(at::Tensor&, ReduceOp, bool) override { return done(); }
  WorkPtr all_gather(at::Tensor& output, const at::Tensor& input, bool) override {
    copy(output, input, "all_gather");
    return done();
  }
  WorkPtr reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp, bool) override {
    copy(output, input, "reduce_scatter");
    return done();
  }
  WorkPtr all_to_all(at::Tensor& output, const at::Tensor& input, bool) override {
    copy(output, input, "all_to_all");
    return done();
  }
  WorkPtr broadcast(at::Tensor&, int root, bool) override {
    if (root != 0)
      throw std::invalid_argument("broadcast: root " + std::to_string(root) +
                                  " out of range (size 1)");
    return done();
  }
  WorkPtr send(const at::Tensor&, int dst, int) override {
    throw std::logic_error("send to rank " + std::to_string(dst) +
                           " on a single-process communicator");
  }
  WorkPtr recv(at::Tensor&, int src, int) override {
    throw std::logic_error("recv from rank " + std::to_string(src) +
                           " on a single-process communicator");
  }
  void barrier() override {}
  std::shared_ptr<Communicator> split(const std::vector<int>& ranks) override {
    if (ranks != std::vector<int>{0})
      throw std::invalid_argument("split: a single-process communicator has only rank 0");
    return std::make_shared<LocalCommunicator>();
  }

 private:
  static WorkPtr done() { return std::make_shared<DoneWork>(); }
  static void copy(at::Tensor& output, const at::Tensor& input, const char* op) {
    if (output.numel() != input.numel())
      throw std::invalid_argument(std::string(op) + ": output has " +
                                  std::to_string(output.numel()) + " elements, input " +
                                  std::to_string(input.numel()));
    if (!output.is_same(input)) output.view(-1).copy_(input.reshape(-1));
  }
};

}  // namespace

CommunicatorPtr make_local_communicator() {
  return std::make_shared<LocalCommunicator>();
}

}  // namespace wanhost
