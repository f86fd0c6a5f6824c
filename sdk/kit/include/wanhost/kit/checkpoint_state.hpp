// A parallelism checkpoint's state as whole tensors, whichever built-in parallelism plugin wrote
// it, so that a plugin resumes from another layout or another plugin's checkpoint (a run that
// changes path or degrees) by reading whole parameters and AdamW moments and keeping its part.
// The formats (docs/parallelism.md):
//  - ddp: model/diffusion_pytorch_model.safetensors (the weights) and optimizer.safetensors
//    ("<name>.exp_avg", "<name>.exp_avg_sq", "__step__");
//  - automodel_fsdp: fsdp.json (dp_size; every parameter's name, shape, numel) and
//    fsdp_rank_NNNNN.safetensors, rank r's flat chunk r of each ("param.<name>",
//    "optim.<name>.exp_avg", ...; chunks of ceil(numel / dp_size), the last zero-padded);
//  - megatron_tpppcp: megatron.json (tp, pp, cp, dp; every parameter's name, whole shape,
//    tensor-parallel split dimension or -1, stage) and megatron_tpNNN_ppNNN.safetensors (the
//    tensors of one (tp, pp) coordinate at their tensor-parallel shapes, same keys as fsdp).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace wanhost {

class WholeState {
 public:
  virtual ~WholeState() = default;
  using Shapes = std::map<std::string, std::vector<std::int64_t>>;
  // Recognises the folder's format and checks its parameters against the model's (`model`:
  // name -> whole shape); throws std::runtime_error naming the folder when it holds none of the
  // formats, or listing every missing, unexpected or mis-shaped parameter.
  static std::unique_ptr<WholeState> open(const std::string& dir, const Shapes& model);

  // Who wrote it, for messages: "ddp", "automodel_fsdp dp=2", "megatron_tpppcp tp=2 pp=1 dp=2".
  virtual std::string writer() const = 0;
  // Every parameter's whole shape.
  virtual const Shapes& shapes() const = 0;
  // A whole tensor on the CPU in the dtype saved: what = "param", "exp_avg" or "exp_avg_sq".
  virtual at::Tensor tensor(const std::string& name, const std::string& what) const = 0;
  // AdamW's step count (an int64 scalar).
  virtual at::Tensor step() const = 0;
};

}  // namespace wanhost
