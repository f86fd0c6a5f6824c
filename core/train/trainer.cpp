// The training loop. One process runs one rank; every rank runs this same code.
//
// Determinism: the sample order is a seeded permutation per (stage, epoch); a sample's timestep
// and noise come from (seed, global step, stream position). Nothing else is random after
// initialisation, so a checkpoint needs no RNG state to resume exactly: the step counters pin
// down the data position, the LR and every random draw.
#include "trainer.hpp"

#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <utility>

#include "../logging/logging.hpp"
#include "../plugin/plugin_call.hpp"
#include "../plugin/registry.hpp"
#include "../run/components.hpp"
#include "../util/device_timing.hpp"
#include "../util/exit_codes.hpp"
#include "../util/faults.hpp"
#include "../util/files.hpp"
#include "../util/host_read.hpp"
#include "../util/kernel_profile.hpp"
#include "../util/step_graph.hpp"
#include "../util/stop_signal.hpp"
#include "checkpoint.hpp"
#include "communication.hpp"
#include "lr_schedule.hpp"
#include "metrics.hpp"
#include "resume_check.hpp"
#include "sample_order.hpp"
#include "step_graphs.hpp"
#include "step_inputs.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/compute_weights.hpp"
#include "wanhost/kit/fp8.hpp"
#include "wanhost/kit/json_file.hpp"
#include "wanhost/kit/safetensors.hpp"
#include "wanhost/log.hpp"

namespace fs = std::filesystem;

namespace wanhost::core {
namespace {

// Where training stands; this is what a checkpoint's trainer_state.json holds.
struct Progress {
  std::size_t stage = 0;
  long stage_step = 0;        // steps completed in `stage`
  long global_step = 0;       // steps completed in all stages
  long skipped = 0;           // steps skipped for non-finite values (policy "skip")
  long skipped_in_a_row = 0;  // the current run of consecutive skipped steps
};

Json to_json(const Progress& p) {
  return {{"stage", p.stage},
          {"stage_step", p.stage_step},
          {"global_step", p.global_step},
          {"skipped_steps", p.skipped},
          {"consecutive_skipped_steps", p.skipped_in_a_row}};
}

struct StageStats {
  std::string name;
  std::vector<double> losses;
  double seconds = 0;
  double samples = 0, tokens = 0;
};

class ProgressBar {
 public:
  explicit ProgressBar(bool on) : on_(on) {}
  void update(const std::string& stage, long step, long total, double loss, double lr, double it_s,
              double packs, double pack_efficiency) {
    if (!on_) return;
    const int width = 30;
    const int filled = total > 0 ? static_cast<int>(width * step / total) : 0;
    std::string bar(filled, '=');
    if (filled < width) bar += '>' + std::string(width - filled - 1, ' ');
    std::fprintf(stderr, "\r[%s] %ld/%ld [%s] loss %.4f lr %.2e %.1f it/s %.0f packs %.0f%% ",
                 stage.c_str(), step, total, bar.c_str(), loss, lr, it_s, packs,
                 100.0 * pack_efficiency);
    std::fflush(stderr);
  }
  void finish() {
    if (on_) std::fprintf(stderr, "\n");
  }
  bool on() const { return on_; }

 private:
  bool on_;
};

// A sample's tokens in a packed batch: the model pads each sample's run to a multiple of
// ParallelContext::token_multiple.
std::int64_t padded_tokens(std::int64_t tokens, std::int64_t multiple) {
  return multiple > 1 ? (tokens + multiple - 1) / multiple * multiple : tokens;
}

// Keys a stage captures at most (stage 2's captions give 4 kept-row counts; each graph's pool
// shares memory with the others, its inputs and results do not).
constexpr std::size_t kMaxStepGraphs = 8;

// Where a step's LR sits in the host numbers a step copies to the device (after tokens, FLOPs,
// packs and padded tokens).
constexpr std::int64_t kStepLr = 4;

double mean_of(const std::vector<double>& v, std::size_t from, std::size_t n) {
  double s = 0;
  std::size_t k = 0;
  for (std::size_t i = from; i < v.size() && k < n; ++i, ++k) s += v[i];
  return k ? s / static_cast<double>(k) : std::nan("");
}

class Trainer {
 public:
  Trainer(const RunConfig& cfg, const TrainOptions& opts, const LaunchEnv& env, PluginRegistry& reg)
      : cfg_(cfg), opts_(opts), env_(env), builder_(reg), out_(cfg.run.out) {}

  int run();

 private:
  // Calls into the run's plugins, each named when it throws (core/plugin/plugin_call.hpp).
  template <class F>
  decltype(auto) parallelism(const char* call, F&& f) {
    return call_plugin(cfg_.parallelism.plugin, "parallelism", call, std::forward<F>(f));
  }
  void prepare_run_folder();
  std::optional<std::string> checkpoint_to_resume() const;
  void check_resume_settings(const std::string& dir) const;
  void resume_from(const std::string& dir);
  void start_stage(std::size_t k, bool fresh_run_start);
  StepInputs make_inputs(const StageConfig& stage, DataSource& data, SampleOrder& order,
                         long stage_step, long global_step);
  at::Tensor launch_step(const StageConfig& stage, const StepInputs& in, const at::Tensor& counts,
                         double lr, bool update_first);
  void train_step(const StageConfig& stage, StepPrefetcher& inputs);
  bool cuda_graphs_usable() const;
  // The stage's updates read the LR on the device: with graphs_, on an SDK 2.6 parallelism (a
  // captured step takes each replay's LR, so the LR is not part of a step's key).
  bool lr_on_device() const { return graphs_ && c_.parallelism_sdk_minor >= 6; }
  void profiled_step(const StageConfig& stage, StepPrefetcher& inputs);
  void save_checkpoint();
  void save_fp8_histories(const std::string& state_dir) const;
  void load_fp8_histories(const std::string& state_dir) const;
  [[noreturn]] void stop_after_write_error();
  void export_weights();
  void say_if_weights_have_no_copies() const;
  void say_how_fp8_feed_forwards_ran(std::int64_t fused) const;
  void say_how_fp8_input_gradients_were_summed(std::int64_t summed, std::int64_t in_products) const;
  void say_how_fp8_scales_were_made(std::int64_t delayed) const;
  void summary() const;
  bool rank0() const { return env_.rank == 0; }

  const RunConfig& cfg_;
  TrainOptions opts_;
  LaunchEnv env_;
  ComponentBuilder builder_;
  std::string out_;
  RunComponents c_;
  Progress p_;
  std::unique_ptr<CheckpointStore> store_;
  std::unique_ptr<MetricsLog> metrics_;
  std::unique_ptr<TensorBoardWriter> tb_;
  std::unique_ptr<ProgressBar> bar_;
  std::vector<StageStats> stats_;
  std::string last_checkpoint_;
  double peak_tflops_ = 0;  // MFU denominator (0: none)
  bool profiling_ = false;  // the step running now is under the profiler (its metrics say so)
  std::unique_ptr<StepGraphs> graphs_;  // run.cuda_graphs: the stage's captured steps
  bool exported_ = false;               // the Diffusers export was written
  std::string write_error_;             // a failed metrics/log write on this rank: the run stops
};

// Folders and this rank's log file. config.resolved.json is written once the run is accepted
// (after a resume has loaded), so a refused resume leaves the folder as it was.
void Trainer::prepare_run_folder() {
  if (rank0()) fs::create_directories(fs::path(out_) / "checkpoints");
  c_.ctx.world->barrier();
  add_rank_log_file(out_);
}

// Which checkpoint this run continues from (nullopt: a fresh start). Reads only; every refusal
// comes before anything is written into the run folder.
std::optional<std::string> Trainer::checkpoint_to_resume() const {
  if (opts_.resume && !opts_.resume->empty()) {
    std::string why;
    if (!CheckpointStore::verify(*opts_.resume, &why))
      throw ConfigError("",
                        "--resume " + *opts_.resume + ": not a complete checkpoint (" + why + ")");
    return *opts_.resume;
  }
  if (!opts_.resume) {
    if (store_->holds_checkpoints())
      throw UsageError("the run folder " + out_ +
                       " already holds checkpoints: pass --resume to continue that run, or "
                       "--out DIR to start a new one (nothing was changed)");
    return std::nullopt;
  }
  std::vector<std::string> refused;
  std::optional<std::string> dir = store_->find_latest(&refused);
  if (!dir && !refused.empty()) {
    std::string msg = "--resume: none of the " + std::to_string(refused.size()) +
                      " checkpoint(s) in " + store_->root() +
                      " verifies, so there is nothing to continue from (nothing was changed):";
    for (const auto& r : refused) msg += "\n  " + r;
    throw UsageError(msg +
                     "\nRestore a good copy, or start a new run with --out DIR; a fresh start "
                     "in this folder needs the damaged checkpoints moved away first");
  }
  if (!dir)
    logger()->warn(
        "--resume: {} holds no checkpoint; starting from scratch (as a requeued job "
        "that never saved one does)",
        store_->root());
  return dir;
}

// The settings a checkpoint's trajectory depends on must be unchanged (resume_check.hpp).
void Trainer::check_resume_settings(const std::string& dir) const {
  const fs::path saved_path = fs::path(dir) / "config.resolved.json";
  const Json saved = read_json_file(saved_path.string());
  const Json state = read_json_file((fs::path(dir) / "trainer_state.json").string());
  const ResumeChanges changes =
      compare_resume_settings(saved, cfg_.resolved, state.at("stage").get<std::size_t>());
  if (!changes.refused.empty()) {
    std::string msg = "--resume " + dir +
                      ": the checkpoint was trained with other values of settings that decide "
                      "its trajectory; resume with its values (" +
                      saved_path.string() + "), or start a new run with --out DIR:";
    for (const auto& r : changes.refused) msg += "\n  " + r;
    throw ConfigError(changes.first_refused, msg);
  }
  const auto& changed = changes.altering;
  if (!changed.empty() && rank0()) {
    std::string lines;
    for (const auto& c : changed) lines += "\n  " + c;
    logger()->warn(
        "resuming {} with {} changed setting(s) that alter the training from here on (the "
        "checkpoint's values are in {}):{}",
        dir, changed.size(), saved_path.string(), lines);
  }
}

void Trainer::start_stage(std::size_t k, bool run_start) {
  const StageConfig& stage = cfg_.stages[k];
  // The run's first stage has the model build_run() made (with its init weights). Later stages
  // with new weights get a fresh model: a sharding plugin has taken the current one's weights
  // apart.
  if (!run_start && stage.init != "previous") {
    c_.model = build_stage_model(cfg_, k, builder_, c_.ctx);
    parallelism("attach", [&] { c_.parallelism->attach(*c_.model); });
  }
  if (run_start || !stage.carry_optimizer)
    parallelism("configure_optimizer",
                [&] { c_.parallelism->configure_optimizer(stage.optimizer); });
}

void Trainer::resume_from(const std::string& dir) {
  const Json state = read_json_file((fs::path(dir) / "trainer_state.json").string());
  p_.stage = state.at("stage");
  p_.stage_step = state.at("stage_step");
  p_.global_step = state.at("global_step");
  p_.skipped = state.value("skipped_steps", 0L);
  p_.skipped_in_a_row = state.value("consecutive_skipped_steps", 0L);
  if (p_.stage >= cfg_.stages.size())
    throw ConfigError("/stages", "the checkpoint " + dir + " is in stage " +
                                     std::to_string(p_.stage) + ", but this manifest has only " +
                                     std::to_string(cfg_.stages.size()) + " stage(s)");
  parallelism("configure_optimizer",
              [&] { c_.parallelism->configure_optimizer(cfg_.stages[p_.stage].optimizer); });
  parallelism("load_state",
              [&] { c_.parallelism->load_state(*c_.model, (fs::path(dir) / "state").string()); });
  load_fp8_histories((fs::path(dir) / "state").string());
  logger()->info("resumed from {} (stage {} '{}', step {} of the stage, global step {})", dir,
                 p_.stage, cfg_.stages[p_.stage].name, p_.stage_step, p_.global_step);
}

// run.fp8 = delayed: each rank's amax histories (its own inputs and gradients), so that a
// resumed run scales its FP8 operands as the run it continues would have.
std::string fp8_histories_file(const std::string& state_dir, int rank) {
  return (fs::path(state_dir) / ("fp8_history-rank" + std::to_string(rank) + ".safetensors"))
      .string();
}

std::vector<std::pair<std::string, at::Tensor>> named_weights(Model& model) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : model.module().named_parameters(true)) out.emplace_back(p.key(), p.value());
  return out;
}

void Trainer::save_fp8_histories(const std::string& state_dir) const {
  if (cfg_.run.fp8 != Fp8Recipe::delayed) return;
  const auto state = fp8_history_state(named_weights(*c_.model), c_.ctx.device);
  if (!state.empty()) safetensors::save(fp8_histories_file(state_dir, env_.rank), state);
}

void Trainer::load_fp8_histories(const std::string& state_dir) const {
  if (cfg_.run.fp8 != Fp8Recipe::delayed) return;
  const std::string path = fp8_histories_file(state_dir, env_.rank);
  if (!fs::exists(path)) {
    logger()->warn(
        "run.fp8=delayed: the checkpoint holds no FP8 amax histories for rank {} (saved without "
        "delayed scaling or by another number of ranks): the first step after the resume scales "
        "each operand by its own max|x|",
        env_.rank);
    return;
  }
  const std::size_t layers = load_fp8_history_state(safetensors::File::open(path).load_all(),
                                                    named_weights(*c_.model), c_.ctx.device);
  logger()->info("run.fp8=delayed: amax histories of {} layers restored from {}", layers, path);
}

void Trainer::save_checkpoint() {
  Json meta = {{"trainer", to_json(p_)},
               {"world_size", env_.world_size},
               {"plugins", Json::object()},
               {"wanhost_version", WANHOST_VERSION}};
  for (const PluginConfig* pc : cfg_.plugin_configs())
    if (const PluginManifest* m = builder_.registry().find(pc->plugin))
      meta["plugins"][pc->plugin] = m->version;
  last_checkpoint_ = store_->save(
      p_.global_step,
      [&](const std::string& dir) {
        if (rank0()) {
          write_file_atomic((fs::path(dir) / "trainer_state.json").string(),
                            to_json(p_).dump(2) + "\n");
          write_file_atomic((fs::path(dir) / "config.resolved.json").string(),
                            cfg_.resolved.dump(2) + "\n");
        }
        c_.ctx.world->barrier();
        if (rank0()) fs::create_directories(fs::path(dir) / "state");
        c_.ctx.world->barrier();
        parallelism("save_state", [&] {
          c_.parallelism->save_state(*c_.model, (fs::path(dir) / "state").string());
        });
        save_fp8_histories((fs::path(dir) / "state").string());
      },
      meta, cfg_.checkpoint.keep_last);
  logger()->info("checkpoint saved: {}", last_checkpoint_);
}

// A metrics or log write failed on some rank (most likely a full disk): save what can be saved
// (a checkpoint of the step just trained, which may fail too: the last good one stays intact),
// then stop with an error (exit 1).
void Trainer::stop_after_write_error() {
  bar_->finish();
  std::string saved = "the last good checkpoint is " +
                      (last_checkpoint_.empty() ? std::string("none") : last_checkpoint_);
  try {
    save_checkpoint();
    saved = "saved a checkpoint of global step " + std::to_string(p_.global_step) + " (" +
            last_checkpoint_ + ")";
  } catch (const std::exception& e) {
    saved = "a checkpoint could not be saved either (" + std::string(e.what()) + "); " + saved;
  }
  throw std::runtime_error(
      (write_error_.empty() ? std::string("another rank could not write its log or metrics (see "
                                          "its log or the console)")
                            : write_error_) +
      "; stopped after global step " + std::to_string(p_.global_step) + ": " + saved +
      ". Free disk space and continue with --resume");
}

// This rank's share of a step's samples on the host, collated into micro batches and noised.
// Runs on the prefetcher's worker thread (run.prefetch), so it reads nothing that the training
// thread changes: the step counters come as arguments.
StepInputs Trainer::make_inputs(const StageConfig& stage, DataSource& data, SampleOrder& order,
                                long stage_step, long global_step) {
  const long gb = stage.global_batch;
  const int dp = c_.ctx.dp->size(), dp_rank = c_.ctx.dp->rank();
  const long local = gb / dp;
  CollateOptions copts;
  copts.text_rows = stage.text_rows;
  copts.micro_batch = stage.micro_batch;
  // Token budgets (seq_packer) count what the model will process: padded tokens.
  const Model* model = c_.model.get();
  const std::int64_t multiple = c_.ctx.token_multiple;
  copts.tokens = [model, multiple](const PackSegment& grid) {
    return padded_tokens(model->tokens(grid), multiple);
  };
  StepInputs in;
  in.stage_step = stage_step;
  in.global_step = global_step;
  std::vector<Sample> samples;
  for (long j = 0; j < local; ++j) {
    const std::int64_t position = stage_step * gb + dp_rank * local + j;
    samples.push_back(call_plugin(stage.data.plugin, "data_source", "get",
                                  [&] { return data.get(order.at(position)); }));
    Sample& s = samples.back();
    // The stream position, unique per sample of the stage; run.randomness
    // shared_across_data_parallel counts only within this rank's share, so every data-parallel
    // rank draws the same keys (the reference Megatron path's same-seed-everywhere behaviour).
    s.key = cfg_.run.shared_randomness ? stage_step * local + j : position;
    const PackSegment grid{0, s.latent.size(1), s.latent.size(2), s.latent.size(3)};
    in.tokens += static_cast<double>(c_.model->tokens(grid));
    in.flops += 3.0 * c_.model->forward_flops(grid, s.text.size(0));
  }
  std::vector<Batch> micro = call_plugin(cfg_.collator.plugin, "collator", "collate", [&] {
    return c_.collator->collate(std::move(samples), copts);
  });
  in.packs = static_cast<double>(micro.size());
  in.padded_tokens = in.tokens;
  for (const Batch& batch : micro)
    for (std::int64_t i = 0; batch.packed() && i < batch.batch_size(); ++i) {
      const std::int64_t t = model->tokens(batch.grid(i));
      in.padded_tokens += static_cast<double>(padded_tokens(t, multiple) - t);
    }
  for (const Batch& batch : micro)
    in.micro.push_back(call_plugin(cfg_.scheduler.plugin, "scheduler", "add_noise", [&] {
      return c_.scheduler->add_noise(batch, cfg_.run.seed, global_step);
    }));
  return in;
}

// run.cuda_graphs on this run: a GPU, one process, plugins of SDK 2.5 (Model::graph_key, a
// parallelism that says its steps can be captured; 2.4's update before the host's read comes
// with it), no test faults.
bool Trainer::cuda_graphs_usable() const {
  if (!cfg_.run.cuda_graphs) return false;
  std::string why;
  if (!c_.ctx.device.is_cuda())
    why = "the run's device is " + c_.ctx.device.str() + ", not a GPU";
  else if (env_.world_size > 1)
    why = "the run has " + std::to_string(env_.world_size) +
          " processes (whole-step graphs are captured on one GPU only so far)";
  else if (c_.model_sdk_minor < 5)
    why = "the model plugin '" + cfg_.model.plugin + "' was built against SDK 2." +
          std::to_string(c_.model_sdk_minor) + " (graphs need 2.5: Model::graph_key)";
  else if (c_.parallelism_sdk_minor < 5 || !c_.parallelism->steps_capturable())
    why = "the parallelism plugin '" + cfg_.parallelism.plugin +
          "' does not say its steps can be captured (Parallelism::steps_capturable, SDK 2.5)";
  else if (faults_configured())
    why = "WANHOST_FAULT is set (faults live in host code a replay does not run)";
  if (!why.empty()) {
    if (rank0()) logger()->warn("run.cuda_graphs: every step runs eagerly: {}", why);
    return false;
  }
  return true;
}

// The device part of a step, nothing read back: zero the gradients, forward and backward of
// every micro batch, the gradient norm (and clip), the step's numbers summed over the
// data-parallel group (ranks sharing samples through TP/CP hold the same numbers and are not
// counted twice) and, for SDK 2.4 plugins (`update_first`), the update, skipped on the device
// when the loss or the gradient norm is not finite. `counts`: the host's numbers (tokens, FLOPs,
// packs, padded tokens; samples are added from the losses) and the LR (kStepLr, which the update
// reads from there when lr_on_device()), pinned on a GPU so that their copy does not wait. Returns
// the tensor the host reads: loss sum, samples, tokens, FLOPs, packs, padded tokens, gradient norm.
at::Tensor Trainer::launch_step(const StageConfig& stage, const StepInputs& in,
                                const at::Tensor& counts, double lr, bool update_first) {
  parallelism("zero_grad", [&] { c_.parallelism->zero_grad(); });
  // Weights change between steps only (optimizer step, load): their compute-dtype and FP8 copies
  // are made again once.
  weights_changed();
  // run.fp8 = delayed: the step count that picks each amax history's slot (on the device: a
  // replayed step advances it too).
  fp8_step_begins(c_.ctx.device);
  StepLoss sl = parallelism("forward_backward", [&] {
    return c_.parallelism->forward_backward(
        *c_.model, in.micro, [&](const at::Tensor& pred, const NoisedBatch& nb) {
          return call_plugin(cfg_.scheduler.plugin, "scheduler", "loss",
                             [&] { return c_.scheduler->loss(pred, nb, stage.global_batch); });
        });
  });
  if (!sl.sum.defined())
    sl.sum = at::zeros({}, at::TensorOptions(at::kDouble).device(c_.ctx.device));
  step_faults(p_.global_step + 1, sl.sum, c_.model->module());  // test-only (util/faults.hpp)
  const at::Tensor grad_norm = parallelism("reduce_and_clip_gradients", [&] {
    return c_.parallelism->reduce_and_clip_gradients(stage.clip_grad_norm);
  });
  const auto f64 = at::TensorOptions(at::kDouble).device(c_.ctx.device);
  const at::Tensor host_numbers = counts.to(c_.ctx.device, /*non_blocking=*/true);
  at::Tensor totals = at::cat({sl.sum.detach().to(f64).reshape({1}),
                               at::full({1}, static_cast<double>(sl.count), f64),
                               host_numbers.narrow(0, 0, kStepLr)});
  c_.ctx.dp->all_reduce(totals, ReduceOp::Sum);
  if (update_first) {
    fault_point("step.before_optimizer", p_.global_step + 1);
    const at::Tensor skip = at::logical_not(at::isfinite(totals[0]) & at::isfinite(grad_norm));
    if (lr_on_device()) {
      // Rounded to float32 on the device as the fused AdamW rounds a host LR on a GPU.
      const at::Tensor device_lr = host_numbers[kStepLr].to(at::kFloat);
      parallelism("optimizer_step_unless_device_lr",
                  [&] { c_.parallelism->optimizer_step_unless_device_lr(device_lr, skip); });
    } else {
      parallelism("optimizer_step_unless",
                  [&] { c_.parallelism->optimizer_step_unless(lr, skip); });
    }
  }
  return at::cat({totals, grad_norm.detach().to(f64).reshape({1})});
}

void Trainer::train_step(const StageConfig& stage, StepPrefetcher& inputs) {
  const long gb = stage.global_batch;
  const auto t0 = std::chrono::steady_clock::now();
  double data_wait_s = 0;
  StepInputs in = inputs.take(p_.stage_step, p_.global_step, &data_wait_s);
  const double input_make_s = in.make_s, input_to_device_s = in.to_device_s;

  // The step on the device: nothing below reads a value back until the step's numbers are
  // reduced over the ranks (one host synchronisation a step). The host's numbers reach the
  // device without a synchronisation (pinned, asynchronous copy).
  const double lr = learning_rate(stage, p_.stage_step);
  at::Tensor counts =
      at::tensor({in.tokens, in.flops, in.packs, in.padded_tokens, lr}, at::kDouble);
  if (!c_.ctx.device.is_cpu()) counts = counts.pin_memory();
  // SDK 2.4 plugins take the update before the host reads anything: a step whose loss or gradient
  // norm is not finite is skipped on the device (weights and optimizer state unchanged), and the
  // read below overlaps the update. Older plugins get the update after the read.
  const bool update_first = c_.parallelism_sdk_minor >= 4;
  auto launch = [&](const StepInputs& step_in, const at::Tensor& step_counts) {
    return launch_step(stage, step_in, step_counts, lr, update_first);
  };
  at::Tensor readback;
  std::string step_mode = "eager";
  std::optional<std::string> key;  // before the move
  if (graphs_)
    key = step_graph_key(in, *c_.model, lr_on_device() ? std::nullopt : std::optional<double>(lr));
  // A profiled step is a replay when its key's graph is captured (what replayed steps spend,
  // launch gaps included), else eager: neither captures nor counts as a key's eager step.
  if (graphs_ && (!profiling_ || graphs_->replays(key))) {
    const long captured = graphs_->captures(), replayed = graphs_->replays();
    readback = graphs_->run(key, std::move(in), counts, launch);
    if (graphs_->captures() > captured)
      step_mode = "captured";
    else if (graphs_->replays() > replayed)
      step_mode = "replayed";
  } else {
    readback = launch(in, counts);
  }
  // The one read of the step on the host: loss sum, sample count, tokens, FLOPs, packs, padded
  // tokens, gradient norm.
  const at::Tensor host = read_on_host(readback);
  const double* h = host.data_ptr<double>();
  const double loss = h[0] / std::max(1.0, h[1]), tokens = h[2], flops = h[3];
  const double packs = h[4], pack_efficiency = h[5] > 0 ? tokens / h[5] : 1.0;
  const double grad_norm = h[6];

  const bool finite = std::isfinite(loss) && std::isfinite(grad_norm);
  if (!finite && !cfg_.run.skip_nonfinite)
    throw std::runtime_error("non-finite " +
                             std::string(std::isfinite(loss) ? "gradient norm" : "loss") +
                             " at global step " + std::to_string(p_.global_step + 1) + " (stage '" +
                             stage.name + "'); the last good checkpoint is " +
                             (last_checkpoint_.empty() ? std::string("none") : last_checkpoint_) +
                             "; set run.nonfinite=skip to skip such steps");
  if (!update_first) {
    fault_point("step.before_optimizer", p_.global_step + 1);
    if (finite) parallelism("optimizer_step", [&] { c_.parallelism->optimizer_step(lr); });
  }
  if (finite) {
    p_.skipped_in_a_row = 0;
  } else {
    ++p_.skipped;
    ++p_.skipped_in_a_row;
    const long limit = cfg_.run.nonfinite_max_consecutive;
    if (p_.skipped_in_a_row > limit)
      throw std::runtime_error(
          "non-finite " + std::string(std::isfinite(loss) ? "gradient norm" : "loss") +
          " at global step " + std::to_string(p_.global_step + 1) + " (stage '" + stage.name +
          "'): " + std::to_string(p_.skipped_in_a_row) +
          " steps in a row were non-finite, more than run.nonfinite_max_consecutive = " +
          std::to_string(limit) +
          " allows; stopped like run.nonfinite=abort (the weights are "
          "most likely broken). The last good checkpoint is " +
          (last_checkpoint_.empty() ? std::string("none") : last_checkpoint_));
    if (rank0())
      logger()->warn(
          "non-finite {} at global step {} (stage '{}'): step skipped ({} so far, {} in a row "
          "of at most {})",
          std::isfinite(loss) ? "gradient norm" : "loss", p_.global_step + 1, stage.name,
          p_.skipped, p_.skipped_in_a_row, limit);
  }
  ++p_.stage_step;
  ++p_.global_step;

  const double secs = seconds_since(t0);
  StageStats& st = stats_[stage.index];
  st.losses.push_back(loss);
  st.seconds += secs;
  st.samples += static_cast<double>(gb);
  st.tokens += tokens;
  if (rank0()) {
    Json rec = {
        {"stage", stage.name},
        {"stage_index", stage.index},
        {"step", p_.global_step},
        {"stage_step", p_.stage_step},
        {"loss", finite ? Json(loss) : Json(nullptr)},
        {"lr", lr},
        {"grad_norm", std::isfinite(grad_norm) ? Json(grad_norm) : Json(nullptr)},
        {"samples", std::llround(h[1])},  // samples trained (the losses' count)
        {"packs", std::llround(packs)},
        {"tokens", std::llround(tokens)},
        {"pack_efficiency", pack_efficiency},
        {"samples_per_s", gb / secs},
        {"tokens_per_s", tokens / secs},
        {"tflops_per_gpu", flops / env_.world_size / secs / 1e12},
        {"mfu", peak_tflops_ > 0 ? Json(flops / env_.world_size / secs / 1e12 / peak_tflops_)
                                 : Json(nullptr)},
        {"peak_mem_gib", peak_memory_gib(c_.ctx.device)},
        {"step_time_s", secs},
        {"data_wait_s", data_wait_s},
        {"input_make_s", input_make_s},
        {"input_to_device_s", input_to_device_s},
        {"skipped_steps", p_.skipped}};
    if (profiling_) rec["profiled"] = true;
    if (graphs_) rec["cuda_graph"] = step_mode;
    try {
      metrics_->write(rec);
      if (tb_) {
        for (const char* key :
             {"loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "tflops_per_gpu"})
          if (rec[key].is_number())
            tb_->scalar(std::string("train/") + key, rec[key].get<double>(), p_.global_step);
        tb_->flush();
      }
    } catch (const std::exception& e) {
      if (write_error_.empty()) write_error_ = e.what();  // the run stops after this step
    }
    const long every = cfg_.logging.every_steps;
    bar_->update(stage.name, p_.stage_step, stage.steps, loss, lr, 1.0 / secs, packs,
                 pack_efficiency);
    if (!bar_->on() && (p_.stage_step % every == 0 || p_.stage_step == stage.steps))
      logger()->info(
          "[{}] step {}/{} (global {}): loss {:.5f}, lr {:.3e}, grad norm {:.4f}, {:.1f} "
          "samples/s, {} samples in {} packs, {:.0f} tokens, pack efficiency {:.1f}%",
          stage.name, p_.stage_step, stage.steps, p_.global_step, loss, lr, grad_norm, gb / secs,
          gb, packs, tokens, 100.0 * pack_efficiency);
  }
}

// logging.profile_step: that global step runs under LibTorch's profiler (Kineto; CUPTI on
// GPUs). Every rank writes its Chrome trace to <run>/profile/trace-rank<r>.json; rank 0 logs the
// device time by kernel class and the longest kernels (operator times on the CPU) and writes them
// to <run>/profile/summary.json. The step's own metrics carry "profiled": true (the profiler
// slows it down).
void Trainer::profiled_step(const StageConfig& stage, StepPrefetcher& inputs) {
  const long step = p_.global_step + 1;
  const std::string dir = out_ + "/profile";
  fs::create_directories(dir);
  profiling_ = true;  // an exception here ends the run, so the flag needs no unwinding
  const KernelProfile prof = profile_kernels(
      c_.ctx.device, [&] { train_step(stage, inputs); }, 1,
      dir + "/trace-rank" + std::to_string(env_.rank) + ".json");
  profiling_ = false;
  if (!rank0()) return;
  Json summary = prof.to_json(50);
  summary["global_step"] = step;
  summary["device"] = c_.ctx.device.str();
  write_file_atomic(dir + "/summary.json", summary.dump(2) + "\n");
  logger()->info("profile of global step {} ({}; trace: {}/trace-rank0.json):\n{}", step,
                 c_.ctx.device.is_cuda() ? "device kernels" : "CPU operators", dir, prof.table(15));
}

// run.kernels.weight_casts=per_step is made by the kit's forward_backward_each: a parallelism
// plugin that runs the model's forward itself makes no copies; say so after a stage's first step.
void Trainer::say_if_weights_have_no_copies() const {
  if (!cfg_.run.kernels.weight_casts_per_step || c_.ctx.compute_dtype == c_.ctx.param_dtype ||
      compute_weight_count() > 0 || !rank0())
    return;
  logger()->warn(
      "run.kernels.weight_casts=per_step: the parallelism plugin '{}' runs the model's forward "
      "itself and makes no one-pass copies (ddp does): the weights are cast where they are used",
      cfg_.parallelism.plugin);
}

// run.fp8 = delayed after a stage's second step (its first scales every operand by its own
// max|x| and starts the histories): how many casts took their scale from a history, or that none
// did (a parallelism plugin whose layers are not the kit's FP8 layers).
void Trainer::say_how_fp8_scales_were_made(std::int64_t delayed) const {
  if (cfg_.run.fp8 != Fp8Recipe::delayed || !rank0()) return;
  if (delayed > 0)
    logger()->info(
        "run.fp8=delayed: {} FP8 casts of the stage's second step took their scale from the last "
        "{} steps' max|x| (no max|x| pass)",
        delayed, cfg_.run.fp8_amax_history);
  else
    logger()->warn(
        "run.fp8=delayed: no FP8 cast of the stage's second step took its scale from a history; "
        "every operand was scaled by its own max|x| (as tensorwise)");
}

// run.kernels.fp8_gelu=fused after a stage's first step: how many feed-forwards ran as one FP8
// operator, or that none did (layers that are not the kit's, e.g. tensor-parallel ones).
void Trainer::say_how_fp8_feed_forwards_ran(std::int64_t fused) const {
  if (!cfg_.run.kernels.fp8_fused_gelu || cfg_.run.fp8 == Fp8Recipe::off || !rank0()) return;
  if (fused > 0)
    logger()->info(
        "run.kernels.fp8_gelu=fused: {} feed-forward passes of the first step ran as one FP8 "
        "operator (GELU and its gradient inside the FP8 casts)",
        fused);
  else
    logger()->warn(
        "run.kernels.fp8_gelu=fused: no feed-forward of the first step ran as one FP8 operator, "
        "GELU runs between the layers: the model hands its feed-forward to the kit's "
        "gelu_feed_forward only with its fused kernels (wan21_dit: on a GPU, fused_kernels not "
        "off), and the operator takes only the kit's replicated layers (not tensor-parallel "
        "ones of '{}') where FP8 applies to both",
        cfg_.parallelism.plugin);
}

// run.kernels.fp8_input_gradients=summed after a stage's first step: how many input gradients
// were summed inside the FP8 products and how many of those by cuBLASLt (a GPU's), or that none
// were (layers that are not the kit's replicated ones, e.g. tensor-parallel ones: said, not
// warned, since summed is the default and such runs are as they were).
void Trainer::say_how_fp8_input_gradients_were_summed(std::int64_t summed,
                                                      std::int64_t in_products) const {
  if (!cfg_.run.kernels.fp8_summed_input_gradients || cfg_.run.fp8 == Fp8Recipe::off || !rank0())
    return;
  if (summed > 0)
    logger()->info(
        "run.kernels.fp8_input_gradients=summed: {} input gradients of the first step were "
        "summed inside the FP8 products of the layers that share an input, {} of them by "
        "cuBLASLt",
        summed, in_products);
  else
    logger()->info(
        "run.kernels.fp8_input_gradients=summed: no input gradient of the first step was summed "
        "inside the FP8 products: the layers that share an input are not the kit's replicated "
        "ones (tensor-parallel layers of '{}'?) or do not all run on FP8",
        cfg_.parallelism.plugin);
}

void Trainer::export_weights() {
  auto weights =
      parallelism("full_weights", [&] { return c_.parallelism->full_weights(*c_.model); });
  if (!rank0()) return;
  std::map<std::string, at::Tensor> cpu;
  std::vector<std::string> broken;
  for (auto& [k, v] : weights) {
    cpu[k] = v.detach().to(at::kCPU);
    if (cpu[k].is_floating_point() && !at::isfinite(cpu[k]).all().item<bool>()) broken.push_back(k);
  }
  // Never export weights a pipeline cannot use.
  if (!broken.empty()) {
    std::string names;
    for (std::size_t i = 0; i < broken.size() && i < 5; ++i) names += (i ? ", " : "") + broken[i];
    throw std::runtime_error("the final weights hold non-finite values in " +
                             std::to_string(broken.size()) + " of " + std::to_string(cpu.size()) +
                             " tensors (" + names + (broken.size() > 5 ? ", ..." : "") +
                             "): nothing was exported. The last checkpoint is " +
                             (last_checkpoint_.empty() ? std::string("none") : last_checkpoint_));
  }
  const fs::path dir = fs::path(out_) / "export";
  fs::create_directories(dir);
  safetensors::save((dir / "diffusion_pytorch_model.safetensors").string(), cpu,
                    {{"format", "pt"}});
  write_file_atomic((dir / "config.json").string(), c_.model->config_json());
  exported_ = true;
  logger()->info("exported the final weights in Diffusers layout to {}", dir.string());
}

void Trainer::summary() const {
  if (!rank0()) return;
  std::string s = "summary:";
  for (const auto& st : stats_) {
    if (st.losses.empty()) continue;
    const std::size_t n = st.losses.size(), w = std::min<std::size_t>(5, n);
    s += "\n  stage " + st.name + ": " + std::to_string(n) + " steps, loss " +
         fmt::format("{:.4f} -> {:.4f} (mean of first/last {} steps)", mean_of(st.losses, 0, w),
                     mean_of(st.losses, n - w, w), w) +
         fmt::format(", {:.1f} samples/s, {:.0f} tokens/s, {:.1f} s", st.samples / st.seconds,
                     st.tokens / st.seconds, st.seconds);
  }
  s += "\n  run folder: " + out_ + " (metrics.jsonl, tensorboard/, logs/, config.resolved.json)";
  if (!last_checkpoint_.empty()) s += "\n  last checkpoint: " + last_checkpoint_;
  if (exported_) s += "\n  Diffusers export: " + out_ + "/export";
  logger()->info("{}", s);
}

int Trainer::run() {
  // `wanhost run` installed the SIGTERM handler before loading plugins (util/stop_signal.hpp);
  // this covers other callers (tests).
  install_stop_signal_handler();
  if (cfg_.run.threads > 0) at::set_num_threads(cfg_.run.threads);
  set_kernel_options(cfg_.run.kernels);
  set_fp8_recipe(cfg_.run.fp8);
  set_fp8_amax_history(cfg_.run.fp8_amax_history);
  set_fp8_fast_accumulation(cfg_.run.fp8_fast_accumulation);
  set_fault_rank(env_.rank);
  const c10::Device device = run_device(cfg_, env_.local_rank);
  CommTimeouts timeouts;
  timeouts.init_s = cfg_.run.comm_init_timeout_s;
  timeouts.collective_s = cfg_.run.comm_timeout_s;
  c_ = build_run(cfg_, builder_, device, make_world_communicator(env_, device, timeouts));
  logger()->info(
      "device {}, master weights {}, compute {}{}; model {} ({} blocks), parallelism {}, world {}",
      c_.ctx.device.str(), c10::toString(c_.ctx.param_dtype), c10::toString(c_.ctx.compute_dtype),
      cfg_.run.fp8 == Fp8Recipe::off
          ? std::string()
          : std::string(", FP8 block linear layers (") + fp8_recipe_name(cfg_.run.fp8) +
                (cfg_.run.fp8 == Fp8Recipe::delayed
                     ? ", scales from " + std::to_string(cfg_.run.fp8_amax_history) +
                           " steps of max|x|"
                     : std::string()) +
                // what the kit was set to (set above), as its products read it
                (fp8_fast_accumulation() == Fp8FastAccumulation::forward
                     ? std::string()
                     : std::string(", fast accumulation in the ") +
                           (fp8_fast_accumulation() == Fp8FastAccumulation::all
                                ? "forward and both gradient products"
                                : "forward and input-gradient products")) +
                ")",
      cfg_.model.plugin, c_.model->num_blocks(), cfg_.parallelism.plugin, env_.world_size);
  if (cfg_.run.fp8 != Fp8Recipe::off)
    logger()->warn(
        "run.fp8 is experimental: in a 300-step loss A/B against bf16 (docs/performance.md, FP8 "
        "linear layers) stage 1 stayed within 0.2 % but stage 2 parted by up to 6 % (bf16 "
        "against bf16 with other kernels: 4 %); compare a run of yours against bf16 before "
        "relying on it{}",
        cfg_.run.fp8 == Fp8Recipe::delayed
            ? ". That A/B was of tensorwise scaling; delayed scaling's (four clips a stage-2 "
              "step) stayed within 0.24 % at stage 1 and parted by up to 3.7 % at stage 2, where "
              "bf16 against bf16 with other kernels parted by 1.7 %"
            : "");
  peak_tflops_ = cfg_.run.peak_tflops;
  if (peak_tflops_ <= 0 && device.is_cuda()) {
    peak_tflops_ = matmul_peak_tflops(device);
    logger()->info("MFU is measured against {:.1f} TFLOP/s (bf16 matrix product on {})",
                   peak_tflops_, device.str());
  }
  store_ =
      std::make_unique<CheckpointStore>((fs::path(out_) / "checkpoints").string(), *c_.ctx.world);
  // Refusals come before anything is written into the run folder.
  const std::optional<std::string> resume_dir = checkpoint_to_resume();
  if (resume_dir) check_resume_settings(*resume_dir);
  prepare_run_folder();
  if (rank0()) store_->remove_stale_temporaries();
  c_.ctx.world->barrier();

  stats_.resize(cfg_.stages.size());
  for (std::size_t k = 0; k < stats_.size(); ++k) stats_[k].name = cfg_.stages[k].name;
  if (resume_dir)
    resume_from(*resume_dir);
  else
    start_stage(0, /*run_start=*/true);
  // The run is accepted: its settings become the folder's.
  if (rank0())
    write_file_atomic((fs::path(out_) / "config.resolved.json").string(),
                      cfg_.resolved.dump(2) + "\n");
  // Every rank's own figure (in its log file; rank 0's on the console): what sharding saves.
  logger()->info("parameters + gradients + optimizer state on this rank: {:.3f} MiB",
                 static_cast<double>(c_.parallelism->state_bytes()) / (1024.0 * 1024.0));
  const long profile_step = cfg_.logging.profile_step;
  if (profile_step > 0 && profile_step <= p_.global_step)
    logger()->warn(
        "logging.profile_step {}: the resumed run starts after that step; no step runs "
        "under the profiler",
        profile_step);
  if (opts_.stop_after_steps && p_.global_step >= *opts_.stop_after_steps) {
    logger()->info("already at global step {} (--stop-after-steps {}): nothing to train",
                   p_.global_step, *opts_.stop_after_steps);
    return 0;
  }
  if (rank0()) {
    metrics_ = std::make_unique<MetricsLog>(out_, p_.global_step);
    // A resumed run marks where it starts, so TensorBoard drops the interrupted run's later points.
    if (cfg_.logging.tensorboard)
      tb_ = std::make_unique<TensorBoardWriter>(out_, resume_dir ? p_.global_step + 1 : 0);
  }
  const std::string& progress = cfg_.logging.progress;
  bar_ = std::make_unique<ProgressBar>(rank0() &&
                                       (progress == "on" || (progress == "auto" && isatty(2))));

  // A SIGTERM while the run was being built: stop before training (nothing new to save).
  if (any_rank(*c_.ctx.world, c_.ctx.device, stop_signal_received())) {
    logger()->warn(
        "SIGTERM before the first step: stopped at global step {}; continue with "
        "--resume",
        p_.global_step);
    return kExitPreempted;
  }
  const long every = cfg_.checkpoint.every_steps;
  for (std::size_t k = p_.stage; k < cfg_.stages.size(); ++k) {
    const StageConfig& stage = cfg_.stages[k];
    if (k != p_.stage) {  // entering a new stage (not the one a resume landed in)
      p_.stage = k;
      p_.stage_step = 0;
      start_stage(k, false);
    }
    if (p_.stage_step >= stage.steps) continue;
    DataSource& data = *c_.data[k];
    SampleOrder order(cfg_.run.seed, k, data.size());
    logger()->info("stage {} '{}': {} steps, global batch {}, micro batch {}, data: {}", k,
                   stage.name, stage.steps, stage.global_batch, stage.micro_batch, data.describe());
    // Destroyed before `order`, which its worker uses.
    StepPrefetcher inputs(
        [&](long stage_step, long global_step) {
          return make_inputs(stage, data, order, stage_step, global_step);
        },
        c_.ctx.device, stage.steps - 1, cfg_.run.prefetch,
        /*lengths_on_host=*/c_.model_sdk_minor >= 4);
    // run.cuda_graphs: the stage's steps run on a stream of their own (a graph is captured on
    // the stream its key's eager steps warmed up); graphs hold this stage's model and optimizer.
    std::optional<SideStreamScope> graph_stream;
    if (cuda_graphs_usable()) {
      graph_stream.emplace(c_.ctx.device);
      graphs_ = std::make_unique<StepGraphs>(c_.ctx.device, kMaxStepGraphs);
      if (!lr_on_device() && stage.lr_schedule.type != "constant" && rank0())
        logger()->warn(
            "run.cuda_graphs: the parallelism plugin '{}' was built against SDK 2.{} and takes "
            "the LR as a host number (2.6 reads it on the device): stage '{}''s steps of a "
            "changing LR ({}) run eagerly",
            cfg_.parallelism.plugin, c_.parallelism_sdk_minor, stage.name, stage.lr_schedule.type);
      if (stage.text_rows == 0 && rank0())
        logger()->warn(
            "run.cuda_graphs: stage '{}' pads text to each batch's longest caption "
            "(stages.{}.text_rows = 0), so its steps change shape and few are replayed; set "
            "text_rows to a fixed count of at least the longest caption (wan21_dit pads to its "
            "text_len itself, so the arithmetic does not change)",
            stage.name, k);
    }
    bool first_step_checked = false;
    const std::int64_t fused_before_stage = fp8_fused_feed_forwards();
    const std::int64_t summed_before_stage = fp8_summed_input_gradients();
    const std::int64_t in_products_before_stage = fp8_summed_input_gradients_in_products();
    // run.fp8 = delayed: another stage's maxima say nothing of this one's shapes and magnitudes
    // (a run resumed inside the stage keeps the histories its checkpoint brought).
    if (p_.stage_step == 0) fp8_forget_history();
    std::int64_t delayed_before_step = 0;
    while (p_.stage_step < stage.steps) {
      if (p_.stage_step == 1) delayed_before_step = fp8_delayed_quantizations();
      if (p_.global_step + 1 == profile_step)
        profiled_step(stage, inputs);
      else
        train_step(stage, inputs);
      if (!std::exchange(first_step_checked, true)) {
        say_if_weights_have_no_copies();
        say_how_fp8_feed_forwards_ran(fp8_fused_feed_forwards() - fused_before_stage);
        say_how_fp8_input_gradients_were_summed(
            fp8_summed_input_gradients() - summed_before_stage,
            fp8_summed_input_gradients_in_products() - in_products_before_stage);
      }
      if (p_.stage_step == 2)
        say_how_fp8_scales_were_made(fp8_delayed_quantizations() - delayed_before_step);
      const bool stage_end = p_.stage_step == stage.steps;
      const bool stop = opts_.stop_after_steps && p_.global_step >= *opts_.stop_after_steps;
      // Every rank flushes its log file each step, so a full disk is noticed now.
      flush_logs();
      if (write_error_.empty()) write_error_ = log_write_error();
      const auto flags =
          any_rank(*c_.ctx.world, c_.ctx.device, {stop_signal_received(), !write_error_.empty()});
      const bool term = flags[0], write_failed = flags[1];
      if (write_failed) stop_after_write_error();
      if ((every > 0 && p_.global_step % every == 0) ||
          (stage_end && cfg_.checkpoint.at_stage_end) || stop || term)
        save_checkpoint();
      if (term) {
        bar_->finish();
        logger()->warn(
            "SIGTERM: stopped after global step {} with a checkpoint; continue with --resume",
            p_.global_step);
        return kExitPreempted;
      }
      if (stop) {
        bar_->finish();
        logger()->info(
            "stopped after {} global steps as asked (--stop-after-steps); continue with --resume",
            p_.global_step);
        summary();
        return 0;
      }
    }
    bar_->finish();
    if (graphs_ && rank0())
      logger()->info("stage '{}': {} step(s) replayed from {} CUDA graph(s){}", stage.name,
                     graphs_->replays(), graphs_->captures(),
                     graphs_->on() ? "" : " (graphs turned off: see the warning above)");
    graphs_.reset();
    drop_compute_weights();  // run.kernels.weight_casts=per_step: the next stage makes its own
  }
  if (cfg_.checkpoint.export_diffusers) export_weights();
  summary();
  return 0;
}

}  // namespace

int train(const RunConfig& config, const TrainOptions& options, const LaunchEnv& env,
          PluginRegistry& registry) {
  Trainer t(config, options, env, registry);
  return t.run();
}

}  // namespace wanhost::core
