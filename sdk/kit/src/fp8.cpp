// FP8 linear layers (fp8.hpp): the layers' autograd functions over the FP8 arithmetic of
// fp8_arithmetic.hpp. The products contract over K for the forward and input-gradient products
// and over the tokens for the weight gradient, so the operands of the latter are transposed
// copies, with the token count padded with zero rows to the 16 the FP8 products need (zeros add
// nothing to the sum). Inputs are quantised once however many layers read them (the input
// cache), weights once per optimizer step (Fp8WeightCache).
#include "wanhost/kit/fp8.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include "fp8_arithmetic.hpp"
#include "fp8_history.hpp"
#include "tensor_stamp.hpp"
#include "wanhost/kit/compute_weights.hpp"

namespace wanhost {
namespace {

using fp8_arithmetic::Elementwise;
using fp8_arithmetic::fast_weight_gradients;
using fp8_arithmetic::input_gradient;
using fp8_arithmetic::kAlign;
using fp8_arithmetic::quantize;
using fp8_arithmetic::Quantized;
using fp8_arithmetic::scaled_mm;
using Prologue = fp8_arithmetic::Prologue;

std::atomic<Fp8Recipe> g_recipe{Fp8Recipe::off};
std::atomic<Fp8FastAccumulation> g_fast_accumulation{Fp8FastAccumulation::forward};

// The manifest's names of the FP8 choices (run.fp8, run.fp8_fast_accumulation), in order.
template <typename E>
using Names = std::array<std::pair<E, const char*>, 3>;
constexpr Names<Fp8Recipe> kRecipeNames{{{Fp8Recipe::off, "off"},
                                         {Fp8Recipe::tensorwise, "tensorwise"},
                                         {Fp8Recipe::delayed, "delayed"}}};
constexpr Names<Fp8FastAccumulation> kFastAccumulationNames{
    {{Fp8FastAccumulation::forward, "forward"},
     {Fp8FastAccumulation::input_gradients, "input_gradients"},
     {Fp8FastAccumulation::all, "all"}}};

// The value of `name`; anything else throws std::invalid_argument naming what is expected.
template <typename E>
E parsed(const Names<E>& names, const std::string& name) {
  std::string expected;
  for (const auto& [value, n] : names) {
    if (name == n) return value;
    expected += (expected.empty() ? "" : ", ") + std::string(n);
  }
  throw std::invalid_argument("expected one of " + expected + ", got \"" + name + "\"");
}
template <typename E>
const char* name_of(const Names<E>& names, E value) {
  for (const auto& [v, n] : names)
    if (v == value) return n;
  return names[0].second;
}
// Inputs already quantised, kept for the next layers that read the same tensor at the same
// version (tensor_stamp.hpp: a freed input is never matched by a new tensor at its address).
//  - `last`: the last input (a block's q, k and v read one normed input; cross-attention's k and
//    v one text context). Its copies stay alive until the next input comes (at most one layer's
//    E4M3 input, the row-major half of which backward does not use).
//  - `recurring`: the last input quantised a second time after other inputs came between: every
//    block's cross-attention reads the same text context, which the later blocks then take from
//    here (one quantisation and one saved transposed copy a step instead of one a block).
//    `seen` stamps the inputs of the last kSeen quantisations (no tensors kept).
struct KeptInput {
  TensorStamp source;
  Quantized quantized;  // q (this forward's product) and qt (saved for the weight gradient)
};
constexpr std::size_t kSeen = 8;
struct InputCache {
  KeptInput last, recurring;
  std::array<TensorStamp, kSeen> seen;
  std::size_t next_seen = 0;
};
thread_local InputCache t_inputs;
std::atomic<std::int64_t> g_input_quantizations{0};
std::atomic<std::int64_t> g_fused_feed_forwards{0};

// `cache`, `weight`: the layer that quantises x if nobody has (delayed scaling's site: the first
// of the layers sharing x).
Quantized quantized_input(const at::Tensor& x, const at::Tensor& rows, const Fp8WeightCache* cache,
                          const at::Tensor& weight) {
  InputCache& c = t_inputs;
  if (c.last.source.matches(x)) return c.last.quantized;
  if (c.recurring.source.matches(x)) {
    c.last = c.recurring;
    return c.recurring.quantized;
  }
  Quantized q =
      quantize(rows, false, {.rows = true, .transposed = true}, {},
               fp8_history::site_use(cache, fp8_history::Role::input, rows.device(), weight));
  g_input_quantizations.fetch_add(1);
  const TensorStamp stamp(x);
  const bool again =
      std::any_of(c.seen.begin(), c.seen.end(), [&](const TensorStamp& s) { return s.matches(x); });
  if (again) c.recurring = {stamp, q};
  c.seen[c.next_seen] = stamp;
  c.next_seen = (c.next_seen + 1) % kSeen;
  c.last = {stamp, std::move(q)};
  return c.last.quantized;
}

// One FP8 layer's forward product y = x W^T + b from its quantised input; the bias read in the
// compute dtype (an fp32 master's copy, compute_weights.hpp). `bias` may be empty (none).
at::Tensor forward_product(const Quantized& xq, const Fp8WeightCache::Copies& w,
                           const at::Tensor& bias, at::ScalarType dtype) {
  return scaled_mm(xq.q, w.q.t(), xq.scale, w.scale,
                   bias.numel() > 0 ? compute_weight(bias, dtype) : at::Tensor(), dtype, true);
}

// What a layer's backward needs besides the saved tensors: the dtypes of its parameters'
// gradients (a master's own: fp32 straight from the product) and whether it has a bias.
void remember_layer(torch::autograd::AutogradContext* ctx, const std::string& layer,
                    const at::Tensor& weight, const at::Tensor& bias, const Fp8WeightCache* cache) {
  // The layer's cache (it outlives the step): delayed scaling's site of the output's gradient.
  ctx->saved_data[layer + "cache"] =
      static_cast<std::int64_t>(reinterpret_cast<std::intptr_t>(cache));
  ctx->saved_data[layer + "has_bias"] = bias.numel() > 0;
  ctx->saved_data[layer + "bias_dtype"] = static_cast<std::int64_t>(bias.scalar_type());
  ctx->saved_data[layer + "weight_dtype"] = static_cast<std::int64_t>(weight.scalar_type());
}
bool has_bias(torch::autograd::AutogradContext* ctx, const std::string& layer) {
  return ctx->saved_data[layer + "has_bias"].toBool();
}
at::ScalarType remembered(torch::autograd::AutogradContext* ctx, const std::string& key) {
  return static_cast<at::ScalarType>(ctx->saved_data[key].toInt());
}

// A layer's gradients from the quantised gradient of its output g [M, out] (rows, transposed
// copy, column sums when it has a bias) and its saved x^T [in, M padded] and W^T [in, out]:
// dx [M, in] in g's source dtype (with `dx_so_far`, the sum with it: input_gradient), dW and db
// in the parameters' dtypes.
struct LayerGradients {
  at::Tensor dx, dw, db;
};
LayerGradients layer_gradients(torch::autograd::AutogradContext* ctx, const std::string& layer,
                               const Quantized& g, const at::Tensor& xqt, const at::Tensor& x_scale,
                               const at::Tensor& wqt, const at::Tensor& w_scale,
                               at::ScalarType dx_dtype, const at::Tensor& dx_so_far = {}) {
  LayerGradients r;
  // dx [M, in] = dy [M, out] W [out, in].
  r.dx = input_gradient(g, wqt, w_scale, dx_dtype, dx_so_far);
  // dW [out, in] = dy^T [out, M] x [M, in]: x column-major is x^T row-major.
  r.dw = scaled_mm(g.qt, xqt.t(), g.scale, x_scale, {}, remembered(ctx, layer + "weight_dtype"),
                   fast_weight_gradients());
  // The bias gradient in the bias's dtype, from the fp32 column sums (an fp32 master's
  // unrounded).
  if (has_bias(ctx, layer)) r.db = g.column_sums.to(remembered(ctx, layer + "bias_dtype"));
  return r;
}

// The quantised gradient of a layer's output: E5M2 rows and transposed copy, and the column sums
// that are the bias gradient when the layer has a bias.
Quantized quantized_output_gradient(torch::autograd::AutogradContext* ctx, const std::string& layer,
                                    const at::Tensor& dy, const Prologue& p = {}) {
  const auto* cache = reinterpret_cast<const Fp8WeightCache*>(
      static_cast<std::intptr_t>(ctx->saved_data[layer + "cache"].toInt()));
  return quantize(dy, true, {.rows = true, .transposed = true, .column_sums = has_bias(ctx, layer)},
                  p, fp8_history::site_use(cache, fp8_history::Role::gradient, dy.device()));
}

std::vector<std::int64_t> with_last(at::IntArrayRef sizes, std::int64_t last) {
  std::vector<std::int64_t> shape = sizes.vec();
  shape.back() = last;
  return shape;
}

struct Fp8LinearFunction : torch::autograd::Function<Fp8LinearFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& weight, const at::Tensor& bias,
                            Fp8WeightCache* cache) {
    const std::int64_t in = weight.size(1), out = weight.size(0);
    const at::Tensor rows = x.reshape({-1, in}).contiguous();
    const Quantized xq = quantized_input(x, rows, cache, weight);
    const Fp8WeightCache::Copies& w = cache->of(weight);
    const at::Tensor y = forward_product(xq, w, bias, x.scalar_type());
    ctx->save_for_backward({xq.qt, xq.scale, w.qt, w.scale});
    remember_layer(ctx, "", weight, bias, cache);
    return y.view(with_last(x.sizes(), out));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& wqt = saved[2];  // W^T [in, out]
    const std::int64_t in = wqt.size(0), out = wqt.size(1);
    const at::Tensor dy = grads[0].reshape({-1, out}).contiguous();
    const Quantized g = quantized_output_gradient(ctx, "", dy);
    LayerGradients d =
        layer_gradients(ctx, "", g, saved[0], saved[1], wqt, saved[3], dy.scalar_type());
    return {d.dx.view(with_last(grads[0].sizes(), in)), d.dw, d.db, at::Tensor()};
  }
};

// Layers reading one input x (fp8_shared_input_linears): x quantised once (quantized_input, as
// the separate layers would share it), each layer's forward product, and in backward each
// layer's gradients as Fp8LinearFunction makes them, but x's gradient summed inside the
// input-gradient products (input_gradient). Inputs: x, the weights, the biases (empty for none),
// then the caches; outputs: one per layer.
struct Fp8SharedInputFunction : torch::autograd::Function<Fp8SharedInputFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& x, at::TensorList weights,
                                                at::TensorList biases,
                                                std::vector<Fp8WeightCache*> caches) {
    const std::int64_t in = weights[0].size(1);
    const Quantized xq =
        quantized_input(x, x.reshape({-1, in}).contiguous(), caches[0], weights[0]);
    std::vector<at::Tensor> saved{xq.qt, xq.scale};
    torch::autograd::variable_list out;
    for (std::size_t i = 0; i < weights.size(); ++i) {
      const Fp8WeightCache::Copies& w = caches[i]->of(weights[i]);
      const at::Tensor y = forward_product(xq, w, biases[i], x.scalar_type());
      saved.push_back(w.qt);
      saved.push_back(w.scale);
      remember_layer(ctx, std::to_string(i) + ".", weights[i], biases[i], caches[i]);
      out.push_back(y.view(with_last(x.sizes(), weights[i].size(0))));
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    ctx->set_materialize_grads(false);  // an unused output's gradient stays undefined: no terms
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::size_t n = grads.size();
    const at::Tensor &xqt = saved[0], &x_scale = saved[1];
    at::Tensor dx;  // [M, in], the sum over the layers whose outputs have gradients
    torch::autograd::variable_list dw(n), db(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (!grads[i].defined()) continue;  // an output nobody used
      const at::Tensor &wqt = saved[2 + 2 * i], &w_scale = saved[3 + 2 * i];
      const std::string layer = std::to_string(i) + ".";
      const at::Tensor dy = grads[i].reshape({-1, wqt.size(1)}).contiguous();
      const Quantized g = quantized_output_gradient(ctx, layer, dy);
      LayerGradients d =
          layer_gradients(ctx, layer, g, xqt, x_scale, wqt, w_scale, dy.scalar_type(), dx);
      dx = d.dx, dw[i] = d.dw, db[i] = d.db;
    }
    torch::autograd::variable_list result{
        dx.defined() ? dx.view(ctx->saved_data["x_sizes"].toIntVector()) : at::Tensor()};
    result.insert(result.end(), dw.begin(), dw.end());
    result.insert(result.end(), db.begin(), db.end());
    result.emplace_back();  // the caches
    return result;
  }
};

// down(gelu_tanh(up(x))) with both layers' products in FP8 (fp8_gelu_feed_forward): the values
// and gradients of fp8_linear(gelu(fp8_linear(x, W1, b1)), W2, b2), with gelu(pre) quantised
// straight from pre and dpre = dh * gelu'(pre) straight from dh and pre (Prologue): neither is
// written in the compute dtype. Saved: what the two layers and GELU save apart (x^T and h^T in
// E4M3, pre).
struct Fp8GeluFeedForwardFunction : torch::autograd::Function<Fp8GeluFeedForwardFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                            const at::Tensor& b2, Fp8WeightCache* cache1, Fp8WeightCache* cache2) {
    const std::int64_t in = w1.size(1), out = w2.size(0);
    const auto dtype = x.scalar_type();
    const Quantized xq = quantized_input(x, x.reshape({-1, in}).contiguous(), cache1, w1);
    const Fp8WeightCache::Copies& up = cache1->of(w1);
    const at::Tensor pre = forward_product(xq, up, b1, dtype);  // [M, hidden]
    const Quantized hq =
        quantize(pre, false, {.rows = true, .transposed = true}, {Elementwise::gelu, {}},
                 fp8_history::site_use(cache2, fp8_history::Role::input, pre.device(), w2));
    const Fp8WeightCache::Copies& down = cache2->of(w2);
    const at::Tensor y = forward_product(hq, down, b2, dtype);
    ctx->save_for_backward(
        {xq.qt, xq.scale, up.qt, up.scale, pre, hq.qt, hq.scale, down.qt, down.scale});
    remember_layer(ctx, "up.", w1, b1, cache1);
    remember_layer(ctx, "down.", w2, b2, cache2);
    return y.view(with_last(x.sizes(), out));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &xqt = saved[0], &x_scale = saved[1], &w1qt = saved[2], &w1_scale = saved[3];
    const at::Tensor &pre = saved[4], &hqt = saved[5], &h_scale = saved[6], &w2qt = saved[7],
                     &w2_scale = saved[8];
    const std::int64_t in = w1qt.size(0), out = w2qt.size(1);
    const at::Tensor dy = grads[0].reshape({-1, out}).contiguous();
    const Quantized g = quantized_output_gradient(ctx, "down.", dy);
    LayerGradients down =
        layer_gradients(ctx, "down.", g, hqt, h_scale, w2qt, w2_scale, dy.scalar_type());
    // down.dx is dh, the gradient of gelu's output: quantised as dh * gelu'(pre).
    const Quantized d =
        quantized_output_gradient(ctx, "up.", down.dx, {Elementwise::gelu_grad, pre});
    LayerGradients up =
        layer_gradients(ctx, "up.", d, xqt, x_scale, w1qt, w1_scale, down.dx.scalar_type());
    return {up.dx.view(with_last(grads[0].sizes(), in)),
            up.dw,
            up.db,
            down.dw,
            down.db,
            at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

void set_fp8_recipe(Fp8Recipe recipe) {
  g_recipe.store(recipe);
}
Fp8Recipe fp8_recipe() {
  return g_recipe.load();
}

Fp8Recipe parse_fp8_recipe(const std::string& name) {
  return parsed(kRecipeNames, name);
}
const char* fp8_recipe_name(Fp8Recipe recipe) {
  return name_of(kRecipeNames, recipe);
}

void set_fp8_fast_accumulation(Fp8FastAccumulation which) {
  g_fast_accumulation.store(which);
}
Fp8FastAccumulation fp8_fast_accumulation() {
  return g_fast_accumulation.load();
}
Fp8FastAccumulation parse_fp8_fast_accumulation(const std::string& name) {
  return parsed(kFastAccumulationNames, name);
}
const char* fp8_fast_accumulation_name(Fp8FastAccumulation which) {
  return name_of(kFastAccumulationNames, which);
}

void fp8_weights_changed() {
  weights_changed();
}

const Fp8WeightCache::Copies& Fp8WeightCache::of(const at::Tensor& weight) {
  const std::uint64_t epoch = weights_epoch();
  if (copies_.q.defined() && data_ == weight.data_ptr() && version_ == weight._version() &&
      epoch_ == epoch)
    return copies_;
  at::NoGradGuard no_grad;
  // [out, in]: out is a multiple of 16, so the transposed copy [in, out] has no padding.
  Quantized w =
      quantize(weight.detach().contiguous(), false, {.rows = true, .transposed = true}, {},
               fp8_history::site_use(this, fp8_history::Role::weight, weight.device(), weight));
  copies_.q = w.q;
  copies_.qt = w.qt;
  copies_.scale = w.scale;
  data_ = weight.data_ptr();
  version_ = weight._version();
  epoch_ = epoch;
  return copies_;
}

std::int64_t fp8_input_quantizations() {
  return g_input_quantizations.load();
}

std::int64_t fp8_fused_feed_forwards() {
  return g_fused_feed_forwards.load();
}

Fp8Quantized fp8_quantize(const at::Tensor& x, bool gradient) {
  const bool matrix = x.dim() >= 2;
  const Quantized r =
      quantize(matrix ? x.reshape({-1, x.size(-1)}).contiguous() : x, gradient, {.rows = true});
  return {matrix ? r.q.view(x.sizes()) : r.q, r.scale};
}

bool fp8_linear_applies(const at::Tensor& x, const at::Tensor& weight) {
  if (fp8_recipe() == Fp8Recipe::off || weight.dim() != 2 || x.dim() < 2) return false;
  const std::int64_t in = weight.size(1), out = weight.size(0);
  if (x.size(-1) != in || in % kAlign != 0 || out % kAlign != 0 || x.numel() == 0) return false;
  if (x.is_cuda()) return x.scalar_type() == at::kBFloat16 && weight.is_cuda();
  return x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16);
}

at::Tensor fp8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                      Fp8WeightCache& cache) {
  TORCH_CHECK(fp8_linear_applies(x, weight), "fp8_linear: x ", x.sizes(), " ", x.scalar_type(),
              " and weight ", weight.sizes(), " do not qualify (fp8_linear_applies)");
  TORCH_CHECK(
      !bias.defined() || bias.scalar_type() == x.scalar_type() || bias.scalar_type() == at::kFloat,
      "fp8_linear: bias must have x's dtype or be an fp32 master, got ", bias.scalar_type());
  // Autograd functions take no undefined tensor: no bias is an empty one.
  return Fp8LinearFunction::apply(x, weight, bias.defined() ? bias : at::empty({0}, x.options()),
                                  &cache);
}

bool fp8_shared_input_applies(const at::Tensor& x, const std::vector<at::Tensor>& weights) {
  return !weights.empty() && std::all_of(weights.begin(), weights.end(), [&](const at::Tensor& w) {
    return fp8_linear_applies(x, w);
  });
}

std::vector<at::Tensor> fp8_shared_input_linears(const at::Tensor& x,
                                                 const std::vector<at::Tensor>& weights,
                                                 const std::vector<at::Tensor>& biases,
                                                 const std::vector<Fp8WeightCache*>& caches) {
  TORCH_CHECK(fp8_shared_input_applies(x, weights), "fp8_shared_input_linears: x ", x.sizes(), " ",
              x.scalar_type(), " and the ", weights.size(),
              " weights do not qualify (fp8_shared_input_applies)");
  TORCH_CHECK(biases.size() == weights.size() && caches.size() == weights.size(),
              "fp8_shared_input_linears: ", weights.size(), " weights, ", biases.size(),
              " biases and ", caches.size(), " caches (one of each a layer)");
  std::vector<at::Tensor> b;
  for (std::size_t i = 0; i < biases.size(); ++i) {
    TORCH_CHECK(caches[i] != nullptr, "fp8_shared_input_linears: layer ", i, " has no cache");
    const at::Tensor& bias = biases[i];
    TORCH_CHECK(!bias.defined() || bias.scalar_type() == x.scalar_type() ||
                    bias.scalar_type() == at::kFloat,
                "fp8_shared_input_linears: biases must have x's dtype or be fp32 masters, got ",
                bias.scalar_type());
    b.push_back(bias.defined() ? bias : at::empty({0}, x.options()));
  }
  // As TensorLists: autograd takes their tensors as inputs (a std::vector would be opaque).
  return Fp8SharedInputFunction::apply(x, at::TensorList(weights), at::TensorList(b), caches);
}

bool fp8_gelu_feed_forward_applies(const at::Tensor& x, const at::Tensor& w_up,
                                   const at::Tensor& w_down) {
  // The down-projection's input has x's dtype and device and w_up.size(0) columns.
  return fp8_linear_applies(x, w_up) && w_down.dim() == 2 && w_down.size(1) == w_up.size(0) &&
         w_down.size(0) % kAlign == 0 && w_down.device() == w_up.device();
}

at::Tensor fp8_gelu_feed_forward(const at::Tensor& x, const at::Tensor& w_up,
                                 const at::Tensor& b_up, Fp8WeightCache& up_cache,
                                 const at::Tensor& w_down, const at::Tensor& b_down,
                                 Fp8WeightCache& down_cache) {
  TORCH_CHECK(fp8_gelu_feed_forward_applies(x, w_up, w_down), "fp8_gelu_feed_forward: x ",
              x.sizes(), " ", x.scalar_type(), ", up ", w_up.sizes(), " and down ", w_down.sizes(),
              " do not qualify (fp8_gelu_feed_forward_applies)");
  for (const at::Tensor* b : {&b_up, &b_down})
    TORCH_CHECK(
        !b->defined() || b->scalar_type() == x.scalar_type() || b->scalar_type() == at::kFloat,
        "fp8_gelu_feed_forward: biases must have x's dtype or be fp32 masters, got ",
        b->scalar_type());
  const auto or_empty = [&](const at::Tensor& b) {
    return b.defined() ? b : at::empty({0}, x.options());
  };
  g_fused_feed_forwards.fetch_add(1);
  return Fp8GeluFeedForwardFunction::apply(x, w_up, or_empty(b_up), w_down, or_empty(b_down),
                                           &up_cache, &down_cache);
}

}  // namespace wanhost
