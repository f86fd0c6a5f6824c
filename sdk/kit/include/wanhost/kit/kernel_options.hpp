// Process-wide choices among equivalent kernels of the kit: what the run manifest's run.kernels
// section (docs/configuration.md) and `wanhost bench` flags set, for A/B timing and for falling
// back from a kernel that misbehaves. Set them before the first step; they are read on every
// call without locking.
#pragma once

#include <string>

namespace wanhost {

struct KernelOptions {
  // Packed (variable-length) attention: automatic (a pack of up to 8 runs of equal segments as
  // that many dense batches, else variable-length flash attention on CUDA), flash (always the
  // variable-length kernel), loop (per-segment SDPA, a reference).
  enum class PackedAttention { automatic, flash, loop };
  PackedAttention packed_attention = PackedAttention::automatic;
  // AdamW: LibTorch's fused multi-tensor kernel (falls back by itself when it refuses) or the
  // per-tensor update.
  bool fused_adamw = true;
  // cuBLASLt epilogues of the GELU feed-forward (fused::gelu_feed_forward): the up-projection's
  // GELU_AUX_BIAS, the GELU gradient in the product that makes the hidden gradient, the bias
  // gradients in weight-gradient products.
  bool lt_gelu = false, lt_dgelu = true, lt_bgrad = false;
  // AdamW (with fused_adamw): wanhost's multi-tensor kernel (kernels/adamw_kernels.hpp) for fp32
  // tensors on a GPU, LibTorch's fused kernel for anything else. Since kit 1.6 (appended: the
  // fields above keep their places).
  bool wanhost_adamw = false;
  // Weights in the compute dtype: cast where each is used (per use), or all of them in one
  // multi-tensor pass at the start of each step's forward (per step, compute_weights.hpp), which
  // forward_backward_each makes (ddp; a plugin that runs the model's forward itself can call
  // refresh_compute_weights the same way). Since kit 1.7 (appended).
  bool weight_casts_per_step = false;
  // FP8 feed-forward (run.fp8): the two layers and GELU as one operator whose cast kernels
  // apply GELU and its gradient as they read (fp8_gelu_feed_forward, fp8.hpp: the same values,
  // less memory traffic), or the two FP8 layers with ATen's GELU between them (separate).
  // Since kit 1.8 (appended).
  bool fp8_fused_gelu = false;
  // FP8 layers that read one input (run.fp8; a block's q, k and v, cross-attention's k and v):
  // each layer on its own with autograd adding their input gradients (separate), or as one
  // operator whose input-gradient products add into one another's output (summed:
  // fp8_shared_input_linears, fp8.hpp; on a GPU through cuBLASLt). Since kit 1.10 (appended).
  bool fp8_summed_input_gradients = false;
};

void set_kernel_options(const KernelOptions& options);
const KernelOptions& kernel_options();

// Parse the manifest's strings; throw std::invalid_argument saying what is expected.
//   packed_attention: auto | flash | loop;   adamw: fused | loop | wanhost;
//   lt_epilogues: off | all | a comma list of gelu, dgelu, bgrad (default "dgelu");
//   weight_casts: per_use | per_step (kit 1.7; the three-string form keeps per_use);
//   fp8_gelu: separate | fused (kit 1.8; the shorter forms keep separate);
//   fp8_input_gradients: separate | summed (kit 1.10; the shorter forms keep separate).
KernelOptions parse_kernel_options(const std::string& packed_attention, const std::string& adamw,
                                   const std::string& lt_epilogues);
KernelOptions parse_kernel_options(const std::string& packed_attention, const std::string& adamw,
                                   const std::string& lt_epilogues,
                                   const std::string& weight_casts);
KernelOptions parse_kernel_options(const std::string& packed_attention, const std::string& adamw,
                                   const std::string& lt_epilogues, const std::string& weight_casts,
                                   const std::string& fp8_gelu);
KernelOptions parse_kernel_options(const std::string& packed_attention, const std::string& adamw,
                                   const std::string& lt_epilogues, const std::string& weight_casts,
                                   const std::string& fp8_gelu,
                                   const std::string& fp8_input_gradients);

}  // namespace wanhost
