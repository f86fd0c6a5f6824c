// The FP8 arithmetic of the kit's FP8 layers (fp8.cpp, docs/performance.md "FP8 linear
// layers"): an operand quantised in one pass (E4M3 or E5M2, row-major and transposed copies,
// column sums, an elementwise prologue, delayed scaling's histories), and the products:
// at::_scaled_mm's (emulated in fp32 on the CPU) and the input gradient that adds into the
// gradient the layers before it gave the same input, with the fast accumulation that
// run.fp8_fast_accumulation chooses. Internal to libwanhost_kit.
#pragma once

#include <cstdint>
#include <optional>

#include <ATen/core/Tensor.h>

#include "fp8_history.hpp"

namespace wanhost::fp8_arithmetic {

constexpr std::int64_t kAlign = 16;  // at::_scaled_mm: K and N multiples of 16

// What quantising a matrix x [M, C] makes besides its scale.
struct Outputs {
  bool rows = false;         // q, row-major [M, C]
  bool transposed = false;   // qt [C, round_up(M, 16)], the weight-gradient product's operand
  bool column_sums = false;  // x's sums over M in fp32 (the bias gradient, when x is dy)
};
struct Quantized {
  at::Tensor q, qt, column_sums, scale;  // undefined when not asked for
};

// A function of x quantised in its place (the FP8 GELU feed-forward): on a GPU the kernels apply
// it as they read x (kernels::Fp8Prologue), elsewhere ATen makes it first; the same values.
enum class Elementwise {
  none,
  gelu,       // gelu_tanh(x), as at::gelu(x, "tanh")
  gelu_grad,  // x * gelu_tanh'(aux), as at::gelu_backward(x, aux, "tanh")
};
struct Prologue {
  Elementwise f = Elementwise::none;
  at::Tensor aux;  // gelu_grad: gelu's input, x's shape and dtype
};

// x [M, C] (or the prologue's function of it) in E4M3 (forward operands) or E5M2 (gradients):
// each element rounded once from the fp32 product x * (1 / scale), the largest |x| landing on the
// format's largest value.
// With a site (delayed scaling), max|x| is recorded into its history, and when the site uses it
// the scale comes from there: values beyond it saturate at the format's largest value.
Quantized quantize(const at::Tensor& x, bool gradient, Outputs want, const Prologue& p = {},
                   const std::optional<fp8_history::SiteUse>& site = std::nullopt);

// a [M, K] row-major, b [K, N] column-major (a transposed row-major [N, K]), FP8; a_scale and
// b_scale 0-dim fp32 -> [M, N] of out_dtype. CUDA: at::_scaled_mm; CPU: the same sum in fp32 on
// the dequantised operands.
at::Tensor scaled_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scale,
                     const at::Tensor& b_scale, const at::Tensor& bias, at::ScalarType out_dtype,
                     bool fast_accumulation);

// Whether the input-gradient (dx) and weight-gradient (dW) products take fast accumulation
// (run.fp8_fast_accumulation; the forward product always does).
bool fast_input_gradients();
bool fast_weight_gradients();

// A layer's input gradient dy W [M, in] (W column-major is W^T row-major: the cached qt), or,
// with `so_far` (the gradient the layers before it gave the same input), so_far + dy W: on a GPU
// the product adds into so_far's memory (one rounding of the fp32 sum), elsewhere the product in
// fp32 is added to so_far and rounded once the same way.
at::Tensor input_gradient(const Quantized& g, const at::Tensor& wqt, const at::Tensor& w_scale,
                          at::ScalarType dtype, const at::Tensor& so_far = {});

}  // namespace wanhost::fp8_arithmetic
