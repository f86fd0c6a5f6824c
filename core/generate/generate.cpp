#include "generate.hpp"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "../config/run_config.hpp"
#include "../run/components.hpp"
#include "../train/checkpoint.hpp"
#include "../util/device_flag.hpp"
#include "../util/device_timing.hpp"
#include "../util/files.hpp"
#include "media_writer.hpp"
#include "samplers.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/checkpoint_state.hpp"
#include "wanhost/kit/json_file.hpp"
#include "wanhost/kit/keyed_random.hpp"
#include "wanhost/kit/layers.hpp"
#include "wanhost/kit/safetensors.hpp"
#include "wanhost/log.hpp"

namespace fs = std::filesystem;

namespace wanhost::core {
namespace {

// One sample to generate.
struct Job {
  std::string prompt;
  at::Tensor text;       // [L, D] stored text embedding (training samples); undefined for texts
  at::Tensor reference;  // the training sample's latents [C, F, H, W], when there is one
  std::int64_t frames = 0, height = 0, width = 0;  // latent grid
  bool same_grid(const Job& o) const {
    return frames == o.frames && height == o.height && width == o.width;
  }
};

// The trained model with the scheduler it was trained with.
struct ModelParts {
  std::unique_ptr<Model> model;
  std::unique_ptr<Scheduler> scheduler;
  std::int64_t in_channels = 16;
  double shift = 3.0;
  std::int64_t train_timesteps = 1000;
  std::string from;                // where the weights came from, for the log
  std::optional<Json> run_config;  // config.resolved.json when from a run or checkpoint
};

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}
bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

at::ScalarType pick_dtype(const std::string& flag, const c10::Device& device) {
  if (flag == "bfloat16") return at::kBFloat16;
  if (flag == "float32") return at::kFloat;
  return device.is_cuda() ? at::kBFloat16 : at::kFloat;
}

// The model weights a run folder stands for: its export (written at the end of the last stage)
// when there is one, else its newest checkpoint that verifies.
fs::path run_weights(const fs::path& run) {
  if (is_file(run / "export" / "config.json")) return run / "export";
  if (!is_dir(run / "checkpoints"))
    throw UsageError("--run " + run.string() + ": no export/ and no checkpoints/ folder");
  CommunicatorPtr local = make_local_communicator();
  CheckpointStore store((run / "checkpoints").string(), *local);
  std::vector<std::string> refused;
  const auto latest = store.find_latest(&refused);
  if (!latest) {
    std::string why;
    for (const auto& r : refused) why += "\n  " + r;
    throw UsageError("--run " + run.string() + ": no export/ and no checkpoint that verifies" +
                     why);
  }
  for (const auto& r : refused) logger()->warn("generate: skipped checkpoint {}", r);
  return *latest;
}

// Loads whole parameters from a checkpoint's parallelism state, whichever plugin wrote it.
void load_checkpoint_state(Model& model, const fs::path& state_dir) {
  WholeState::Shapes shapes;
  for (auto& p : model.module().named_parameters(true)) shapes[p.key()] = p.value().sizes().vec();
  const std::unique_ptr<WholeState> state = WholeState::open(state_dir.string(), shapes);
  at::NoGradGuard no_grad;
  for (auto& p : model.module().named_parameters(true))
    p.value().copy_(state->tensor(p.key(), "param"));
  logger()->info("generate: weights from {} ({})", state_dir.string(), state->writer());
}

double option_or(const Json& values, const char* key, double fallback) {
  auto it = values.find(key);
  return it != values.end() && it->is_number() ? it->get<double>() : fallback;
}

ModelParts load_model(ComponentBuilder& builder, const GenerateOptions& o,
                      const c10::Device& device, at::ScalarType dtype) {
  ModelParts parts;
  ParallelContext ctx = single_process_context(device);
  ctx.param_dtype = ctx.compute_dtype = at::kFloat;  // weights load in fp32, then cast
  Json scheduler_values = Json::object();
  std::string scheduler_plugin = "flow_matching";
  fs::path checkpoint_dir, diffusers_dir;
  if (!o.run.empty() || !o.checkpoint.empty()) {
    fs::path weights = o.checkpoint.empty() ? run_weights(o.run) : fs::path(o.checkpoint);
    const bool is_export = is_file(weights / "config.json") && !is_dir(weights / "state");
    if (!is_export) {
      std::string why;
      if (!CheckpointStore::verify(weights.string(), &why))
        throw UsageError((o.checkpoint.empty() ? "--run " : "--checkpoint ") + weights.string() +
                         ": not a checkpoint that verifies: " + why);
      checkpoint_dir = weights;
    } else {
      diffusers_dir = weights;
    }
    // The run's configuration: beside the checkpoint, else the run folder's.
    const fs::path cfg_file = is_file(weights / "config.resolved.json")
                                  ? weights / "config.resolved.json"
                                  : fs::path(o.run) / "config.resolved.json";
    if (!is_file(cfg_file))
      throw UsageError(cfg_file.string() +
                       ": missing (the run's configuration is needed to "
                       "rebuild its model)");
    parts.run_config = read_json_file(cfg_file.string());
    PluginConfig m = section_config(*parts.run_config, "model");
    if (m.values.contains("weights")) m.values["weights"] = "";  // the trained weights, below
    std::unique_ptr<Model> model =
        builder.model(builder.standalone_config(m.plugin, "model", "model", m.values), ctx);
    parts.model = std::move(model);
    const PluginConfig s = section_config(*parts.run_config, "scheduler");
    scheduler_plugin = s.plugin;
    scheduler_values = s.values;
  } else {
    diffusers_dir = !o.model.empty() ? fs::path(o.model) : fs::path(o.pipeline) / "transformer";
    const std::string flag = !o.model.empty() ? "--model " : "--pipeline ";
    if (!is_file(diffusers_dir / "config.json"))
      throw UsageError(flag + diffusers_dir.string() +
                       ": expected a Diffusers transformer folder (config.json + safetensors)");
    Json values = {{"config_file", (diffusers_dir / "config.json").string()}};
    parts.model = builder.model(
        builder.standalone_config(o.model_plugin, "model", "model", std::move(values)), ctx);
    // Without a run, the pipeline's own scheduler settings (Wan: UniPC, flow_shift 3.0).
    const fs::path sched = fs::path(o.pipeline) / "scheduler" / "scheduler_config.json";
    if (!o.pipeline.empty() && is_file(sched)) {
      const Json sc = read_json_file(sched.string());
      scheduler_values["sampling_shift"] = option_or(sc, "flow_shift", 3.0);
      if (sc.contains("num_train_timesteps"))
        scheduler_values["num_train_timesteps"] = sc["num_train_timesteps"];
    }
  }
  if (o.shift) scheduler_values["sampling_shift"] = *o.shift;
  const PluginConfig sched_cfg =
      builder.standalone_config(scheduler_plugin, "scheduler", "scheduler", scheduler_values);
  parts.shift = option_or(sched_cfg.values, "sampling_shift", 3.0);
  parts.train_timesteps =
      static_cast<std::int64_t>(option_or(sched_cfg.values, "num_train_timesteps", 1000));
  parts.scheduler = builder.scheduler(sched_cfg);

  if (!checkpoint_dir.empty()) {
    load_checkpoint_state(*parts.model, checkpoint_dir / "state");
    parts.from = checkpoint_dir.string();
  } else {
    parts.model->load_weights(diffusers_dir.string());
    parts.from = diffusers_dir.string();
    logger()->info("generate: weights from {}", parts.from);
  }
  const Json cfg = Json::parse(parts.model->config_json());
  parts.in_channels = cfg.value("in_channels", std::int64_t{16});
  parts.model->module().to(device, dtype);
  parts.model->module().eval();
  return parts;
}

// The training samples to generate from: the first sample of each distinct caption, in order.
std::vector<Job> jobs_from_data(DataSource& data, std::int64_t count) {
  std::vector<Job> jobs;
  std::set<std::string> seen;
  for (std::int64_t i = 0; i < data.size() && static_cast<std::int64_t>(jobs.size()) < count; ++i) {
    Sample s = data.get(i);
    if (!seen.insert(s.caption).second) continue;
    Job j;
    j.prompt = s.caption;
    j.text = s.text;
    j.reference = s.latent;
    j.frames = s.latent.size(1);
    j.height = s.latent.size(2);
    j.width = s.latent.size(3);
    jobs.push_back(std::move(j));
  }
  if (jobs.empty()) throw UsageError("the data source holds no samples");
  return jobs;
}

std::vector<std::string> read_prompts_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw UsageError("--prompts " + path + ": cannot be read");
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    const auto b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos) continue;
    out.push_back(line.substr(b, line.find_last_not_of(" \t\r") - b + 1));
  }
  if (out.empty()) throw UsageError("--prompts " + path + ": holds no prompt (one a line)");
  return out;
}

// The per-sample initial noise of --initial-noise: a tensor "latents" [N, C, F, H, W] (or the
// file's only tensor); sample j takes row j.
at::Tensor noise_file(const std::string& path) {
  const auto all = safetensors::File::open(path).load_all();
  auto it = all.find("latents");
  if (it == all.end()) {
    if (all.size() != 1)
      throw UsageError("--initial-noise " + path +
                       ": expected a tensor named 'latents' [N, C, F, H, W]");
    it = all.begin();
  }
  if (it->second.dim() != 5)
    throw UsageError("--initial-noise " + path + ": tensor '" + it->first + "' has shape " +
                     c10::str(it->second.sizes()) + ", expected [N, C, F, H, W]");
  return it->second.to(at::kFloat);
}

// Text rows of a batch: each sample's embedding at its length, zero-padded to the longest.
struct TextBatch {
  at::Tensor hidden, lengths;
};
TextBatch stack_texts(const std::vector<at::Tensor>& texts, std::int64_t dim) {
  std::int64_t rows = 1;
  for (const auto& t : texts) rows = std::max(rows, t.size(0));
  at::Tensor hidden = at::zeros({static_cast<std::int64_t>(texts.size()), rows, dim});
  at::Tensor lengths = at::empty({static_cast<std::int64_t>(texts.size())}, at::kLong);
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const std::int64_t n = texts[i].size(0);
    if (n > 0) hidden[static_cast<std::int64_t>(i)].slice(0, 0, n).copy_(texts[i].to(at::kFloat));
    lengths[static_cast<std::int64_t>(i)] = std::max<std::int64_t>(n, 1);
  }
  return {hidden, lengths};
}

std::string sample_name(std::size_t i) {
  std::string n = std::to_string(i);
  return std::string(n.size() < 3 ? 3 - n.size() : 0, '0') + n;
}

// Up to 8 evenly spaced frames side by side (a contact sheet that documents can show).
at::Tensor frame_strip(const at::Tensor& rgb) {
  const std::int64_t f = rgb.size(0), n = std::min<std::int64_t>(f, 8);
  std::vector<at::Tensor> frames;
  for (std::int64_t k = 0; k < n; ++k) frames.push_back(rgb[n == 1 ? 0 : k * (f - 1) / (n - 1)]);
  return at::cat(frames, 1);
}

// Writes a decoded sample: a PNG for one frame; for more, an MP4 (when this build has FFmpeg)
// and a PNG strip of frames. Returns the main file's name.
std::string write_media(const fs::path& dir, const std::string& stem, const at::Tensor& video,
                        int fps) {
  const at::Tensor rgb = to_rgb8(video);
  if (rgb.size(0) == 1) {
    write_png((dir / (stem + ".png")).string(), rgb[0]);
    return stem + ".png";
  }
  write_png((dir / (stem + ".frames.png")).string(), frame_strip(rgb));
  if (!can_write_mp4()) {
    logger()->warn("generate: this build cannot write MP4 (no FFmpeg): {} holds frames only",
                   stem + ".frames.png");
    return stem + ".frames.png";
  }
  write_mp4((dir / (stem + ".mp4")).string(), rgb, fps);
  return stem + ".mp4";
}

void check_options(const GenerateOptions& o) {
  const int models = !o.run.empty() + !o.checkpoint.empty() + !o.model.empty();
  if (models > 1) throw UsageError("--run, --checkpoint and --model: give one of them");
  if (models == 0 && o.pipeline.empty())
    throw UsageError(
        "no model: give --run, --checkpoint, --model, or a --pipeline with transformer/");
  const int sources =
      !o.prompts.empty() + !o.prompts_file.empty() + !o.dataset.empty() + o.from_run_data;
  if (sources != 1)
    throw UsageError(
        "what to generate: give one of --prompt (repeatable), --prompts FILE, "
        "--dataset DIR, --from-run-data");
  if (o.from_run_data && o.run.empty() && o.checkpoint.empty())
    throw UsageError("--from-run-data needs --run or --checkpoint");
  if (o.steps < 1) throw UsageError("--steps " + std::to_string(o.steps) + ": must be >= 1");
  if (o.count_given && o.dataset.empty() && !o.from_run_data)
    throw UsageError("--count: applies to --dataset and --from-run-data only");
  if (o.count < 1) throw UsageError("--count " + std::to_string(o.count) + ": must be >= 1");
  if (o.batch < 1) throw UsageError("--batch " + std::to_string(o.batch) + ": must be >= 1");
  if (!(o.guidance >= 0)) throw UsageError("--guidance: must be >= 0");
  if (o.shift && !(*o.shift > 0)) throw UsageError("--shift: must be > 0");
  if (o.out.empty()) throw UsageError("--out: required");
  if (is_file(o.out)) throw UsageError("--out " + o.out + ": is a file, not a folder");
  if (is_file(fs::path(o.out) / "samples.jsonl"))
    throw UsageError("--out " + o.out +
                     ": already holds generated samples (samples.jsonl); choose another folder");
}

}  // namespace

void generate(PluginRegistry& registry, const GenerateOptions& o) {
  check_options(o);
  const c10::Device device = device_for_flag(o.device);
  const at::ScalarType dtype = pick_dtype(o.dtype, device);
  ComponentBuilder builder(registry);
  ModelParts parts = load_model(builder, o, device, dtype);

  // Where texts, sizes and reference latents come from.
  std::vector<Job> jobs;
  std::string pipeline = o.pipeline, vae_plugin = o.vae_plugin, text_plugin = o.text_plugin;
  if (!o.dataset.empty()) {
    const fs::path index = fs::path(o.dataset) / "index.json";
    if (!is_file(index))
      throw UsageError("--dataset " + o.dataset + ": no index.json (not a prepared dataset)");
    const Json settings = read_json_file(index.string()).value("settings", Json::object());
    if (pipeline.empty()) pipeline = settings.value("model", "");
    if (vae_plugin.empty()) vae_plugin = settings.value("vae_plugin", "");
    if (text_plugin.empty()) text_plugin = settings.value("text_plugin", "");
    auto data = builder.data_source(builder.standalone_config("latent_dataset", "data_source",
                                                              "data", Json{{"path", o.dataset}}));
    jobs = jobs_from_data(*data, o.count);
  } else if (o.from_run_data) {
    const Json& resolved = *parts.run_config;
    const std::size_t last = resolved.at("stages").size() - 1;
    const PluginConfig d = stage_data_config(resolved, last);
    auto data =
        builder.data_source(builder.standalone_config(d.plugin, "data_source", "data", d.values));
    jobs = jobs_from_data(*data, o.count);
  }
  // No pipeline folder, but a VAE plugin named: one that needs no weights folder (pixel_vae)
  // renders the latents (e.g. of the synthetic data source).
  const bool weightless_vae = pipeline.empty() && !vae_plugin.empty();
  if (vae_plugin.empty()) vae_plugin = "wan_vae";
  if (text_plugin.empty()) text_plugin = "umt5";

  // The decoder and the text encoder of the pipeline folder.
  std::unique_ptr<VideoAutoencoder> vae;
  std::unique_ptr<TextEncoder> text_encoder;
  if (!pipeline.empty()) {
    for (const char* sub : {"vae", "text_encoder", "tokenizer"})
      if (!is_dir(fs::path(pipeline) / sub))
        throw UsageError("--pipeline " + pipeline + ": no " + sub +
                         "/ folder (expected a Diffusers pipeline folder with vae/, "
                         "text_encoder/ and tokenizer/)");
    vae = builder.video_autoencoder(
        builder.standalone_config(vae_plugin, "video_autoencoder", "vae"));
    vae->load_weights((fs::path(pipeline) / "vae").string());
    vae->to(device, at::kFloat);  // decoded in fp32, as the Wan pipelines run their VAE
    vae->module().eval();
    text_encoder = builder.text_encoder(
        builder.standalone_config(text_plugin, "text_encoder", "text_encoder"));
    text_encoder->load((fs::path(pipeline) / "text_encoder").string(),
                       (fs::path(pipeline) / "tokenizer").string());
    text_encoder->to(device, dtype);
    text_encoder->module().eval();
  }

  if (weightless_vae) {
    vae = builder.video_autoencoder(
        builder.standalone_config(vae_plugin, "video_autoencoder", "vae"));
    vae->load_weights("");
    vae->to(device, at::kFloat);
    vae->module().eval();
  }

  if (jobs.empty()) {
    if (!text_encoder)
      throw UsageError("--prompt/--prompts need a text encoder: give --pipeline DIR");
    const std::int64_t s = vae->spatial_ratio(), t = vae->temporal_ratio();
    if (o.width % (2 * s) || o.height % (2 * s) || o.width <= 0 || o.height <= 0)
      throw UsageError("--size " + std::to_string(o.width) + "x" + std::to_string(o.height) +
                       ": width and height must be positive multiples of " + std::to_string(2 * s));
    if (o.frames < 1 || (o.frames - 1) % t)
      throw UsageError("--frames " + std::to_string(o.frames) + ": must be " + std::to_string(t) +
                       "k+1");
    const auto texts = o.prompts.empty() ? read_prompts_file(o.prompts_file) : o.prompts;
    for (const auto& p : texts) {
      Job j;
      j.prompt = p;
      j.frames = (o.frames - 1) / t + 1;
      j.height = o.height / s;
      j.width = o.width / s;
      jobs.push_back(std::move(j));
    }
  } else if (o.size_given || o.frames_given) {
    throw UsageError("--size/--frames: training samples are generated at their own size");
  }

  const at::Tensor initial = o.initial_noise.empty() ? at::Tensor() : noise_file(o.initial_noise);
  if (initial.defined() && initial.size(0) < static_cast<std::int64_t>(jobs.size()))
    throw UsageError("--initial-noise " + o.initial_noise + ": holds " +
                     std::to_string(initial.size(0)) + " samples, " + std::to_string(jobs.size()) +
                     " are generated");
  const bool guided = o.guidance > 1.0;
  at::Tensor negative;  // [L, D]
  std::int64_t text_dim = 0;
  {
    at::InferenceMode guard;
    if (text_encoder) {
      text_dim = text_encoder->hidden_size();
      if (guided) {
        TextEmbeddings e = text_encoder->encode({o.negative_prompt});
        negative = e.hidden[0].slice(0, 0, e.lengths[0].item<std::int64_t>()).to(at::kCPU);
      }
    } else {
      text_dim = jobs.front().text.size(1);
      // No text encoder: the unconditional branch sees one all-zero text row.
      negative = at::zeros({1, text_dim});
      if (guided)
        logger()->warn(
            "generate: no --pipeline text encoder; the unconditional branch of "
            "guidance uses an all-zero text instead of --negative-prompt");
    }
  }
  fs::create_directories(o.out);
  const fs::path out(o.out);
  logger()->info("generate: {} samples, {} sampler, {} steps, guidance {}, shift {}, on {} {}",
                 jobs.size(), o.sampler, o.steps, o.guidance, parts.shift, device.str(),
                 c10::toString(dtype));

  std::map<std::string, at::Tensor> latents_out;
  std::string records;
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t first = 0; first < jobs.size();) {
    std::size_t end = first + 1;
    while (end < jobs.size() && end - first < static_cast<std::size_t>(o.batch) &&
           jobs[end].same_grid(jobs[first]))
      ++end;
    const std::int64_t b = static_cast<std::int64_t>(end - first);
    const Job& g = jobs[first];
    const std::vector<std::int64_t> shape = {parts.in_channels, g.frames, g.height, g.width};
    at::InferenceMode guard;

    // Conditional texts (stored, or encoded now), then the unconditional ones.
    std::vector<at::Tensor> texts;
    std::vector<std::string> to_encode;
    for (std::size_t j = first; j < end; ++j)
      if (!jobs[j].text.defined()) to_encode.push_back(jobs[j].prompt);
    TextEmbeddings encoded;
    if (!to_encode.empty()) encoded = text_encoder->encode(to_encode);
    for (std::size_t j = first, k = 0; j < end; ++j) {
      if (jobs[j].text.defined()) {
        texts.push_back(jobs[j].text);
      } else {
        const auto kk = static_cast<std::int64_t>(k++);
        texts.push_back(
            encoded.hidden[kk].slice(0, 0, encoded.lengths[kk].item<std::int64_t>()).to(at::kCPU));
      }
      if (texts.back().size(1) != text_dim)
        throw UsageError("sample '" + jobs[j].prompt + "': its text embedding is " +
                         std::to_string(texts.back().size(1)) + " wide, the text encoder's " +
                         std::to_string(text_dim));
    }
    if (guided)
      for (std::int64_t j = 0; j < b; ++j) texts.push_back(negative);
    const TextBatch tb = stack_texts(texts, text_dim);

    Batch batch;
    batch.text = tb.hidden.to(device, dtype);
    batch.text_lengths = tb.lengths.to(device);
    for (std::int64_t j = 0; j < batch.text.size(0); ++j) batch.sample_keys.push_back(j);
    batch.captions.resize(static_cast<std::size_t>(batch.text.size(0)));

    // Initial noise: the file's rows, else each sample's own keyed draw (sample j of this
    // command gets the same noise whatever the batch size).
    std::vector<at::Tensor> noise;
    for (std::size_t j = first; j < end; ++j) {
      at::Tensor n;
      if (initial.defined()) {
        n = initial[static_cast<std::int64_t>(j)];
        if (n.sizes().vec() != shape)
          throw UsageError("--initial-noise " + o.initial_noise + ": sample " + std::to_string(j) +
                           " has shape " + c10::str(n.sizes()) + ", expected " +
                           c10::str(at::IntArrayRef(shape)));
      } else {
        n = at::randn(shape,
                      keyed_generator(o.seed, 0, static_cast<std::int64_t>(j), RandomStream::Noise),
                      at::TensorOptions(at::kFloat));
      }
      noise.push_back(n);
    }
    at::Tensor x = at::stack(noise).to(device, at::kFloat);

    std::unique_ptr<Sampler> sampler =
        o.sampler == "euler" ? make_euler_sampler(*parts.scheduler, o.steps)
                             : make_unipc_sampler(parts.shift, parts.train_timesteps, o.steps);
    for (std::int64_t i = 0; i < sampler->steps(); ++i) {
      batch.latents = (guided ? at::cat({x, x}) : x).to(dtype);
      const at::Tensor t = at::full({batch.latents.size(0)}, sampler->timestep(i),
                                    at::TensorOptions(at::kFloat).device(device));
      at::Tensor v = parts.model->forward(batch, t).to(at::kFloat);
      if (guided) {
        const at::Tensor cond = v.slice(0, 0, b), uncond = v.slice(0, b);
        v = uncond + o.guidance * (cond - uncond);
      }
      x = sampler->step(i, x, v);
    }

    for (std::size_t j = first; j < end; ++j) {
      const std::string stem = sample_name(j);
      const at::Tensor lat = x[static_cast<std::int64_t>(j - first)].to(at::kCPU).contiguous();
      latents_out[stem] = lat;
      Json rec = {{"index", j},
                  {"prompt", jobs[j].prompt},
                  {"negative_prompt", guided ? Json(o.negative_prompt) : Json(nullptr)},
                  {"latents", stem},
                  {"latent_grid", {g.frames, g.height, g.width}},
                  {"sampler", o.sampler},
                  {"steps", o.steps},
                  {"guidance", o.guidance},
                  {"shift", parts.shift},
                  {"seed", initial.defined() ? Json(nullptr) : Json(o.seed)},
                  {"model", parts.from}};
      if (vae) {
        const at::Tensor video = vae->decode(lat.unsqueeze(0).to(device, at::kFloat))[0];
        rec["file"] = write_media(out, stem, video, o.fps);
        rec["height"] = video.size(2);
        rec["width"] = video.size(3);
        rec["frames"] = video.size(1);
        if (jobs[j].reference.defined()) {
          const at::Tensor ref =
              vae->decode(jobs[j].reference.unsqueeze(0).to(device, at::kFloat))[0];
          rec["reference_file"] = write_media(out, stem + ".reference", ref, o.fps);
        }
      }
      records += rec.dump() + "\n";
    }
    const double secs = seconds_since(t0);
    logger()->info("generate: {}/{} samples done ({:.1f} s)", end, jobs.size(), secs);
    first = end;
  }
  if (!vae) logger()->warn("generate: no VAE (no --pipeline): wrote latents only");
  safetensors::save((out / "latents.safetensors").string(), latents_out,
                    {{"sampler", o.sampler}, {"model", parts.from}});
  write_file_atomic((out / "samples.jsonl").string(), records);
  logger()->info("generate: wrote {} samples to {}", jobs.size(), o.out);
}

}  // namespace wanhost::core
