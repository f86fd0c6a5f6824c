// `wanhost bench --kernels`: every fused operator of the SDK (wanhost::fused), forward + backward,
// against its ATen reference (wanhost::fused::reference: the arithmetic the GPU parity tests
// compare the kernels with), at the width and token count of a bench case. What one kernel buys
// shows here on its own; `wanhost bench` (whole blocks) shows what it buys in a step.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "wanhost/config.hpp"

namespace wanhost::core {

struct KernelBenchShape {
  std::int64_t samples = 1, rows_per_sample = 1;  // token rows: samples x rows_per_sample
  std::int64_t dim = 0, heads = 0, ffn = 0;       // model width, attention heads, FFN width
};

// One entry per operator: "op", "fused_us" and "reference_us" (median forward + backward time of
// one call, from 10 calls queued back to back),
// "speedup", and for the memory-bound ones "bytes" (3 x inputs + 2 x outputs: forward reads
// the inputs and writes the outputs, backward reads the output gradients and the inputs and
// writes the input gradients) with "fused_gbps"; "fused_kernels" says whether the GPU kernels ran
// (on the CPU both columns are ATen).
Json bench_kernels(const c10::Device& device, at::ScalarType dtype, const KernelBenchShape& shape,
                   int warmup, int iters);

// The report as a table, one line per operator.
std::string kernel_bench_table(const Json& report);

}  // namespace wanhost::core
