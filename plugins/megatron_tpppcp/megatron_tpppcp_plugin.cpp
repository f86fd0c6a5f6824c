// `megatron_tpppcp`: the Megatron path's parallelism (docs/parallelism.md), after Megatron-LM and
// NeMo Megatron-Bridge's Wan recipe: tensor parallelism (tp), pipeline parallelism (pp) with the
// 1F1B schedule, and data parallelism (dp) with the distributed optimizer. Context parallelism
// (cp) is accepted in the layout only at degree 1 for now.
//
// Placement. Every rank builds the whole model (the model initialises and loads it exactly as one
// process does), then attach() keeps this rank's part: its tensor-parallel slice of every
// column/row-parallel linear layer (tensor_parallel.hpp) and only its pipeline stage's blocks.
// Parameters outside the blocks (patch/time/text embeddings, output head) stay on every stage:
// each stage runs the input part itself for the text context and time modulation its blocks read,
// so their gradients are partial sums over the stages, summed over the pipeline group.
//
// Gradients. Each micro batch's loss is already scaled by 1/global_batch, so gradients are summed:
// over the pipeline for the parameters every stage holds, then over the data-parallel ranks
// (all-reduce, or reduce-scatter into the distributed optimizer's shards). Replicated parameters
// get identical gradients on every tensor-parallel rank (copy_to_group sums the inputs'
// gradients), so the global norm counts each parameter once: split ones on every
// tensor-parallel rank, the others on rank 0 of the group; every stage's blocks; shards on every
// data-parallel rank.
//
// Checkpoints: one file per (tp, pp) coordinate, written by data-parallel rank 0, holding that
// coordinate's parameters and AdamW state at their tensor-parallel shapes, and megatron.json
// listing every parameter's whole shape, split dimension and file; load_state assembles whole
// tensors from the files of any earlier layout and takes this rank's part, so a run resumes with
// other degrees.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include "context_parallel.hpp"
#include "layout.hpp"
#include "pipeline.hpp"
#include "sequence_parallel.hpp"
#include "tensor_parallel.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/checkpoint_state.hpp"
#include "wanhost/kit/collectives.hpp"
#include "wanhost/kit/layers.hpp"
#include "wanhost/kit/parallelism_base.hpp"
#include "wanhost/kit/precision.hpp"
#include "wanhost/kit/safetensors.hpp"
#include "wanhost/log.hpp"
#include "wanhost/plugin.hpp"

namespace wanhost::plugins::megatron_tpppcp {
namespace {

using namespace wanhost;
namespace fs = std::filesystem;

constexpr const char* kFormat = "wanhost-megatron-1";

// One parameter of the model as this rank holds it.
struct Param {
  std::string name;
  at::Tensor tensor;                // the model's parameter (this rank's part; empty off-stage)
  std::vector<std::int64_t> shape;  // the whole model's shape
  std::int64_t split_dim = -1;      // tensor-parallel split, -1: whole on every rank
  std::int64_t block = -1;          // -1: outside the blocks (held by every stage)
  bool local = true;                // held by this rank's stage
  // Distributed optimizer: this rank's elements [lo, hi) of the flattened parameter, `chunk` =
  // the padded share every rank sends in the collectives. `shard`, what AdamW updates, is a view
  // of the parameter itself: the master weights are the parameters (run.master_weights' dtype,
  // fp32 by default), so sharding adds no second copy of them (as Megatron's distributed
  // optimizer does for fp32 parameters); only the moments and the shard's gradient are 1/dp.
  std::int64_t chunk = 0, lo = 0, hi = 0;
  at::Tensor shard;
};

class Megatron final : public ParallelismBase {
 public:
  explicit Megatron(const PluginConfig& cfg)
      : ParallelismBase("megatron_tpppcp", GradReset::Drop),  // zero_grad() is its own
        pointer_(cfg.pointer),
        tp_(cfg.get<int>("tp")),
        pp_(cfg.get<int>("pp")),
        cp_(cfg.get<int>("cp")),
        dp_(cfg.get<int>("dp")),
        layers_(cfg.get<std::vector<std::int64_t>>("pipeline_layers")),
        distributed_optimizer_option_(cfg.get<bool>("distributed_optimizer")),
        sequence_parallel_option_(cfg.get<bool>("sequence_parallel")),
        decay_1d_(cfg.get<bool>("decay_1d")) {}

  ParallelLayout layout(int world_size) const override {
    const Degrees d = degrees(world_size);
    ParallelLayout l;
    l.tp = d.tp;
    l.pp = d.pp;
    l.cp = d.cp;
    l.dp = d.dp;
    return l;
  }

  void setup(ParallelContext& ctx) override {
    d_ = degrees(ctx.world_size);
    me_ = coordinates(d_, ctx.world_rank);
    // Collective: every rank splits the world in the same order.
    auto split = [&](std::vector<Dim> vary) {
      return ctx.world->split(group_of(d_, ctx.world_rank, vary));
    };
    ctx.tp = split({Dim::tp});
    ctx.cp = split({Dim::cp});
    ctx.dp = split({Dim::dp});
    ctx.pp = split({Dim::pp});
    dp_cp_ = split({Dim::dp, Dim::cp});
    // Over one data-parallel rank there is nothing to shard (and no buffers to copy through).
    distributed_optimizer_ = distributed_optimizer_option_ && dp_cp_->size() > 1;
    ctx.layout = layout(ctx.world_size);
    sp_ = sequence_parallel_option_ && d_.tp > 1;
    // Packed samples padded so that every split is whole: 2 x cp chunks a sample for the
    // load-balanced context-parallel split, each a multiple of tp for sequence parallelism.
    ctx.token_multiple = (d_.cp > 1 ? 2 * d_.cp : 1) * (sp_ ? d_.tp : 1);
    if (sp_) {
      CommunicatorPtr group = ctx.tp;
      ctx.gather_sequence = [group](const at::Tensor& x) {
        return collectives::all_gather_along(x, 1, group);
      };
    }
    if (d_.cp > 1) {
      // Self-attention over the whole pack (context_parallel.hpp).
      context_keys_ = std::make_shared<ContextKeys>();
      ctx.attention = context_parallel_attention(ctx.attention, ctx.cp, context_keys_);
      if (ctx.attention_key_bias)
        ctx.attention_key_bias =
            context_parallel_attention_key_bias(ctx.attention_key_bias, context_keys_);
    }
    if (d_.tp > 1) {
      CommunicatorPtr group = ctx.tp;
      const bool sp = sp_;
      ctx.make_linear = [group, sp](std::int64_t in, std::int64_t out, bool bias,
                                    LinearRole role) -> std::shared_ptr<LinearLayer> {
        if (role == LinearRole::Replicated) return make_replicated_linear(in, out, bias);
        return std::make_shared<TensorParallelLinear>(in, out, bias, role, group, sp);
      };
    }
    ctx_ = ctx;
    if (ctx.world_rank == 0)
      logger()->info(
          "megatron_tpppcp: {} over {} process(es); ranks ordered tp, cp, dp, pp; {}; {}; packed "
          "samples padded to a multiple of {} tokens",
          describe(d_), ctx.world_size,
          sp_         ? "sequence parallelism on"
          : d_.tp > 1 ? "no sequence parallelism"
                      : "one tensor-parallel rank",
          distributed_optimizer_ ? "distributed optimizer (state sharded over dp)"
          : distributed_optimizer_option_
              ? "one data-parallel rank: no distributed optimizer (nothing to shard)"
              : "optimizer state replicated over dp",
          ctx.token_multiple);
  }

  void attach(Model& model) override {
    at::NoGradGuard no_grad;
    torch::nn::Module& root = model.module();
    root.to(ctx_.device, ctx_.param_dtype);
    // Every rank starts from rank 0's weights, whatever its own initialisation did.
    if (ctx_.world_size > 1)
      for (auto& p : root.named_parameters(true)) {
        at::Tensor t = p.value().detach();
        ctx_.world->broadcast(t, 0);
      }

    stages_ = stage_blocks(model.num_blocks(), d_.pp, layers_, pointer_ + "/pipeline_layers");
    const auto [first, last] = stages_[static_cast<std::size_t>(me_.pp)];
    std::map<const void*, std::int64_t> block_of, split_of;
    for (std::int64_t i = 0; i < model.num_blocks(); ++i)
      for (auto& p : model.block_module(i).parameters(true)) block_of[p.unsafeGetTensorImpl()] = i;
    std::vector<std::pair<std::string, TensorParallelLinear*>> linears;
    for (auto& m : root.named_modules("", true))
      if (auto* l = dynamic_cast<TensorParallelLinear*>(m.value().get())) {
        linears.emplace_back(m.key(), l);
        for (auto& p : l->named_parameters(false))
          split_of[p.value().unsafeGetTensorImpl()] =
              p.key() == "weight" ? l->weight_split_dim() : l->bias_split_dim();
      }

    params_.clear();
    for (auto& p : root.named_parameters(true)) {
      Param q;
      q.name = p.key();
      q.tensor = p.value();
      q.shape = q.tensor.sizes().vec();
      const void* impl = q.tensor.unsafeGetTensorImpl();
      if (auto it = split_of.find(impl); it != split_of.end()) q.split_dim = it->second;
      if (auto it = block_of.find(impl); it != block_of.end()) q.block = it->second;
      q.local = q.block < 0 || (q.block >= first && q.block < last);
      params_.push_back(std::move(q));
    }
    for (auto& [name, l] : linears) l->shard(name);
    for (auto& q : params_)
      if (!q.local) q.tensor.set_data(at::empty({0}, q.tensor.options()));  // another stage's

    std::vector<AdamWParam> optimized;
    const int n = dp_cp_->size(), r = dp_cp_->rank();
    for (auto& q : params_) {
      if (!q.local) continue;
      const bool decay =
          AdamW::decays(q.name, static_cast<std::int64_t>(q.shape.size()), decay_1d_);
      if (!distributed_optimizer_) {
        optimized.push_back({q.name, q.tensor, decay});
        continue;
      }
      const std::int64_t numel = q.tensor.numel();
      q.chunk = (numel + n - 1) / n;
      q.lo = std::min(numel, r * q.chunk);
      q.hi = std::min(numel, q.lo + q.chunk);
      q.shard = q.tensor.detach().view(-1).slice(0, q.lo, q.hi);
      optimized.push_back({q.name, q.shard, decay});
    }
    set_optimized(std::move(optimized));
    log_placement();
  }

  StepLoss forward_backward(Model& model, const std::vector<NoisedBatch>& micro_batches,
                            const LossFn& loss) override {
    return schedule(model, micro_batches, loss);
  }

  at::Tensor reduce_and_clip_gradients(double max_norm) override {
    at::NoGradGuard no_grad;
    std::vector<Param*> local, shared;
    for (auto& q : params_)
      if (q.local) {
        local.push_back(&q);
        if (q.block < 0) shared.push_back(&q);
      }
    // Sequence parallelism: every replicated parameter's gradient is this rank's part.
    if (sp_) {
      std::vector<Param*> replicated;
      for (Param* q : local)
        if (q->split_dim < 0) replicated.push_back(q);
      all_reduce_grads(replicated, ctx_.tp);
    }
    // Parameters every stage holds: each stage's part of their gradient.
    if (d_.pp > 1) all_reduce_grads(shared, ctx_.pp);
    if (distributed_optimizer_)
      reduce_scatter_grads(local);
    else if (dp_cp_->size() > 1)
      all_reduce_grads(local, dp_cp_);

    // Each parameter's gradient counted once in the norm (file comment).
    std::vector<at::Tensor> counted;
    const std::vector<at::Tensor> tensors = optimized_tensors();
    std::size_t k = 0;
    for (auto& q : params_) {
      if (!q.local) continue;
      const bool once_in_tp = q.split_dim >= 0 || me_.tp == 0;
      const bool once_in_pp = q.block >= 0 || me_.pp == 0;
      const bool once_in_dp = distributed_optimizer_ || (me_.dp == 0 && me_.cp == 0);
      if (once_in_tp && once_in_pp && once_in_dp) counted.push_back(tensors[k]);
      ++k;
    }
    const at::Tensor norm = global_norm(counted, ctx_.world.get(), ctx_.device);
    clip_in_optimizer_step(norm, max_norm);
    return norm;
  }

  // (optimizer_step is this with nothing to skip.)
  void optimizer_step_unless(double lr, const at::Tensor& skip) override {
    ParallelismBase::optimizer_step_unless(lr, skip);
    after_update();
  }
  void optimizer_step_unless_device_lr(const at::Tensor& lr, const at::Tensor& skip) override {
    ParallelismBase::optimizer_step_unless_device_lr(lr, skip);
    after_update();
  }
  // The distributed optimizer's updated shards back into the model (a skipped step gathers
  // unchanged shards).
  void after_update() {
    if (distributed_optimizer_) gather_shards();
  }

  // Model gradients are dropped (autograd allocates them in the next backward, as ddp's), so
  // they take no memory outside the backward pass; the distributed optimizer's shard gradients
  // are kept and zeroed, since the reduce-scatter writes into them.
  void zero_grad() override {
    for (auto& q : params_) {
      if (!q.local) continue;
      if (q.tensor.grad().defined()) q.tensor.mutable_grad() = at::Tensor();
      if (!distributed_optimizer_) continue;
      if (q.shard.grad().defined())
        q.shard.mutable_grad().zero_();
      else
        q.shard.mutable_grad() = at::zeros_like(q.shard);
    }
  }

  std::int64_t state_bytes() const override {
    if (!distributed_optimizer_) return ParallelismBase::state_bytes();
    // The model's parameters and gradients, the shards' gradients, the shards' AdamW moments.
    std::int64_t n = has_optimizer() ? optimizer().state_bytes() : 0;
    for (const auto& q : params_) {
      if (!q.local) continue;
      const auto bytes = static_cast<std::int64_t>(q.tensor.element_size());
      n += 2 * q.tensor.numel() * bytes + q.shard.numel() * bytes;
    }
    return n;
  }

  std::map<std::string, at::Tensor> full_weights(Model& model) override {
    at::NoGradGuard no_grad;
    std::map<std::string, at::Tensor> out;
    for (auto& q : params_) {
      at::Tensor t;
      if (q.local) {
        t = q.tensor.detach();
        if (q.split_dim >= 0) t = collectives::gather_along(t, q.split_dim, ctx_.tp);
      }
      if (d_.pp > 1 && q.block >= 0) {
        const int owner = stage_of(q.block);
        at::Tensor buffer =
            owner == me_.pp ? t.contiguous() : at::empty(q.shape, q.tensor.options());
        ctx_.pp->broadcast(buffer, owner);
        t = buffer;
      }
      out[q.name] = t.to(at::kCPU);
    }
    for (auto& b : model.module().named_buffers(true)) out[b.key()] = b.value().detach().cpu();
    return out;
  }

  void save_state(Model&, const std::string& dir) override {
    at::NoGradGuard no_grad;
    std::map<std::string, at::Tensor> state = optimizer().state();
    // The moments at each parameter's local shape (gathered from the shards: collective over
    // dp x cp, one for each kind).
    std::map<std::string, std::vector<at::Tensor>> moments;
    for (const char* what : {".exp_avg", ".exp_avg_sq"}) {
      std::vector<at::Tensor>& m = moments[what];
      for (const auto& q : params_)
        if (q.local) m.push_back(state.at(q.name + what));
      if (distributed_optimizer_) m = gather_shards_of(m);
    }
    std::map<std::string, at::Tensor> tensors;
    std::size_t k = 0;
    for (auto& q : params_) {
      if (!q.local) continue;
      const std::size_t i = k++;
      if (q.block < 0 && me_.pp != 0) continue;  // stage 0 writes the parameters every stage holds
      tensors["param." + q.name] = q.tensor.detach().cpu();
      for (const auto& [what, m] : moments) tensors["optim." + q.name + what] = m[i].cpu();
    }
    tensors["optim.__step__"] = state.at("__step__").cpu();
    if (me_.dp == 0 && me_.cp == 0)
      safetensors::save(
          file_of(dir, me_.tp, me_.pp), tensors,
          {{"format", kFormat}, {"tp", std::to_string(d_.tp)}, {"pp", std::to_string(d_.pp)}});
    if (ctx_.world_rank == 0) {
      Json meta = {{"format", kFormat}, {"tp", d_.tp}, {"pp", d_.pp},
                   {"cp", d_.cp},       {"dp", d_.dp}, {"params", Json::array()}};
      for (const auto& q : params_)
        meta["params"].push_back({{"name", q.name},
                                  {"shape", q.shape},
                                  {"split_dim", q.split_dim},
                                  {"stage", q.block < 0 ? 0 : stage_of(q.block)}});
      std::ofstream f(fs::path(dir) / "megatron.json", std::ios::binary | std::ios::trunc);
      f << meta.dump(1) << "\n";
      f.flush();
      if (!f)
        throw std::runtime_error("cannot write " + (fs::path(dir) / "megatron.json").string());
    }
  }

  // Any built-in plugin's checkpoint (wanhost/kit/checkpoint_state.hpp): whole tensors, of which
  // this rank keeps its tensor-parallel part (and its distributed-optimizer shard).
  void load_state(Model&, const std::string& dir) override {
    at::NoGradGuard no_grad;
    WholeState::Shapes shapes;
    for (const auto& q : params_) shapes[q.name] = q.shape;
    const std::unique_ptr<WholeState> state = WholeState::open(dir, shapes);
    const std::string mine_now = "megatron_tpppcp tp=" + std::to_string(d_.tp) +
                                 " pp=" + std::to_string(d_.pp) + " dp=" + std::to_string(d_.dp);
    if (ctx_.world_rank == 0 && state->writer() != mine_now)
      logger()->info("megatron_tpppcp: resharding the checkpoint from {} to {}", state->writer(),
                     describe(d_));
    auto mine = [&](const at::Tensor& t, const Param& q) {
      if (q.split_dim < 0) return t;
      const std::int64_t part = t.size(q.split_dim) / d_.tp;
      return t.narrow(q.split_dim, me_.tp * part, part);
    };
    std::map<std::string, at::Tensor> opt;
    for (auto& q : params_) {
      if (!q.local) continue;
      q.tensor.copy_(mine(state->tensor(q.name, "param"), q));
      for (const char* what : {"exp_avg", "exp_avg_sq"}) {
        const at::Tensor v = mine(state->tensor(q.name, what), q);
        opt[q.name + "." + what] =
            (distributed_optimizer_ ? v.reshape(-1).slice(0, q.lo, q.hi) : v)
                .to(q.tensor.device(), q.tensor.scalar_type(), false, /*copy=*/true);
      }
    }
    opt["__step__"] = state->step();
    optimizer().load_state(opt);
  }

 private:
  Degrees degrees(int world_size) const {
    return resolve_degrees(tp_, cp_, dp_, pp_, world_size, pointer_);
  }

  int stage_of(std::int64_t block) const {
    for (std::size_t s = 0; s < stages_.size(); ++s)
      if (block >= stages_[s].first && block < stages_[s].second) return static_cast<int>(s);
    throw std::logic_error("megatron_tpppcp: block " + std::to_string(block) + " has no stage");
  }

  static std::string file_of(const std::string& dir, int tp, int pp) {
    char name[64];
    std::snprintf(name, sizeof name, "megatron_tp%03d_pp%03d.safetensors", tp, pp);
    return (fs::path(dir) / name).string();
  }

  // 1F1B over the step's micro batches (pipeline.hpp; one stage: forward and backward of each in
  // turn). Every stage runs the input part of each micro batch itself; the hidden state travels
  // stage to stage (tag 2j forward, 2j+1 backward). With context parallelism the stages work on
  // this rank's share of each pack (context_parallel.hpp) and the last stage gathers the whole
  // hidden state for the head: every cp rank computes the same loss and back-propagates 1/cp of
  // it, so the head's parameters get 1/cp of their gradient on each (summed over dp x cp later)
  // and the share's hidden state cp x 1/cp of its own.
  StepLoss schedule(Model& model, const std::vector<NoisedBatch>& micro_batches,
                    const LossFn& loss) {
    struct InFlight {
      std::shared_ptr<Activations> act, whole;  // the blocks' (this rank's share) and the pack's
      std::shared_ptr<AttentionSegments> cross_all;  // sequence parallelism: cross-attention's
      at::Tensor pack_order;
      at::Tensor input, output;
      LossTerms terms;
    };
    const int s = me_.pp;
    const bool first = s == 0, last = s == d_.pp - 1;
    const auto [b0, b1] = stages_[static_cast<std::size_t>(s)];
    std::vector<InFlight> flight(micro_batches.size());
    std::vector<WorkPtr> sends;
    std::vector<at::Tensor> sent;  // kept until their sends complete
    StepLoss total;
    const auto ops = one_f_one_b(d_.pp, s, static_cast<std::int64_t>(micro_batches.size()));
    for (const PipelineOp& op : ops) {
      const auto j = static_cast<std::size_t>(op.micro_batch);
      const int tag = static_cast<int>(2 * op.micro_batch);
      InFlight& f = flight[j];
      const NoisedBatch& mb = micro_batches[j];
      if (op.forward) {
        AutocastGuard autocast(ctx_);
        f.whole = std::make_shared<Activations>(model.embed(mb.noisy, mb.timesteps));
        f.act = f.whole;
        if (d_.cp > 1) {
          if (!mb.noisy.packed())
            throw ConfigError("/collator/plugin",
                              "context parallelism (cp=" + std::to_string(d_.cp) +
                                  ") splits packed micro batches: choose the seq_packer or packed "
                                  "collator",
                              "megatron_tpppcp");
          std::vector<std::int64_t> real;
          for (const auto& seg : mb.noisy.segments) real.push_back(model.tokens(seg));
          ContextShare share = share_of(*f.whole, real, d_.cp, me_.cp);
          context_keys_->add(share.local->segments_self.get(), share.pack_order);
          f.act = share.local;
          f.pack_order = share.pack_order;
        }
        if (sp_) {
          SequenceShare share = sequence_share_of(*f.act, d_.tp, me_.tp);
          f.act = share.local;
          f.cross_all = share.cross_all;
        }
        at::Tensor h = f.act->hidden;
        if (!first) {
          at::Tensor in = at::empty(h.sizes(), h.options());
          ctx_.pp->recv(in, s - 1, tag)->wait();
          f.input = in.requires_grad_(true);
          h = f.input;
        }
        for (std::int64_t i = b0; i < b1; ++i) h = model.block_forward(i, h, *f.act);
        if (last) {
          // The whole hidden state for the head, which every rank of the groups that split the
          // tokens computes alike: each back-propagates 1/split of the loss (below) and passes
          // split x its share's gradient on.
          if (sp_) h = whole_for_head(h, ctx_.tp);
          if (d_.cp > 1) h = whole_for_head(h, ctx_.cp).index_select(1, f.pack_order);
          f.terms = loss(model.head(h, *f.whole, mb.noisy), mb);
          total.add(f.terms);
        } else {
          at::Tensor out = h.detach().contiguous();
          sends.push_back(ctx_.pp->send(out, s + 1, tag));
          sent.push_back(out);
          f.output = h;
        }
      } else {
        if (last) {
          const int split = d_.cp * (sp_ ? d_.tp : 1);  // ranks computing the same loss
          (split > 1 ? f.terms.loss / static_cast<double>(split) : f.terms.loss).backward();
        } else {
          at::Tensor g = at::empty(f.output.sizes(), f.output.options());
          ctx_.pp->recv(g, s + 1, tag + 1)->wait();
          torch::autograd::backward({f.output}, {g});
        }
        if (!first) {
          at::Tensor g =
              f.input.grad().defined() ? f.input.grad().contiguous() : at::zeros_like(f.input);
          sends.push_back(ctx_.pp->send(g, s - 1, tag + 1));
          sent.push_back(g);
        }
        if (d_.cp > 1) context_keys_->remove(f.act->segments_self.get());
        f = InFlight{};  // this micro batch's activations are no longer needed
      }
    }
    for (auto& w : sends) w->wait();
    if (d_.pp == 1) return total;
    // Every stage reports the pipeline's loss (the last stage computed it).
    at::Tensor numbers = at::zeros({2}, at::TensorOptions(at::kDouble).device(ctx_.device));
    if (last && total.sum.defined()) {
      numbers[0].copy_(total.sum.to(at::kDouble));
      numbers[1].fill_(static_cast<double>(total.count));
    }
    ctx_.pp->broadcast(numbers, d_.pp - 1);
    total.sum = numbers[0];
    total.count = static_cast<std::int64_t>(numbers[1].item<double>());
    return total;
  }

  // The whole of a hidden state split over `group` along the tokens, for the head, which every
  // rank of the group then computes alike: each back-propagates 1/size of the loss (schedule), so
  // its share's gradient is scaled back by the group size here.
  static at::Tensor whole_for_head(const at::Tensor& h, const CommunicatorPtr& group) {
    at::Tensor whole = collectives::gather_along(h, 1, group);
    const double n = group->size();
    if (whole.requires_grad()) whole.register_hook([n](const at::Tensor& g) { return g * n; });
    return whole;
  }

  static void all_reduce_grads(const std::vector<Param*>& params, const CommunicatorPtr& group) {
    std::vector<at::Tensor> tensors;
    for (const Param* q : params) tensors.push_back(q->tensor);
    all_reduce_gradients(tensors, *group);
  }

  // The distributed optimizer's gradient reduction: every local parameter's gradient, padded to
  // n x chunk, reduce-scattered over dp x cp (fp32) into the shards' gradients.
  void reduce_scatter_grads(const std::vector<Param*>& params) {
    const int n = dp_cp_->size();
    std::int64_t total = 0;
    for (Param* q : params) total += q->chunk;
    auto opts = at::TensorOptions().dtype(at::kFloat).device(ctx_.device);
    at::Tensor input = at::zeros({n, total}, opts);
    std::int64_t off = 0;
    for (Param* q : params) {
      const at::Tensor& g = q->tensor.grad();
      if (g.defined()) {
        at::Tensor flat = at::constant_pad_nd(g.reshape(-1).to(at::kFloat),
                                              {0, n * q->chunk - q->tensor.numel()});
        input.slice(1, off, off + q->chunk).copy_(flat.view({n, q->chunk}));
      }
      off += q->chunk;
    }
    at::Tensor mine = input.view(-1);
    if (n > 1) {
      mine = at::empty({total}, opts);
      dp_cp_->reduce_scatter(mine, input.view(-1), ReduceOp::Sum);
    }
    off = 0;
    for (Param* q : params) {
      q->shard.mutable_grad().copy_(mine.slice(0, off, off + (q->hi - q->lo)));
      off += q->chunk;
    }
  }

  // Every rank's dp x cp shards of `shards` (one a local parameter, in params_ order) gathered in
  // one collective: the whole (tensor-parallel part of the) tensor for each, at its local shape.
  std::vector<at::Tensor> gather_shards_of(const std::vector<at::Tensor>& shards) {
    at::NoGradGuard no_grad;
    const int n = dp_cp_->size();
    std::vector<const Param*> local;
    for (const auto& q : params_)
      if (q.local) local.push_back(&q);
    std::vector<at::Tensor> parts;  // padded to the common share
    std::int64_t total = 0;
    for (std::size_t k = 0; k < local.size(); ++k) {
      parts.push_back(
          at::constant_pad_nd(shards[k].detach(), {0, local[k]->chunk - shards[k].numel()}));
      total += local[k]->chunk;
    }
    if (parts.empty()) return {};
    const at::Tensor mine = at::cat(parts);
    at::Tensor all = at::empty({n * total}, mine.options());
    dp_cp_->all_gather(all, mine);
    const at::Tensor rows = all.view({n, total});
    std::vector<at::Tensor> out;
    std::int64_t off = 0;
    for (const Param* q : local) {
      out.push_back(rows.slice(1, off, off + q->chunk)
                        .reshape(-1)
                        .slice(0, 0, q->tensor.numel())
                        .view(q->tensor.sizes()));
      off += q->chunk;
    }
    return out;
  }

  // After the update: every rank's updated shards into every rank's parameters.
  void gather_shards() {
    at::NoGradGuard no_grad;
    const std::vector<at::Tensor> whole = gather_shards_of(optimized_tensors());
    std::size_t k = 0;
    for (auto& q : params_)
      if (q.local) q.tensor.copy_(whole[k++]);
  }

  void log_placement() const {
    std::int64_t total = 0, local = 0;
    for (const auto& q : params_) {
      std::int64_t whole = 1;
      for (auto s : q.shape) whole *= s;
      total += whole;
      if (q.local) local += q.tensor.numel();
    }
    const auto [first, last] = stages_[static_cast<std::size_t>(me_.pp)];
    logger()->info(
        "megatron_tpppcp: rank {} (tp {}, cp {}, dp {}, pp {}) holds blocks [{}, {}) and {} of "
        "the model's {} parameters",
        ctx_.world_rank, me_.tp, me_.cp, me_.dp, me_.pp, first, last, local, total);
  }

  std::string pointer_;
  int tp_, pp_, cp_, dp_;
  std::vector<std::int64_t> layers_;
  bool distributed_optimizer_option_, sequence_parallel_option_, decay_1d_;
  bool distributed_optimizer_ = false;  // the option, when there is more than one dp x cp rank
  bool sp_ = false;                     // sequence parallelism: the option, with tp > 1
  Degrees d_;
  Coordinates me_;
  ParallelContext ctx_;
  CommunicatorPtr dp_cp_;
  std::shared_ptr<ContextKeys> context_keys_;  // cp > 1: self-attention layouts in flight
  std::vector<std::pair<std::int64_t, std::int64_t>> stages_;
  std::vector<Param> params_;
};

void factories(PluginFactories& f) {
  f.create_parallelism = [](const PluginConfig& cfg) -> std::unique_ptr<Parallelism> {
    return std::make_unique<Megatron>(cfg);
  };
}

}  // namespace
}  // namespace wanhost::plugins::megatron_tpppcp

WANHOST_PLUGIN("megatron_tpppcp", "0.1.0", wanhost::plugins::megatron_tpppcp::factories)
