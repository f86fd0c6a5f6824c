// Collective communication over at::Tensor. Backends live in the host (NCCL for GPUs, OpenMPI for
// CPU ranks, a trivial one for a single process); plugins only see this interface. A parallelism
// plugin splits the world into sub-groups (data, tensor, pipeline, context parallel) with split().
//
// Every operation is collective over the communicator's ranks (send/recv: point to point) and
// returns a Work handle; pass async=false (the default) to get it already completed. Tensors must
// be contiguous; in-place operations write into the given tensor.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace wanhost {

enum class ReduceOp { Sum, Avg, Max, Min };

class Work {
 public:
  virtual ~Work() = default;
  // Blocks until the operation finished (on GPU: until it is ordered before later work on the
  // current stream). Throws a std::runtime_error naming the operation on failure or timeout.
  virtual void wait() = 0;
};
using WorkPtr = std::shared_ptr<Work>;

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "local", "mpi", "nccl"

  // In place: every rank ends with the reduction of all ranks' `tensor`.
  virtual WorkPtr all_reduce(at::Tensor& tensor, ReduceOp op = ReduceOp::Sum,
                             bool async = false) = 0;
  // `output` has size() times the elements of `input`; rank r's input lands in slice r (dim 0).
  virtual WorkPtr all_gather(at::Tensor& output, const at::Tensor& input, bool async = false) = 0;
  // `input` has size() times the elements of `output`; rank r receives the reduction of slice r.
  virtual WorkPtr reduce_scatter(at::Tensor& output, const at::Tensor& input,
                                 ReduceOp op = ReduceOp::Sum, bool async = false) = 0;
  // Equal splits along dim 0: slice j of `input` goes to rank j, slice i of `output` comes from
  // rank i.
  virtual WorkPtr all_to_all(at::Tensor& output, const at::Tensor& input, bool async = false) = 0;
  virtual WorkPtr broadcast(at::Tensor& tensor, int root, bool async = false) = 0;
  virtual WorkPtr send(const at::Tensor& tensor, int dst, int tag = 0) = 0;
  virtual WorkPtr recv(at::Tensor& tensor, int src, int tag = 0) = 0;
  virtual void barrier() = 0;

  // A sub-group of this communicator's ranks (ranks in this communicator's numbering, ascending).
  // Collective: every rank of this communicator calls it with the list of the group it belongs to.
  virtual std::shared_ptr<Communicator> split(const std::vector<int>& ranks) = 0;
};
using CommunicatorPtr = std::shared_ptr<Communicator>;

// A communicator of one rank: every collective is the identity. Used for single-process runs and
// for parallel dimensions of degree 1.
CommunicatorPtr make_local_communicator();

}  // namespace wanhost
