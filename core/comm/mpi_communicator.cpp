#include "mpi_communicator.hpp"

#include "../util/device_timing.hpp"
#include "../util/exit_codes.hpp"

#if WANHOST_WITH_MPI
#include <mpi.h>

#include <chrono>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <thread>

#include <ATen/ATen.h>

#include "wanhost/log.hpp"

namespace wanhost::core {
namespace {

void check(int rc, const std::string& what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw std::runtime_error("mpi: " + what + " failed: " + std::string(text, len));
}

// bf16/fp16 have no MPI datatype: they travel as fp32 (copied back on completion).
bool needs_widening(at::ScalarType t) {
  return t == at::kBFloat16 || t == at::kHalf;
}

MPI_Datatype datatype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return MPI_FLOAT;
    case at::kDouble:
      return MPI_DOUBLE;
    case at::kInt:
      return MPI_INT32_T;
    case at::kLong:
      return MPI_INT64_T;
    case at::kByte:
      return MPI_UINT8_T;
    case at::kChar:
      return MPI_INT8_T;
    case at::kBool:
      return MPI_C_BOOL;
    default:
      throw std::invalid_argument(std::string("mpi: no MPI datatype for ") + c10::toString(t));
  }
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Avg:
      return MPI_SUM;
    case ReduceOp::Max:
      return MPI_MAX;
    case ReduceOp::Min:
      return MPI_MIN;
  }
  return MPI_SUM;
}

// A buffer MPI can read or write: the tensor itself when possible, else an fp32 copy.
struct Wire {
  at::Tensor user;  // what the caller passed (written back on completion when `copy_back`)
  at::Tensor data;  // what MPI sees
  bool copy_back = false;
};

Wire wire(const at::Tensor& t, const char* op, bool output) {
  if (!t.device().is_cpu())
    throw std::invalid_argument(std::string("mpi ") + op +
                                ": tensors must be on the CPU (GPU ranks use the NCCL backend)");
  if (!t.is_contiguous())
    throw std::invalid_argument(std::string("mpi ") + op + ": tensor must be contiguous");
  Wire w{t, t, false};
  if (needs_widening(t.scalar_type())) {
    w.data = t.to(at::kFloat);
    w.copy_back = output;
  }
  return w;
}

class MpiWork final : public Work {
 public:
  MpiWork(MPI_Request req, std::string what, double timeout_s, std::vector<Wire> outputs,
          std::vector<at::Tensor> keep_alive, double scale)
      : req_(req),
        what_(std::move(what)),
        timeout_s_(timeout_s),
        outputs_(std::move(outputs)),
        keep_(std::move(keep_alive)),
        scale_(scale) {}
  ~MpiWork() override {
    // An abandoned request must still complete before its buffers go (MPI owns them until then).
    if (!done_ && req_ != MPI_REQUEST_NULL) {
      try {
        wait();
      } catch (const std::exception& e) {
        logger()->error("{}", e.what());
      }
    }
  }

  void wait() override {
    if (done_) return;
    const auto start = std::chrono::steady_clock::now();
    int flag = 0;
    for (long spins = 0;; ++spins) {
      check(MPI_Test(&req_, &flag, MPI_STATUS_IGNORE), what_);
      if (flag) break;
      const double waited = seconds_since(start);
      if (timeout_s_ > 0 && waited > timeout_s_) {
        done_ = true;  // the request is abandoned: the process is about to abort
        throw std::runtime_error(what_ + " did not complete within " +
                                 std::to_string(static_cast<long>(timeout_s_)) +
                                 " s: another rank is stuck or has died (run.comm_timeout_s)");
      }
      if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    done_ = true;
    for (auto& w : outputs_) {
      if (scale_ != 1.0) w.data.mul_(scale_);
      if (w.copy_back) w.user.copy_(w.data);
    }
    outputs_.clear();
    keep_.clear();
  }

 private:
  MPI_Request req_;
  std::string what_;
  double timeout_s_;
  std::vector<Wire> outputs_;
  std::vector<at::Tensor> keep_;
  double scale_;
  bool done_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, std::vector<int> world_ranks, double timeout_s)
      : comm_(comm), world_ranks_(std::move(world_ranks)), timeout_s_(timeout_s) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm_ != MPI_COMM_WORLD) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  WorkPtr all_reduce(at::Tensor& tensor, ReduceOp op, bool async) override {
    Wire w = wire(tensor, "all_reduce", true);
    MPI_Request req;
    check(MPI_Iallreduce(MPI_IN_PLACE, w.data.data_ptr(), count(w.data), datatype_of(w), mpi_op(op),
                         comm_, &req),
          "all_reduce");
    return finish(req, describe("all_reduce", tensor), {w}, {},
                  op == ReduceOp::Avg ? 1.0 / size_ : 1.0, async);
  }

  WorkPtr all_gather(at::Tensor& output, const at::Tensor& input, bool async) override {
    expect(output.numel() == input.numel() * size_, "all_gather",
           "output must have size() x the input's elements");
    Wire out = wire(output, "all_gather", true), in = wire(input, "all_gather", false);
    MPI_Request req;
    check(MPI_Iallgather(in.data.data_ptr(), count(in.data), datatype_of(in), out.data.data_ptr(),
                         count(in.data), datatype_of(out), comm_, &req),
          "all_gather");
    return finish(req, describe("all_gather", input), {out}, {in.data}, 1.0, async);
  }

  WorkPtr reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp op,
                         bool async) override {
    expect(input.numel() == output.numel() * size_, "reduce_scatter",
           "input must have size() x the output's elements");
    Wire out = wire(output, "reduce_scatter", true), in = wire(input, "reduce_scatter", false);
    MPI_Request req;
    check(MPI_Ireduce_scatter_block(in.data.data_ptr(), out.data.data_ptr(), count(out.data),
                                    datatype_of(in), mpi_op(op), comm_, &req),
          "reduce_scatter");
    return finish(req, describe("reduce_scatter", input), {out}, {in.data},
                  op == ReduceOp::Avg ? 1.0 / size_ : 1.0, async);
  }

  WorkPtr all_to_all(at::Tensor& output, const at::Tensor& input, bool async) override {
    expect(output.numel() == input.numel() && input.numel() % size_ == 0, "all_to_all",
           "input and output must have the same number of elements, divisible by size()");
    Wire out = wire(output, "all_to_all", true), in = wire(input, "all_to_all", false);
    MPI_Request req;
    const int n = count(in.data) / size_;
    check(MPI_Ialltoall(in.data.data_ptr(), n, datatype_of(in), out.data.data_ptr(), n,
                        datatype_of(out), comm_, &req),
          "all_to_all");
    return finish(req, describe("all_to_all", input), {out}, {in.data}, 1.0, async);
  }

  WorkPtr broadcast(at::Tensor& tensor, int root, bool async) override {
    expect(root >= 0 && root < size_, "broadcast",
           "root " + std::to_string(root) + " out of range");
    Wire w = wire(tensor, "broadcast", true);
    MPI_Request req;
    check(MPI_Ibcast(w.data.data_ptr(), count(w.data), datatype_of(w), root, comm_, &req),
          "broadcast");
    return finish(req, describe("broadcast", tensor), {w}, {}, 1.0, async);
  }

  WorkPtr send(const at::Tensor& tensor, int dst, int tag) override {
    Wire w = wire(tensor, "send", false);
    MPI_Request req;
    check(MPI_Isend(w.data.data_ptr(), count(w.data), datatype_of(w), dst, tag, comm_, &req),
          "send");
    return finish(req, describe("send to " + std::to_string(dst), tensor), {}, {w.data}, 1.0, true);
  }

  WorkPtr recv(at::Tensor& tensor, int src, int tag) override {
    Wire w = wire(tensor, "recv", true);
    MPI_Request req;
    check(MPI_Irecv(w.data.data_ptr(), count(w.data), datatype_of(w), src, tag, comm_, &req),
          "recv");
    return finish(req, describe("recv from " + std::to_string(src), tensor), {w}, {}, 1.0, true);
  }

  void barrier() override {
    MPI_Request req;
    check(MPI_Ibarrier(comm_, &req), "barrier");
    finish(req, "barrier on " + group_name(), {}, {}, 1.0, false);
  }

  std::shared_ptr<Communicator> split(const std::vector<int>& ranks) override {
    for (std::size_t i = 0; i < ranks.size(); ++i)
      if (ranks[i] < 0 || ranks[i] >= size_ || (i > 0 && ranks[i] <= ranks[i - 1]))
        throw std::invalid_argument("split: ranks must be ascending, distinct and in [0, " +
                                    std::to_string(size_) + ")");
    bool member = false;
    std::vector<int> world;
    for (int r : ranks) {
      member = member || r == rank_;
      world.push_back(world_ranks_[static_cast<std::size_t>(r)]);
    }
    if (!member)
      throw std::invalid_argument("split: this rank (" + std::to_string(rank_) +
                                  ") is not in the group it asked for");
    MPI_Comm sub;
    check(MPI_Comm_split(comm_, ranks.front(), rank_, &sub), "split");
    int n = 0;
    MPI_Comm_size(sub, &n);
    if (n != static_cast<int>(ranks.size()))
      throw std::runtime_error("split: ranks disagree about the groups (this rank asked for " +
                               std::to_string(ranks.size()) + " ranks, the group has " +
                               std::to_string(n) + ")");
    return std::make_shared<MpiCommunicator>(sub, world, timeout_s_);
  }

 private:
  static int count(const at::Tensor& t) {
    if (t.numel() > std::numeric_limits<int>::max())
      throw std::invalid_argument("mpi: a tensor of " + std::to_string(t.numel()) +
                                  " elements exceeds MPI's int count");
    return static_cast<int>(t.numel());
  }
  static MPI_Datatype datatype_of(const Wire& w) { return datatype(w.data.scalar_type()); }
  static void expect(bool ok, const char* op, const std::string& why) {
    if (!ok) throw std::invalid_argument(std::string("mpi ") + op + ": " + why);
  }
  std::string group_name() const {
    std::string s = "group of " + std::to_string(size_) + " rank(s) [world ranks ";
    for (std::size_t i = 0; i < world_ranks_.size() && i < 8; ++i)
      s += (i ? "," : "") + std::to_string(world_ranks_[i]);
    return s + (world_ranks_.size() > 8 ? ",...]" : "]");
  }
  std::string describe(const std::string& op, const at::Tensor& t) const {
    return "mpi " + op + " of " + std::to_string(t.numel()) + " " + c10::toString(t.scalar_type()) +
           " elements on " + group_name();
  }
  WorkPtr finish(MPI_Request req, std::string what, std::vector<Wire> outputs,
                 std::vector<at::Tensor> keep, double scale, bool async) {
    auto w = std::make_shared<MpiWork>(req, std::move(what), timeout_s_, std::move(outputs),
                                       std::move(keep), scale);
    if (!async) w->wait();
    return w;
  }

  MPI_Comm comm_;
  std::vector<int> world_ranks_;
  double timeout_s_;
  int rank_ = 0, size_ = 1;
};

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

}  // namespace

bool mpi_initialized() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

bool mpi_init_if_launched() {
  if (mpi_initialized()) return true;
  if (!launched_by_mpi()) return false;
  int provided = 0;
  check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
  if (provided < MPI_THREAD_SERIALIZED)
    logger()->warn("mpi: the library provides thread level {} (< SERIALIZED)", provided);
  // Errors come back as return codes (turned into exceptions naming the operation).
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  return true;
}

CommunicatorPtr make_mpi_world(double timeout_s) {
  if (!mpi_initialized()) throw std::logic_error("make_mpi_world before mpi_init_if_launched");
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  std::vector<int> ranks(static_cast<std::size_t>(size));
  for (int i = 0; i < size; ++i) ranks[static_cast<std::size_t>(i)] = i;
  return std::make_shared<MpiCommunicator>(MPI_COMM_WORLD, std::move(ranks), timeout_s);
}

void mpi_shutdown(int exit_code) {
  if (!mpi_initialized()) return;
  // Success and preemption (SIGTERM, checkpoint saved) are collective exits: every rank gets
  // there.
  if (exit_code == kExitOk || exit_code == kExitPreempted)
    MPI_Finalize();
  else
    MPI_Abort(MPI_COMM_WORLD, exit_code);
}

}  // namespace wanhost::core

#else  // built without MPI

#include <cstdlib>

#include "wanhost/errors.hpp"

namespace wanhost::core {

bool mpi_initialized() {
  return false;
}
bool mpi_init_if_launched() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"})
    if (std::getenv(v))
      throw UsageError("this wanhost was built without MPI, but it was started by mpirun (" +
                       std::string(v) +
                       " is set): use torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK, "
                       "MASTER_ADDR, MASTER_PORT) on GPUs, or a build with OpenMPI");
  return false;
}
CommunicatorPtr make_mpi_world(double) {
  throw UsageError("this wanhost was built without MPI: CPU ranks cannot communicate");
}
void mpi_shutdown(int) {}

}  // namespace wanhost::core

#endif
