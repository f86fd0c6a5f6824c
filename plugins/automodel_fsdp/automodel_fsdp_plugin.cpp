// `automodel_fsdp`: the AutoModel path's fully sharded data parallelism, FSDP2-style.
//
// Sharding: every parameter is flattened and split into equal chunks over the data-parallel
// ranks (the last chunk zero-padded); rank r keeps chunk r as its fp32 master shard, with the
// gradient and AdamW state of that shard only. Units: one per transformer block, plus the root
// unit (everything outside the blocks: patch/text/time embeddings and the output head).
//
// A step: the root unit is gathered for the whole step. Block i is gathered (all-gather of the
// concatenated shards of its parameters, in the compute dtype) right before its forward and its
// weights are freed afterwards. A custom autograd node stands in for the block: in backward it
// gathers the weights again, back-propagates through the block, reduce-scatters the weight
// gradients (fp32) into the shards and frees the weights. Option `recompute` picks the blocks whose
// forward runs without a graph and is recomputed in backward (default: all, as the reference's
// activation checkpointing of every block: activation memory one hidden state per block); the
// others record their graph in forward and keep its activations. Their weights are freed after
// forward too, but the storage object stays: autograd's saved tensors (the parameters and views
// of them) refer to it, and the backward gather refills it in place, as FSDP2 frees and
// re-allocates the unsharded parameters' storage. Weight memory stays one block at a time. With
// prefetch on, the next block's gather is started before the current block computes (on GPUs NCCL
// runs it on its own stream, overlapping the compute).
//
// Every micro batch's loss is already scaled by 1/global_batch, so summing the reduce-scattered
// gradients over ranks gives the gradient of the global mean loss, as the single process has.
//
// One rank (a data-parallel group of one): a shard is the whole parameter, so a gather would only
// copy it and a reduce-scatter only copy the gradient into a padded buffer and back. Instead the
// parameters are views of the shards (the weights are used in place, as ddp uses its own), or one
// cast of them when the gather dtype is not the master dtype (bf16 from fp32 on GPUs: the cast
// ddp's autocast makes); nothing is prefetched, nothing freed after forward nor refilled before
// backward, and each block's weight gradients are added straight to the shards' gradients. The
// arithmetic is the same, so are the numbers and the checkpoints.
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>

#include "wanhost/errors.hpp"
#include "wanhost/kit/checkpoint_state.hpp"
#include "wanhost/kit/json_file.hpp"
#include "wanhost/kit/layers.hpp"
#include "wanhost/kit/parallelism_base.hpp"
#include "wanhost/kit/precision.hpp"
#include "wanhost/kit/safetensors.hpp"
#include "wanhost/log.hpp"
#include "wanhost/plugin.hpp"

namespace wanhost::plugins::automodel_fsdp {
namespace {

using namespace wanhost;
namespace fs = std::filesystem;
using torch::autograd::variable_list;

constexpr const char* kFormat = "wanhost-fsdp-1";

struct Slot {
  std::string name;
  at::Tensor param;  // the model's parameter: holds the full weight only while gathered
  std::vector<std::int64_t> shape;
  std::int64_t numel = 0, chunk = 0;  // chunk: elements per rank (padded)
  std::int64_t offset = 0;            // of this slot's chunk within its unit's shard
  std::int64_t flat_offset = 0;       // of the full weight within its unit's `flat`
  at::Tensor shard;                   // [chunk] master weights; .grad() = reduced gradients
};

struct Unit {
  std::string name;
  std::vector<std::size_t> slots;
  std::int64_t shard_numel = 0, numel = 0;
  bool gathered = false;
  // Parked: `flat`'s memory is freed but its storage object kept for the refill before backward.
  bool parked = false;
  std::size_t parked_bytes = 0;
  at::Tensor flat;          // the full weights, every parameter a view of it (gathered or parked)
  at::Tensor buffer, send;  // gather output and input while a gather is in flight
  WorkPtr pending;
};

// Which blocks run forward without a graph and are recomputed in backward (option `recompute`).
struct RecomputePlan {
  std::string mode;        // all | none | every_k
  std::int64_t every = 1;  // every_k: blocks i with i % every == 0
  bool recomputed(std::int64_t i) const {
    return mode == "all" || (mode == "every_k" && i % every == 0);
  }
};

RecomputePlan recompute_plan(const PluginConfig& cfg) {
  RecomputePlan p{cfg.get<std::string>("recompute")};  // the schema checked enum and minimum
  const bool has_every = cfg.has("recompute_every");
  if (p.mode == "every_k") {
    if (!has_every)
      cfg.fail("recompute_every",
               "needed with recompute \"every_k\": blocks i with i % recompute_every == 0 are "
               "recomputed");
    p.every = cfg.get<std::int64_t>("recompute_every");
  } else if (has_every) {
    // Refused rather than ignored: it would look as if it did something.
    cfg.fail("recompute_every",
             "applies only with recompute \"every_k\" (recompute is \"" + p.mode + "\")");
  }
  return p;
}

// Turns autocast's weight-cast cache off while gathered weights come and go (it is keyed by the
// parameter object, whose data changes under it).
class AutocastCacheOff {
 public:
  AutocastCacheOff() : previous_(at::autocast::is_autocast_cache_enabled()) {
    at::autocast::set_autocast_cache_enabled(false);
  }
  ~AutocastCacheOff() { at::autocast::set_autocast_cache_enabled(previous_); }

 private:
  bool previous_;
};

// A block's autograd graph of its own, from detached inputs: back-propagating through it gives
// the gradients of the block's inputs and weights at once, without accumulating into .grad.
struct BlockGraph {
  std::vector<at::Tensor> inputs;  // hidden, the context tensors, then the block's parameters
  at::Tensor out;
};

BlockGraph record_block(Model& model, const ParallelContext& ctx, std::int64_t block,
                        const at::Tensor& hidden, const Activations& act,
                        const std::vector<at::Tensor>& params) {
  at::AutoGradMode grad_on(true);
  BlockGraph g;
  Activations local = act;
  at::Tensor h = hidden.detach().requires_grad_(true);
  g.inputs.push_back(h);
  for (auto& c : local.context) {
    c = c.detach().requires_grad_(c.requires_grad() || c.is_floating_point());
    g.inputs.push_back(c);
  }
  g.inputs.insert(g.inputs.end(), params.begin(), params.end());
  AutocastGuard autocast(ctx);
  g.out = model.block_forward(block, h, local);
  return g;
}

class Fsdp;

// The backward of one block call (see the file comment): `graph` recorded in forward, or none
// (the block is recomputed from `hidden` and `act`).
class BlockBackward final : public torch::autograd::Node {
 public:
  BlockBackward(Fsdp* owner, Model* model, std::int64_t block, at::Tensor hidden,
                std::shared_ptr<const Activations> act, BlockGraph graph)
      : owner_(owner),
        model_(model),
        block_(block),
        n_out_(1 + act->context.size()),
        hidden_(std::move(hidden)),
        act_(std::move(act)),
        graph_(std::move(graph)) {}
  variable_list apply(variable_list&& grads) override;
  std::string name() const override { return "FsdpBlockBackward"; }
  void release_variables() override {
    hidden_.reset();
    act_.reset();
    graph_ = BlockGraph();
  }

 private:
  Fsdp* owner_;
  Model* model_;
  std::int64_t block_;
  std::size_t n_out_;  // gradients returned: hidden, then each context tensor
  at::Tensor hidden_;
  std::shared_ptr<const Activations> act_;
  BlockGraph graph_;
};

class Fsdp final : public ParallelismBase {
 public:
  explicit Fsdp(const PluginConfig& cfg)
      : ParallelismBase("automodel_fsdp", GradReset::ZeroInPlace),
        param_dtype_option_(cfg.get<std::string>("param_dtype")),
        reduce_dtype_(cfg.get<std::string>("reduce_dtype") == "bf16" ? at::kBFloat16 : at::kFloat),
        prefetch_(cfg.get<bool>("prefetch")),
        reshard_last_(cfg.get<bool>("reshard_last_block")),
        decay_1d_(cfg.get<bool>("decay_1d")),
        recompute_(recompute_plan(cfg)) {}

  ParallelLayout layout(int world_size) const override {
    ParallelLayout l;
    l.dp = world_size;
    return l;
  }

  void setup(ParallelContext& ctx) override {
    setup_data_parallel(ctx);
    ctx_ = ctx;
    gather_dtype_ = param_dtype_option_ == "auto"   ? ctx.compute_dtype
                    : param_dtype_option_ == "bf16" ? at::kBFloat16
                                                    : at::kFloat;
    if (one_rank())
      logger()->info(
          "automodel_fsdp: one data-parallel rank: one-rank fast path, the shards are the whole "
          "weights and are used {} (no gathers, no frees or refills, no reduce-scatter copies)",
          gather_dtype_ == ctx.param_dtype
              ? std::string("in place")
              : "as one " + std::string(c10::toString(gather_dtype_)) + " cast of them a pass");
  }

  void attach(Model& model) override {
    model.module().to(ctx_.device, ctx_.param_dtype);
    std::map<const void*, std::string> names;
    std::vector<std::string> order;
    for (auto& p : model.module().named_parameters(true)) {
      names[p.value().unsafeGetTensorImpl()] = p.key();
      order.push_back(p.key());
    }
    std::map<std::string, at::Tensor> by_name;
    for (auto& p : model.module().named_parameters(true)) by_name[p.key()] = p.value();

    slots_.clear();
    units_.clear();
    std::set<std::string> in_blocks;
    const std::int64_t blocks = model.num_blocks();
    for (std::int64_t i = 0; i < blocks; ++i) {
      std::vector<std::string> members;
      for (auto& p : model.block_module(i).parameters(true)) {
        auto it = names.find(p.unsafeGetTensorImpl());
        if (it == names.end())
          throw std::logic_error("automodel_fsdp: block " + std::to_string(i) +
                                 " has a parameter that is not part of the model's module tree");
        members.push_back(it->second);
        in_blocks.insert(it->second);
      }
      add_unit("blocks." + std::to_string(i), members, by_name);
    }
    std::vector<std::string> root;
    for (const auto& n : order)
      if (!in_blocks.count(n)) root.push_back(n);
    add_unit("root", root, by_name);
    // The optimizer state belongs to the previous shards: the host configures a new one next (a
    // stage with new weights starts with fresh optimizer state: run_config refuses "carry").
    std::vector<AdamWParam> params;
    for (auto& s : slots_)
      params.push_back(
          {s.name, s.shard,
           AdamW::decays(s.name, static_cast<std::int64_t>(s.shape.size()), decay_1d_)});
    set_optimized(std::move(params));
    log_sharding();
  }

  StepLoss forward_backward(Model& model, const std::vector<NoisedBatch>& micro_batches,
                            const LossFn& loss) override {
    AutocastCacheOff no_cache;
    Unit& root = units_.back();
    bring(root, gather_dtype_);
    StepLoss total;
    // Every micro batch gathers and reduce-scatters each unit collectively, but ranks may hold
    // different numbers of them (a token-budget collator such as seq_packer packs each rank's
    // samples on their own). Ranks with fewer run extra passes over their last micro batch with a
    // zero loss weight (no gradient, no loss), so that the collectives pair up.
    const std::size_t real = micro_batches.size();
    const std::size_t passes = most_micro_batches(real);
    for (std::size_t j = 0; j < passes; ++j) {
      const NoisedBatch& mb = micro_batches[std::min(j, real - 1)];
      LossTerms terms;
      {
        AutocastGuard autocast(ctx_);
        auto act = std::make_shared<Activations>(model.embed(mb.noisy, mb.timesteps));
        at::Tensor h = act->hidden;
        for (std::int64_t i = 0; i < model.num_blocks(); ++i) h = block_call(model, i, h, act);
        at::Tensor prediction = model.head(h, *act, mb.noisy);
        terms = loss(prediction, mb);
      }
      (j < real ? terms.loss : terms.loss * 0.0).backward();
      std::vector<at::Tensor> grads;
      for (std::size_t k : root.slots) {
        grads.push_back(slots_[k].param.grad());
        slots_[k].param.mutable_grad() = at::Tensor();
      }
      reduce_gradients(root, grads);
      if (j < real) total.add(terms);
    }
    release(root);
    return total;
  }

  // The most micro batches any data-parallel rank holds this step (one small all-reduce; none on
  // one rank).
  std::size_t most_micro_batches(std::size_t mine) const {
    if (mine == 0) throw std::invalid_argument("automodel_fsdp: a step without micro batches");
    if (ctx_.dp->size() == 1) return mine;
    at::Tensor n = at::full({1}, static_cast<std::int64_t>(mine),
                            at::TensorOptions(at::kLong).device(ctx_.device));
    ctx_.dp->all_reduce(n, ReduceOp::Max);
    return static_cast<std::size_t>(n.item<std::int64_t>());
  }

  at::Tensor reduce_and_clip_gradients(double max_norm) override {
    // The shards' gradients are complete (reduce-scattered as each unit finished backward); each
    // rank holds a part of the model, so the squared norms add up over the group.
    return clip_by_global_norm(max_norm, ctx_.dp.get());
  }

  std::map<std::string, at::Tensor> full_weights(Model& model) override {
    std::map<std::string, at::Tensor> out;
    for (auto& u : units_) {
      const bool was = u.gathered;
      if (!was) bring(u, ctx_.param_dtype);
      for (std::size_t k : u.slots) out[slots_[k].name] = slots_[k].param.detach().to(at::kCPU);
      if (!was) release(u);
    }
    for (auto& b : model.module().named_buffers(true)) out[b.key()] = b.value().detach().cpu();
    return out;
  }

  void save_state(Model&, const std::string& dir) override {
    const int rank = ctx_.dp->rank(), n = ctx_.dp->size();
    std::map<std::string, at::Tensor> tensors;
    for (auto& s : slots_) tensors["param." + s.name] = s.shard.detach().cpu();
    for (auto& [k, v] : optimizer().state()) tensors["optim." + k] = v.detach().cpu();
    safetensors::save(
        rank_file(dir, rank), tensors,
        {{"format", kFormat}, {"dp_size", std::to_string(n)}, {"rank", std::to_string(rank)}});
    if (rank == 0) {
      Json meta = {{"format", kFormat}, {"dp_size", n}, {"params", Json::array()}};
      for (auto& s : slots_)
        meta["params"].push_back({{"name", s.name}, {"shape", s.shape}, {"numel", s.numel}});
      write_text(fs::path(dir) / "fsdp.json", meta.dump(1) + "\n");
    }
  }

  void load_state(Model&, const std::string& dir) override {
    const fs::path meta_path = fs::path(dir) / "fsdp.json";
    if (!fs::exists(meta_path)) return load_other_plugins_state(dir);
    const Json meta = read_json_file(meta_path.string());
    if (meta.value("format", "") != kFormat)
      throw std::runtime_error(meta_path.string() + ": unknown format " +
                               meta.value("format", "?"));
    const int old_n = meta.at("dp_size");
    std::map<std::string, std::vector<std::int64_t>> shapes;
    for (const auto& p : meta.at("params"))
      shapes[p.at("name").get<std::string>()] = p.at("shape").get<std::vector<std::int64_t>>();
    std::string problems;
    for (auto& s : slots_) {
      auto it = shapes.find(s.name);
      if (it == shapes.end())
        problems += "\n  missing " + s.name;
      else if (it->second != s.shape)
        problems += "\n  " + s.name + " has shape " + Json(it->second).dump() + ", the model " +
                    Json(s.shape).dump();
      shapes.erase(s.name);
    }
    for (const auto& [name, shape] : shapes) problems += "\n  unexpected " + name;
    if (!problems.empty())
      throw std::runtime_error("the checkpoint " + dir + " does not match the model:" + problems);

    std::vector<safetensors::File> files;
    for (int k = 0; k < old_n; ++k) files.push_back(safetensors::File::open(rank_file(dir, k)));
    if (old_n != ctx_.dp->size() && ctx_.dp->rank() == 0)
      logger()->info("automodel_fsdp: resharding the checkpoint from {} to {} data-parallel ranks",
                     old_n, ctx_.dp->size());
    std::map<std::string, at::Tensor> opt;
    at::NoGradGuard no_grad;
    for (auto& s : slots_) {
      s.shard.copy_(reshard(files, "param." + s.name, s));
      opt[s.name + ".exp_avg"] = reshard(files, "optim." + s.name + ".exp_avg", s);
      opt[s.name + ".exp_avg_sq"] = reshard(files, "optim." + s.name + ".exp_avg_sq", s);
    }
    opt["__step__"] = files.front().load("optim.__step__");
    optimizer().load_state(opt);
  }

  // A checkpoint of another parallelism plugin (ddp, megatron_tpppcp): this rank's chunk of each
  // whole tensor (wanhost/kit/checkpoint_state.hpp).
  void load_other_plugins_state(const std::string& dir) {
    at::NoGradGuard no_grad;
    WholeState::Shapes shapes;
    for (const auto& s : slots_) shapes[s.name] = s.shape;
    const std::unique_ptr<WholeState> state = WholeState::open(dir, shapes);
    if (ctx_.world_rank == 0)
      logger()->info("automodel_fsdp: loading the checkpoint of {} into {} data-parallel ranks",
                     state->writer(), ctx_.dp->size());
    auto chunk = [&](const at::Tensor& whole, const Slot& s) {
      const std::int64_t lo = std::min(s.numel, ctx_.dp->rank() * s.chunk);
      const std::int64_t hi = std::min(s.numel, lo + s.chunk);
      at::Tensor out = at::zeros({s.chunk}, s.shard.options().requires_grad(false));
      if (hi > lo) out.slice(0, 0, hi - lo).copy_(whole.reshape(-1).slice(0, lo, hi));
      return out;
    };
    std::map<std::string, at::Tensor> opt;
    for (auto& s : slots_) {
      s.shard.copy_(chunk(state->tensor(s.name, "param"), s));
      for (const char* what : {"exp_avg", "exp_avg_sq"})
        opt[s.name + "." + what] = chunk(state->tensor(s.name, what), s);
    }
    opt["__step__"] = state->step();
    optimizer().load_state(opt);
  }

  // --- used by BlockBackward ---
  const ParallelContext& ctx() const { return ctx_; }
  // A data-parallel group of one: the fast path (file comment).
  bool one_rank() const { return ctx_.dp->size() == 1; }
  void ensure_gathered(std::int64_t i) {
    bring(units_[static_cast<std::size_t>(i)], gather_dtype_);
  }
  void prefetch(std::int64_t i) {
    if (prefetch_ && !one_rank() && i >= 0 && i + 1 < static_cast<std::int64_t>(units_.size()))
      gather(units_[static_cast<std::size_t>(i)], gather_dtype_, true);
  }
  std::vector<at::Tensor> unit_params(std::int64_t i) const {
    std::vector<at::Tensor> out;
    for (std::size_t k : units_[static_cast<std::size_t>(i)].slots) out.push_back(slots_[k].param);
    return out;
  }
  void finish_block_backward(std::int64_t i, const std::vector<at::Tensor>& grads) {
    Unit& u = units_[static_cast<std::size_t>(i)];
    reduce_gradients(u, grads);
    release(u);
  }

 private:
  void add_unit(const std::string& name, const std::vector<std::string>& members,
                const std::map<std::string, at::Tensor>& by_name) {
    const int n = ctx_.dp->size(), r = ctx_.dp->rank();
    Unit u;
    u.name = name;
    at::NoGradGuard no_grad;
    for (const auto& m : members) {
      Slot s;
      s.name = m;
      s.param = by_name.at(m);
      s.shape = s.param.sizes().vec();
      s.numel = s.param.numel();
      s.chunk = (s.numel + n - 1) / n;
      s.offset = u.shard_numel;
      u.shard_numel += s.chunk;
      s.flat_offset = u.numel;
      u.numel += s.numel;
      // Every rank starts from rank 0's initial weights, whatever its own initialisation did.
      at::Tensor full = s.param.detach().contiguous();
      if (n > 1) ctx_.dp->broadcast(full, 0);
      s.shard = at::zeros({s.chunk}, full.options());
      const std::int64_t lo = std::min(s.numel, r * s.chunk), hi = std::min(s.numel, lo + s.chunk);
      if (hi > lo) s.shard.slice(0, 0, hi - lo).copy_(full.reshape(-1).slice(0, lo, hi));
      s.shard.requires_grad_(true);
      s.param.set_data(at::empty({0}, full.options()));  // the full weight is gone from now on
      u.slots.push_back(slots_.size());
      slots_.push_back(std::move(s));
    }
    units_.push_back(std::move(u));
  }

  void log_sharding() const {
    std::int64_t total = 0, local = 0;
    for (const auto& s : slots_) {
      total += s.numel;
      local += s.chunk;
    }
    const std::int64_t blocks = static_cast<std::int64_t>(units_.size()) - 1;
    std::string recomputed;
    std::int64_t count = 0;
    for (std::int64_t i = 0; i < blocks; ++i)
      if (recompute_.recomputed(i)) {
        recomputed += (count++ ? "," : "") + std::to_string(i);
      }
    if (ctx_.world_rank == 0)
      logger()->info(
          "automodel_fsdp: {} parameters in {} units sharded over {} rank(s): {} per rank; "
          "weights gathered in {}, gradients reduced in {}, prefetch {}; recompute {}: {} of {} "
          "blocks recomputed in backward [{}]",
          total, units_.size(), ctx_.dp->size(), local, c10::toString(gather_dtype_),
          c10::toString(reduce_dtype_), prefetch_ ? "on" : "off",
          recompute_.mode == "every_k" ? "every_k=" + std::to_string(recompute_.every)
                                       : recompute_.mode,
          count, blocks, recomputed);
  }

  // Makes a unit's parameters its full weights in `dtype`: all-gathered (or the prefetched gather
  // waited for); on one rank views of the shards, or one cast of them to another dtype.
  void bring(Unit& u, at::ScalarType dtype) {
    if (u.gathered) return;
    if (!one_rank()) {
      gather(u, dtype, false);
      return materialize(u);
    }
    at::NoGradGuard no_grad;
    for (std::size_t k : u.slots) {
      Slot& s = slots_[k];
      s.param.set_data(s.shard.detach().view(s.shape).to(dtype));  // .to: no copy if same dtype
    }
    u.gathered = true;
  }

  // Starts (async) or completes the all-gather of a unit's weights into one buffer (more than one
  // rank).
  void gather(Unit& u, at::ScalarType dtype, bool async) {
    if (u.gathered || u.pending || u.buffer.defined()) return;
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> parts;
    for (std::size_t k : u.slots) parts.push_back(slots_[k].shard.detach());
    if (parts.empty()) {
      u.buffer = at::empty({0}, at::TensorOptions().dtype(dtype).device(ctx_.device));
      return;
    }
    u.send = at::cat(parts).to(dtype);
    u.buffer = at::empty({ctx_.dp->size() * u.shard_numel}, u.send.options());
    u.pending = ctx_.dp->all_gather(u.buffer, u.send, async);
  }

  // Waits for the gather and makes every parameter of the unit its full weight: views of a new
  // `flat`, or of the parked one, whose storage gets memory again and the gathered values.
  void materialize(Unit& u) {
    if (u.gathered) return;
    if (u.pending) {
      u.pending->wait();
      u.pending.reset();
    }
    at::NoGradGuard no_grad;
    const int n = ctx_.dp->size();
    const bool refill = u.parked && u.flat.scalar_type() == u.buffer.scalar_type();
    if (refill) {
      c10::Storage storage = u.flat.storage();
      storage.set_data_ptr_noswap(storage.allocator()->allocate(u.parked_bytes));
      storage.set_nbytes(u.parked_bytes);
    } else {
      u.flat = at::empty({u.numel}, u.buffer.options());
    }
    // Each parameter's rank-major chunks, without the padding of the last.
    at::Tensor rows = u.buffer.view({n, u.shard_numel});
    for (std::size_t k : u.slots) {
      const Slot& s = slots_[k];
      if (s.numel == 0) continue;
      at::Tensor src = rows.slice(1, s.offset, s.offset + s.chunk);
      at::Tensor dst = u.flat.slice(0, s.flat_offset, s.flat_offset + s.numel);
      const std::int64_t whole = s.numel / s.chunk;  // chunks without padding
      if (whole > 0)
        dst.slice(0, 0, whole * s.chunk).view({whole, s.chunk}).copy_(src.slice(0, 0, whole));
      if (whole * s.chunk < s.numel)
        dst.slice(0, whole * s.chunk).copy_(src[whole].slice(0, 0, s.numel - whole * s.chunk));
    }
    if (!refill)
      for (std::size_t k : u.slots) {
        Slot& s = slots_[k];
        s.param.set_data(u.flat.slice(0, s.flat_offset, s.flat_offset + s.numel).view(s.shape));
      }
    u.buffer = at::Tensor();
    u.send = at::Tensor();
    u.gathered = true;
    u.parked = false;
  }

  void release(Unit& u) {
    if (!u.gathered && !u.parked) return;
    for (std::size_t k : u.slots) {
      Slot& s = slots_[k];
      s.param.set_data(at::empty({0}, s.param.options()));
      s.param.mutable_grad() = at::Tensor();
    }
    u.flat = at::Tensor();
    u.gathered = false;
    u.parked = false;
  }

  // Frees the memory of a unit's weights but keeps their storage object: the graph recorded in
  // forward saved the parameters or views of them (transposes, reshapes), which all refer to it,
  // so materialize() can refill it in place before the block's backward. FSDP2 does the same
  // with untyped_storage().resize_(0) (PyTorch FSDP2, reshard_after_forward). Not on one rank:
  // there the weights are the shards themselves (or the one cast of them that the graph keeps, as
  // ddp's graph keeps autocast's), so freeing them would save nothing or cost a cast to refill.
  void park(Unit& u) {
    if (!u.gathered || one_rank()) return;
    c10::Storage storage = u.flat.storage();
    u.parked_bytes = storage.nbytes();
    storage.set_data_ptr_noswap(storage.allocator()->allocate(0));
    storage.set_nbytes(0);
    u.gathered = false;
    u.parked = true;
  }

  // Reduce-scatters a unit's full-weight gradients (aligned with u.slots; undefined = zero) and
  // adds this rank's part to the shards' gradients.
  void reduce_gradients(Unit& u, const std::vector<at::Tensor>& grads) {
    if (u.slots.empty()) return;
    at::NoGradGuard no_grad;
    if (one_rank()) {
      // Whole gradients, this rank's part already: added as the reduce-scatter would add them
      // (in reduce_dtype), without its zeroed and padded buffers.
      for (std::size_t j = 0; j < u.slots.size(); ++j)
        if (grads[j].defined())
          slots_[u.slots[j]].shard.mutable_grad().add_(grads[j].reshape(-1).to(reduce_dtype_));
      return;
    }
    const int n = ctx_.dp->size();
    auto opts = at::TensorOptions().dtype(reduce_dtype_).device(ctx_.device);
    at::Tensor input = at::zeros({n, u.shard_numel}, opts);
    for (std::size_t j = 0; j < u.slots.size(); ++j) {
      if (!grads[j].defined()) continue;
      const Slot& s = slots_[u.slots[j]];
      at::Tensor g = grads[j].reshape(-1).to(reduce_dtype_);
      g = at::constant_pad_nd(g, {0, n * s.chunk - s.numel}).view({n, s.chunk});
      input.slice(1, s.offset, s.offset + s.chunk).copy_(g);
    }
    at::Tensor mine = at::empty({u.shard_numel}, opts);
    ctx_.dp->reduce_scatter(mine, input.view(-1), ReduceOp::Sum);
    for (std::size_t k : u.slots) {
      Slot& s = slots_[k];
      s.shard.mutable_grad().add_(mine.slice(0, s.offset, s.offset + s.chunk));
    }
  }

  at::Tensor block_call(Model& model, std::int64_t i, const at::Tensor& h,
                        const std::shared_ptr<Activations>& act) {
    ensure_gathered(i);
    prefetch(i + 1);
    const bool recompute = recompute_.recomputed(i);
    BlockGraph graph;
    at::Tensor out;
    if (recompute) {
      at::NoGradGuard no_grad;
      out = model.block_forward(i, h, *act);
    } else {
      graph = record_block(model, ctx_, i, h, *act, unit_params(i));
      out = graph.out.detach();
    }
    // The last block keeps its weights for the backward that follows at once (as the reference).
    const bool keep = i + 1 == model.num_blocks() && !reshard_last_;
    Unit& u = units_[static_cast<std::size_t>(i)];
    // (On one rank release only drops views of the shards, or frees the cast a recomputed block
    // makes again in backward; park does nothing.)
    if (!keep && recompute) release(u);
    if (!keep && !recompute) park(u);
    torch::autograd::edge_list edges;
    edges.push_back(torch::autograd::impl::gradient_edge(h));
    for (const auto& c : act->context) edges.push_back(torch::autograd::impl::gradient_edge(c));
    auto node = std::shared_ptr<BlockBackward>(
        new BlockBackward(this, &model, i, h.detach(), act, std::move(graph)),
        torch::autograd::deleteNode);
    node->set_next_edges(std::move(edges));
    torch::autograd::create_gradient_edge(out, node);
    return out;
  }

  static std::string rank_file(const std::string& dir, int rank) {
    char name[64];
    std::snprintf(name, sizeof name, "fsdp_rank_%05d.safetensors", rank);
    return (fs::path(dir) / name).string();
  }

  static void write_text(const fs::path& path, const std::string& text) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << text;
    f.flush();
    if (!f) throw std::runtime_error("cannot write " + path.string());
  }

  // This rank's chunk of `key` for slot `s`, assembled from the chunks of the old layout.
  at::Tensor reshard(const std::vector<safetensors::File>& files, const std::string& key,
                     const Slot& s) const {
    const std::int64_t old_n = static_cast<std::int64_t>(files.size());
    const std::int64_t old_chunk = (s.numel + old_n - 1) / old_n;
    const std::int64_t lo = std::min(s.numel, ctx_.dp->rank() * s.chunk);
    const std::int64_t hi = std::min(s.numel, lo + s.chunk);
    at::Tensor out = at::zeros({s.chunk}, s.shard.options().requires_grad(false));
    for (std::int64_t k = lo / std::max<std::int64_t>(1, old_chunk); k < old_n && hi > lo; ++k) {
      const std::int64_t olo = k * old_chunk, ohi = std::min(s.numel, olo + old_chunk);
      const std::int64_t a = std::max(lo, olo), b = std::min(hi, ohi);
      if (a >= hi) break;
      if (b <= a) continue;
      const auto& file = files[static_cast<std::size_t>(k)];
      if (!file.contains(key)) throw std::runtime_error(file.path() + ": no tensor '" + key + "'");
      at::Tensor part = file.load(key);
      if (part.numel() != old_chunk)
        throw std::runtime_error(file.path() + ": '" + key + "' has " +
                                 std::to_string(part.numel()) + " elements, expected " +
                                 std::to_string(old_chunk));
      out.slice(0, a - lo, b - lo).copy_(part.slice(0, a - olo, b - olo));
    }
    return out.to(s.shard.device());
  }

  std::string param_dtype_option_;
  at::ScalarType reduce_dtype_;
  bool prefetch_, reshard_last_, decay_1d_;
  RecomputePlan recompute_;
  at::ScalarType gather_dtype_ = at::kFloat;
  ParallelContext ctx_;
  std::vector<Slot> slots_;
  std::vector<Unit> units_;  // blocks 0..B-1, then the root unit
};

variable_list BlockBackward::apply(variable_list&& grads) {
  if (!grads[0].defined()) return variable_list(n_out_);
  // Gathers the weights again, or refills the parked ones that graph_ refers to.
  owner_->ensure_gathered(block_);
  owner_->prefetch(block_ - 1);

  AutocastCacheOff no_cache;
  BlockGraph graph = std::move(graph_);
  if (!graph.out.defined())  // a recomputed block: its graph is built now
    graph =
        record_block(*model_, owner_->ctx(), block_, hidden_, *act_, owner_->unit_params(block_));
  variable_list g = torch::autograd::grad({graph.out}, graph.inputs, {grads[0]},
                                          /*retain_graph=*/false,
                                          /*create_graph=*/false, /*allow_unused=*/true);
  graph = BlockGraph();  // its saved tensors go before the weights are freed
  owner_->finish_block_backward(
      block_, std::vector<at::Tensor>(g.begin() + static_cast<std::ptrdiff_t>(n_out_), g.end()));
  g.resize(n_out_);
  return g;
}

void factories(PluginFactories& f) {
  f.create_parallelism = [](const PluginConfig& cfg) -> std::unique_ptr<Parallelism> {
    return std::make_unique<Fsdp>(cfg);
  };
}

}  // namespace
}  // namespace wanhost::plugins::automodel_fsdp

WANHOST_PLUGIN("automodel_fsdp", "0.1.0", wanhost::plugins::automodel_fsdp::factories)
