// FP8 matrix products for the large linear layers of DiT blocks (run.fp8, docs/performance.md
// "FP8 linear layers"). Each operand is scaled by an absolute maximum: its own at the time it is
// made ("tensorwise", current scaling, as torchao's Float8Linear with tensorwise scaling and
// Transformer Engine's Float8CurrentScaling recipe do), or the largest of its last steps'
// ("delayed", below):
//   forward          y  = x W^T + b       x: E4M3, W: E4M3                     (fast accumulation)
//   input gradient   dx = dy W            dy: E5M2, W: E4M3
//   weight gradient  dW = dy^T x          dy: E5M2, x: E4M3, written in W's dtype (fp32 master
//                                         weights get fp32 gradients straight from the product)
// Accumulation is fp32 (cuBLASLt through at::_scaled_mm; Hopper's FP8 tensor cores); the
// gradients' products are precise unless set_fp8_fast_accumulation says otherwise. Each weight
// is quantised once per optimizer step (Fp8WeightCache), each input once however many layers
// read it (a block's q, k and v share theirs). Attention, norms, embedders, the output projection
// and the master weights stay as they are. On the CPU the products are emulated in fp32 on the
// dequantised operands (the quantisation is the same): what the CPU tests check the recipes with.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace wanhost {

// tensorwise: current scaling (above). delayed (kit 1.9): each operand of each layer (weight,
// input, output gradient) is scaled by the largest max|x| it had over the last
// fp8_amax_history() steps (Transformer Engine's DelayedScaling with the "max" algorithm), values
// beyond it saturating; the cast kernel records this step's max|x| as it casts, so no separate
// max|x| pass reads the operand. An operand's first use (and its first after
// fp8_forget_history()) scales by its own max|x|. The histories live on the device; a checkpoint
// keeps them through fp8_history_state / load_fp8_history_state (the host's trainer does).
enum class Fp8Recipe { off, tensorwise, delayed };

// Process-wide, like KernelOptions: set before the first step (the host sets run.fp8).
void set_fp8_recipe(Fp8Recipe recipe);
Fp8Recipe fp8_recipe();
// "off" | "tensorwise" | "delayed"; anything else throws std::invalid_argument saying what is
// expected.
Fp8Recipe parse_fp8_recipe(const std::string& name);
const char* fp8_recipe_name(Fp8Recipe recipe);

// Which FP8 products accumulate with Hopper's fast accumulation (at::_scaled_mm's use_fast_accum,
// cuBLASLt's FAST_ACCUM: fewer promotions of the tensor cores' partial sums to fp32; measured
// ~11 % faster than the precise mode at the 1.3B shapes on an H100, 2026-12-05): the forward
// product only (Transformer Engine's and torchao's default), also the input-gradient product,
// or every product (the weight gradient too, which sums over all tokens). Process-wide, set
// before the first step. Since kit 1.10.
enum class Fp8FastAccumulation { forward, input_gradients, all };
void set_fp8_fast_accumulation(Fp8FastAccumulation which);
Fp8FastAccumulation fp8_fast_accumulation();
// "forward" | "input_gradients" | "all"; anything else throws std::invalid_argument.
Fp8FastAccumulation parse_fp8_fast_accumulation(const std::string& name);
const char* fp8_fast_accumulation_name(Fp8FastAccumulation which);

// Delayed scaling (kit 1.9). The steps of max|x| an operand's scale is taken from (default 16;
// 1..kMaxFp8AmaxHistory, else std::invalid_argument); process-wide, set before the first step.
inline constexpr int kMaxFp8AmaxHistory = 1024;
void set_fp8_amax_history(int steps);
int fp8_amax_history();
// A training step begins on `device` (before its forward): advances the step count that picks
// each history's slot, on the device's current stream, so that a step captured as a CUDA graph
// advances it on every replay. Does nothing unless the recipe is delayed; without any call the
// delayed recipe scales as tensorwise (and says so once). The host's trainer calls it.
void fp8_step_begins(const c10::Device& device);
// Every operand's next use scales by its own max|x| again and starts its history afresh (the
// trainer calls it at the start of each stage: other shapes, other magnitudes).
void fp8_forget_history();
// How many quantisations took their scale from a history since the process started (tests, logs).
std::int64_t fp8_delayed_quantizations();
// Delayed scaling's state for a checkpoint, so that a resumed run scales as the run it continues:
// the step count of `device` ("fp8_step", int64 [1]) and, for every layer whose weight is among
// `weights` (the model's named parameters) and has a history, its operands' histories
// ("<name>/fp8_amax_weight|input|gradient", fp32, CPU). Empty unless the recipe is delayed and a
// step has begun. Each rank has its own (its own inputs and gradients).
std::map<std::string, at::Tensor> fp8_history_state(
    const std::vector<std::pair<std::string, at::Tensor>>& weights, const c10::Device& device);
// Restores such a state: the histories go to the layers whose weights are named, taken at their
// first use (histories of another length are left: those operands start afresh), and the step
// count continues from the saved one. Returns how many layers it holds histories for.
std::size_t load_fp8_history_state(const std::map<std::string, at::Tensor>& state,
                                   const std::vector<std::pair<std::string, at::Tensor>>& weights,
                                   const c10::Device& device);

// Says that weights may have changed (an optimizer step, a load): every Fp8WeightCache makes its
// copy again at its next use. The host calls it before every training step; a weight's version
// counter (in-place updates) is checked too. Since kit 1.7 this is weights_changed()
// (compute_weights.hpp), which also makes the compute-dtype copies stale; AdamW calls it itself.
void fp8_weights_changed();

// One layer's weight in E4M3, row-major [out, in] and its transpose [in, out], with their
// dequantisation scale, made from the master weight once per optimizer step.
class Fp8WeightCache {
 public:
  // The copies of `weight` (made again when it, its version or the step changed).
  struct Copies {
    at::Tensor q, qt, scale;
  };
  const Copies& of(const at::Tensor& weight);

 private:
  Copies copies_;
  const void* data_ = nullptr;
  std::uint32_t version_ = 0;
  std::uint64_t epoch_ = 0;
};

// True when run.fp8 is on and fp8_linear takes x [..., in] and weight [out, in]: in and out
// multiples of 16 (the FP8 products' alignment), x bf16 on CUDA, or fp32/bf16 on the CPU.
bool fp8_linear_applies(const at::Tensor& x, const at::Tensor& weight);

// x W^T + b through the FP8 products above; differentiable in x, weight and bias (bias in x's
// dtype or an fp32 master, since kit 1.3; may be undefined). The output has x's dtype; the
// gradients have the weight's and the bias's dtypes.
at::Tensor fp8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                      Fp8WeightCache& cache);

// down(gelu_tanh(up(x))), a DiT block's feed-forward, with both layers on FP8 products: the
// values and gradients of fp8_linear(at::gelu(fp8_linear(x, w_up, b_up), "tanh"), w_down,
// b_down), where on a GPU gelu(pre) is quantised straight from pre and its gradient
// dh * gelu'(pre) straight from dh and pre by the cast kernels (neither written in the compute
// dtype: ~670 MB less memory traffic a 1.3B block at stage 1). Biases as fp8_linear's (may be
// undefined). The layers' caches as fp8_linear's. Since kit 1.8.
bool fp8_gelu_feed_forward_applies(const at::Tensor& x, const at::Tensor& w_up,
                                   const at::Tensor& w_down);
at::Tensor fp8_gelu_feed_forward(const at::Tensor& x, const at::Tensor& w_up,
                                 const at::Tensor& b_up, Fp8WeightCache& up_cache,
                                 const at::Tensor& w_down, const at::Tensor& b_down,
                                 Fp8WeightCache& down_cache);

// Layers that read one input (a block's q, k and v; cross-attention's k and v) as one FP8
// operator: y_i = fp8_linear(x, weights[i], biases[i], *caches[i]) for each i, the same values,
// with x's gradient sum_i dy_i W_i added up inside the input-gradient products (on a GPU each
// product adds into the last one's bf16 output through cuBLASLt, one rounding of their fp32 sum)
// instead of by separate bf16 products that autograd adds in passes of their own (two to three
// token-sized passes a block). Biases may be undefined; the caches outlive the step. Since
// kit 1.10.
bool fp8_shared_input_applies(const at::Tensor& x, const std::vector<at::Tensor>& weights);
std::vector<at::Tensor> fp8_shared_input_linears(const at::Tensor& x,
                                                 const std::vector<at::Tensor>& weights,
                                                 const std::vector<at::Tensor>& biases,
                                                 const std::vector<Fp8WeightCache*>& caches);

// The E4M3 (forward operands) or E5M2 (gradients) quantisation: {q, scale} with x = q * scale up
// to the format's rounding, scale = max|x| / (the format's largest value) as a 0-dim fp32 tensor
// on x's device. Exposed for tests.
struct Fp8Quantized {
  at::Tensor q, scale;
};
Fp8Quantized fp8_quantize(const at::Tensor& x, bool gradient);

// How many layer inputs fp8_linear has quantised since the process started (an input that layers
// share, or that recurs at the same version, is quantised once). For tests. Since kit 1.7.
std::int64_t fp8_input_quantizations();
// How many times fp8_gelu_feed_forward has run (forward) since the process started: what the
// host's log reports of run.kernels.fp8_gelu = fused. Since kit 1.8.
std::int64_t fp8_fused_feed_forwards();
// How many input gradients fp8_shared_input_linears has summed inside its products (each
// product after a layer's first: two for q, k and v), and how many of those cuBLASLt added
// (the rest: the CPU's emulation, or a GPU without an algorithm for the case). Since kit 1.10.
std::int64_t fp8_summed_input_gradients();
std::int64_t fp8_summed_input_gradients_in_products();

}  // namespace wanhost
