#include "nccl_communicator.hpp"

#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <stdexcept>

namespace wanhost::core {
namespace {

c10d::ReduceOp to_c10d(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return c10d::ReduceOp(c10d::ReduceOp::SUM);
    case ReduceOp::Avg:
      return c10d::ReduceOp(c10d::ReduceOp::AVG);
    case ReduceOp::Max:
      return c10d::ReduceOp(c10d::ReduceOp::MAX);
    case ReduceOp::Min:
      return c10d::ReduceOp(c10d::ReduceOp::MIN);
  }
  return c10d::ReduceOp(c10d::ReduceOp::SUM);
}

class NcclWork final : public Work {
 public:
  NcclWork(c10::intrusive_ptr<c10d::Work> work, std::string what)
      : work_(std::move(work)), what_(std::move(what)) {}
  void wait() override {
    if (!work_) return;
    try {
      work_->wait();
    } catch (const std::exception& e) {
      throw std::runtime_error(what_ + " failed: " + e.what());
    }
    work_.reset();
  }

 private:
  c10::intrusive_ptr<c10d::Work> work_;
  std::string what_;
};

std::chrono::milliseconds millis(double seconds) {
  return std::chrono::milliseconds(static_cast<long long>(seconds * 1000.0));
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(c10::intrusive_ptr<c10d::Store> store, int rank, int size,
                   std::vector<int> world_ranks, double timeout_s)
      : store_(std::move(store)), world_ranks_(std::move(world_ranks)), timeout_s_(timeout_s) {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = millis(timeout_s);
    pg_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(store_, rank, size, opts);
  }
  ~NcclCommunicator() override {
    try {
      pg_->shutdown();
    } catch (...) {
    }
  }

  int rank() const override { return pg_->getRank(); }
  int size() const override { return pg_->getSize(); }
  std::string backend() const override { return "nccl"; }

  WorkPtr all_reduce(at::Tensor& tensor, ReduceOp op, bool async) override {
    std::vector<at::Tensor> v{tensor};
    c10d::AllreduceOptions o;
    o.reduceOp = to_c10d(op);
    return finish(pg_->allreduce(v, o), "all_reduce", tensor, async);
  }
  WorkPtr all_gather(at::Tensor& output, const at::Tensor& input, bool async) override {
    at::Tensor in = input;
    return finish(pg_->_allgather_base(output, in), "all_gather", input, async);
  }
  WorkPtr reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp op,
                         bool async) override {
    at::Tensor in = input;
    c10d::ReduceScatterOptions o;
    o.reduceOp = to_c10d(op);
    return finish(pg_->_reduce_scatter_base(output, in, o), "reduce_scatter", input, async);
  }
  WorkPtr all_to_all(at::Tensor& output, const at::Tensor& input, bool async) override {
    at::Tensor in = input;
    std::vector<int64_t> equal;
    return finish(pg_->alltoall_base(output, in, equal, equal), "all_to_all", input, async);
  }
  WorkPtr broadcast(at::Tensor& tensor, int root, bool async) override {
    std::vector<at::Tensor> v{tensor};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    return finish(pg_->broadcast(v, o), "broadcast", tensor, async);
  }
  WorkPtr send(const at::Tensor& tensor, int dst, int tag) override {
    std::vector<at::Tensor> v{tensor};
    return finish(pg_->send(v, dst, tag), "send to " + std::to_string(dst), tensor, true);
  }
  WorkPtr recv(at::Tensor& tensor, int src, int tag) override {
    std::vector<at::Tensor> v{tensor};
    return finish(pg_->recv(v, src, tag), "recv from " + std::to_string(src), tensor, true);
  }
  void barrier() override { finish(pg_->barrier(), "barrier", at::Tensor(), false); }

  std::shared_ptr<Communicator> split(const std::vector<int>& ranks) override {
    const int me = rank();
    int sub_rank = -1;
    std::vector<int> world;
    for (std::size_t i = 0; i < ranks.size(); ++i) {
      if (ranks[i] < 0 || ranks[i] >= size() || (i > 0 && ranks[i] <= ranks[i - 1]))
        throw std::invalid_argument("split: ranks must be ascending, distinct and in [0, " +
                                    std::to_string(size()) + ")");
      if (ranks[i] == me) sub_rank = static_cast<int>(i);
      world.push_back(world_ranks_[static_cast<std::size_t>(ranks[i])]);
    }
    if (sub_rank < 0)
      throw std::invalid_argument("split: this rank (" + std::to_string(me) +
                                  ") is not in the group it asked for");
    // Every rank calls split in the same order, so the counter names the same call everywhere;
    // the group's first rank tells the groups of one call apart.
    const std::string prefix =
        "split" + std::to_string(splits_++) + "/" + std::to_string(ranks.front());
    auto sub_store = c10::make_intrusive<c10d::PrefixStore>(prefix, store_);
    return std::make_shared<NcclCommunicator>(sub_store, sub_rank, static_cast<int>(ranks.size()),
                                              world, timeout_s_);
  }

 private:
  WorkPtr finish(c10::intrusive_ptr<c10d::Work> w, const std::string& op, const at::Tensor& t,
                 bool async) {
    std::string what = "nccl " + op;
    if (t.defined())
      what +=
          " of " + std::to_string(t.numel()) + " " + c10::toString(t.scalar_type()) + " elements";
    what += " on a group of " + std::to_string(size()) + " rank(s)";
    auto work = std::make_shared<NcclWork>(std::move(w), std::move(what));
    if (!async) work->wait();
    return work;
  }

  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> pg_;
  std::vector<int> world_ranks_;
  double timeout_s_;
  int splits_ = 0;
};

}  // namespace

CommunicatorPtr make_nccl_world(const LaunchEnv& env, double init_timeout_s, double timeout_s) {
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(env.local_rank));
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(env.master_port);
  so.isServer = env.rank == 0;
  so.numWorkers = env.world_size;
  so.waitWorkers = true;
  so.timeout = millis(init_timeout_s);
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    throw std::runtime_error(
        "nccl rendezvous at " + env.master_addr + ":" + std::to_string(env.master_port) +
        " (rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) +
        ") failed within " + std::to_string(static_cast<long>(init_timeout_s)) +
        " s (run.comm_init_timeout_s): " + e.what());
  }
  std::vector<int> ranks(static_cast<std::size_t>(env.world_size));
  for (int i = 0; i < env.world_size; ++i) ranks[static_cast<std::size_t>(i)] = i;
  return std::make_shared<NcclCommunicator>(
      c10::make_intrusive<c10d::PrefixStore>("wanhost", store), env.rank, env.world_size, ranks,
      timeout_s);
}

}  // namespace wanhost::core
