// Synthetic latent videos: see synthetic.hpp for what they look like and why.
#include "synthetic.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <sstream>
#include <stdexcept>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "wanhost/random.hpp"

namespace wanhost::plugins::synthetic {
namespace {

// Seeds the fixed "world" (class colours), independent of the data seed: every dataset shares it,
// so a model trained on one seed knows what a "red disc" is in another.
constexpr std::uint64_t kWorldSeed = 0x57A7E5EEDC0105ull;
constexpr std::int64_t kDiscKey = 100, kSquareKey = 101;
// Edge width of the soft shape masks, in latent cells (keeps tiny grids smooth).
constexpr double kEdge = 0.5;

at::Generator generator(std::uint64_t key) {
  return at::make_generator<at::CPUGeneratorImpl>(key);
}

double uniform(at::Generator& gen, double lo = 0.0, double hi = 1.0) {
  return lo + (hi - lo) * at::rand({1}, gen, at::TensorOptions(at::kDouble)).item<double>();
}

std::int64_t pick(at::Generator& gen, std::int64_t n) {
  return std::min<std::int64_t>(static_cast<std::int64_t>(uniform(gen) * n), n - 1);
}

// A random [n] vector with unit root mean square, so every class is equally bright.
at::Tensor unit_rms_vector(std::uint64_t key, std::int64_t n) {
  at::Generator gen = generator(key);
  at::Tensor v = at::randn({n}, gen, at::TensorOptions(at::kFloat));
  return v / v.square().mean().sqrt();
}

// FNV-1a: a stable hash of a word (std::hash is not stable across library versions).
std::uint64_t word_hash(const std::string& word) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : word) h = (h ^ c) * 0x100000001b3ull;
  return mix64(h);
}

std::vector<std::string> split_words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

// Standard sinusoidal position code [rows, dim].
at::Tensor position_code(std::int64_t rows, std::int64_t dim) {
  at::Tensor pos = at::arange(rows, at::kFloat).unsqueeze(1);
  at::Tensor j = at::arange(dim, at::kFloat);
  at::Tensor freq = at::exp(-(2 * at::floor(j / 2) / static_cast<double>(dim)) * std::log(10000.0));
  at::Tensor angle = pos * freq.unsqueeze(0);
  at::Tensor even = (at::remainder(j, 2) == 0).unsqueeze(0);
  return at::where(even, at::sin(angle), at::cos(angle));
}

void apply_motion(Shape& s, at::Generator& gen, double extent, double span) {
  const double speed = extent * uniform(gen, 0.3, 0.5) / span;
  const double total_growth = uniform(gen, 1.6, 2.2);
  switch (s.motion) {
    case Motion::Left:
      s.vx = -speed;
      break;
    case Motion::Right:
      s.vx = speed;
      break;
    case Motion::Up:
      s.vy = -speed;
      break;  // rows grow downwards
    case Motion::Down:
      s.vy = speed;
      break;
    case Motion::Growing:
      s.growth = std::pow(total_growth, 1.0 / span);
      break;
    case Motion::Shrinking:
      s.growth = std::pow(total_growth, -1.0 / span);
      break;
    case Motion::Still:
      break;
  }
}

}  // namespace

const char* motion_words(Motion m) {
  switch (m) {
    case Motion::Still:
      return "standing still";
    case Motion::Left:
      return "moving left";
    case Motion::Right:
      return "moving right";
    case Motion::Up:
      return "moving up";
    case Motion::Down:
      return "moving down";
    case Motion::Growing:
      return "growing";
    case Motion::Shrinking:
      return "shrinking";
  }
  return "";
}

Options Options::from_config(const PluginConfig& cfg) {
  Options o;
  const std::string mode = cfg.get<std::string>("mode");
  if (mode == "frames")
    o.mode = Mode::Frames;
  else if (mode == "clips")
    o.mode = Mode::Clips;
  else
    cfg.fail("mode", "unknown value '" + mode + "' (expected frames or clips)");
  o.num_samples = cfg.get<std::int64_t>("num_samples");
  o.latent_frames = cfg.get<std::int64_t>("latent_frames");
  o.min_latent_frames = cfg.get_or<std::int64_t>("min_latent_frames", 0);
  if (o.min_latent_frames < 0 || o.min_latent_frames > o.latent_frames)
    cfg.fail("min_latent_frames",
             "must be in [0, latent_frames = " + std::to_string(o.latent_frames) + "], got " +
                 std::to_string(o.min_latent_frames));
  o.height = cfg.get<std::int64_t>("height");
  o.width = cfg.get<std::int64_t>("width");
  o.channels = cfg.get<std::int64_t>("channels");
  o.text_dim = cfg.get<std::int64_t>("text_dim");
  o.seed = cfg.get<std::uint64_t>("seed");
  o.caption_tokens_min = cfg.get_or<std::int64_t>("caption_tokens_min", 0);
  o.caption_tokens_max = cfg.get_or<std::int64_t>("caption_tokens_max", 0);
  if (o.caption_tokens_min < 0 || o.caption_tokens_max < o.caption_tokens_min)
    cfg.fail("caption_tokens_max", "must be >= caption_tokens_min (" +
                                       std::to_string(o.caption_tokens_min) + ") >= 0, got " +
                                       std::to_string(o.caption_tokens_max));
  for (const char* key :
       {"num_samples", "latent_frames", "height", "width", "channels", "text_dim"})
    if (cfg.get<std::int64_t>(key) < 1) cfg.fail(key, "must be >= 1");
  return o;
}

SyntheticSource::SyntheticSource(Options options) : options_(options) {
  for (int c = 0; c < kNumColours; ++c)
    colour_vectors_.push_back(
        unit_rms_vector(random_key(kWorldSeed, 0, c, RandomStream::Data), options_.channels));
  disc_vector_ =
      unit_rms_vector(random_key(kWorldSeed, 0, kDiscKey, RandomStream::Data), options_.channels);
  square_vector_ =
      unit_rms_vector(random_key(kWorldSeed, 0, kSquareKey, RandomStream::Data), options_.channels);
}

std::int64_t SyntheticSource::frames_per_sample() const {
  return options_.mode == Mode::Frames ? 1 : options_.latent_frames;
}

std::int64_t SyntheticSource::clip_frames(std::int64_t video) const {
  const Options& o = options_;
  if (o.mode != Mode::Clips || o.min_latent_frames <= 0) return o.latent_frames;
  at::Generator gen = generator(random_key(o.seed, 1, video, RandomStream::Data));
  return o.min_latent_frames + pick(gen, o.latent_frames - o.min_latent_frames + 1);
}

std::int64_t SyntheticSource::video_of(std::int64_t index) const {
  return options_.mode == Mode::Frames ? index / options_.latent_frames : index;
}

std::int64_t SyntheticSource::frame_of(std::int64_t index) const {
  return options_.mode == Mode::Frames ? index % options_.latent_frames : -1;
}

void SyntheticSource::check_index(std::int64_t index) const {
  if (index < 0 || index >= options_.num_samples)
    throw std::out_of_range("synthetic: sample " + std::to_string(index) + " is outside [0, " +
                            std::to_string(options_.num_samples) + ")");
}

Scene SyntheticSource::scene(std::int64_t video) const {
  at::Generator gen = generator(random_key(options_.seed, 0, video, RandomStream::Data));
  const double h = static_cast<double>(options_.height), w = static_cast<double>(options_.width);
  const double extent = std::min(h, w);
  // Motion parameters are per frame, chosen so that a shape moves or grows by a visible amount
  // over the whole clip.
  const double span = static_cast<double>(std::max<std::int64_t>(options_.latent_frames - 1, 1));
  Scene s;
  std::vector<int> free_colours;
  for (int c = 0; c < kNumColours; ++c) free_colours.push_back(c);
  const std::int64_t count = 1 + pick(gen, 3);
  for (std::int64_t k = 0; k < count; ++k) {
    Shape shape;
    // Distinct colours, so that each caption phrase names exactly one shape.
    const std::int64_t slot = pick(gen, static_cast<std::int64_t>(free_colours.size()));
    shape.colour = free_colours[slot];
    free_colours.erase(free_colours.begin() + slot);
    shape.square = uniform(gen) < 0.5;
    shape.motion = static_cast<Motion>(pick(gen, 7));
    shape.x = w * uniform(gen, 0.25, 0.75);
    shape.y = h * uniform(gen, 0.25, 0.75);
    shape.radius = extent * uniform(gen, 0.12, 0.22);
    apply_motion(shape, gen, extent, span);
    s.shapes.push_back(shape);
  }
  s.base = 0.5 * at::randn({options_.channels}, gen, at::TensorOptions(at::kFloat));
  s.wave = 0.5 * at::randn({options_.channels}, gen, at::TensorOptions(at::kFloat));
  // Wavelengths longer than the frame keep the background smooth.
  s.kx = 2 * std::numbers::pi * uniform(gen, -0.6, 0.6) / w;
  s.ky = 2 * std::numbers::pi * uniform(gen, -0.6, 0.6) / h;
  s.phase = 2 * std::numbers::pi * uniform(gen);
  s.drift = uniform(gen, -0.3, 0.3);
  return s;
}

std::string SyntheticSource::caption(const Scene& scene) const {
  std::string text;
  for (const Shape& s : scene.shapes) {
    if (!text.empty()) text += " and ";
    text += std::string("a ") + kColourNames[s.colour] + (s.square ? " square " : " disc ") +
            motion_words(s.motion);
  }
  return text;
}

at::Tensor SyntheticSource::class_vector(int colour, bool square) const {
  return colour_vectors_.at(colour) + 0.5 * (square ? square_vector_ : disc_vector_);
}

at::Tensor SyntheticSource::render_frame(const Scene& scene, std::int64_t frame) const {
  // Time relative to the middle of the clip, where the shape geometry is defined.
  const double t =
      static_cast<double>(frame) - 0.5 * static_cast<double>(options_.latent_frames - 1);
  at::Tensor ys = (at::arange(options_.height, at::kFloat) + 0.5).unsqueeze(1);  // [H, 1]
  at::Tensor xs = (at::arange(options_.width, at::kFloat) + 0.5).unsqueeze(0);   // [1, W]
  at::Tensor wave = at::sin(scene.kx * xs + scene.ky * ys + (scene.phase + scene.drift * t));
  at::Tensor image = scene.base.view({-1, 1, 1}) + scene.wave.view({-1, 1, 1}) * wave;
  for (const Shape& s : scene.shapes) {
    at::Tensor dx = (xs - (s.x + s.vx * t)).abs(), dy = (ys - (s.y + s.vy * t)).abs();
    at::Tensor dist = s.square ? at::maximum(dx, dy) : (dx.square() + dy.square()).sqrt();
    at::Tensor mask = at::sigmoid((s.radius * std::pow(s.growth, t) - dist) / kEdge);
    image = at::lerp(image, class_vector(s.colour, s.square).view({-1, 1, 1}), mask);
  }
  return image.contiguous();
}

at::Tensor SyntheticSource::render_clip(const Scene& scene, std::int64_t count) const {
  std::vector<at::Tensor> frames;
  for (std::int64_t f = 0; f < (count < 0 ? options_.latent_frames : count); ++f)
    frames.push_back(render_frame(scene, f));
  return at::stack(frames, 1);
}

at::Tensor SyntheticSource::word_vector(const std::string& word) const {
  return cached_word_vector(word).clone();
}

const at::Tensor& SyntheticSource::cached_word_vector(const std::string& word) const {
  // Captions use a few dozen words: each vector is drawn once (320 draws of 4096 values a
  // stage-1 step otherwise).
  auto it = word_vectors_.find(word);
  if (it == word_vectors_.end()) {
    at::Generator gen = generator(word_hash(word));
    it = word_vectors_
             .emplace(word, at::randn({options_.text_dim}, gen, at::TensorOptions(at::kFloat)))
             .first;
  }
  return it->second;
}

at::Tensor SyntheticSource::positions(std::int64_t rows) const {
  if (!positions_.defined() || positions_.size(0) < rows)
    positions_ =
        position_code(std::max({rows, options_.caption_tokens_max,
                                positions_.defined() ? 2 * positions_.size(0) : std::int64_t{0}}),
                      options_.text_dim);
  return positions_.narrow(0, 0, rows);
}

const at::Tensor& SyntheticSource::filler_vocabulary() const {
  if (!filler_vocabulary_.defined()) {
    at::Generator gen = generator(random_key(options_.seed, 3, 0, RandomStream::Data));
    filler_vocabulary_ =
        at::randn({kFillerVocabulary, options_.text_dim}, gen, at::TensorOptions(at::kFloat));
  }
  return filler_vocabulary_;
}

at::Tensor SyntheticSource::embed(const std::string& caption) const {
  const std::vector<std::string> words = split_words(caption);
  const auto rows = static_cast<std::int64_t>(words.size());
  at::Tensor out = positions(rows).clone();
  for (std::int64_t i = 0; i < rows; ++i) out[i].add_(cached_word_vector(words[i]));
  return out;
}

at::Tensor SyntheticSource::embed_video_caption(const std::string& caption,
                                                std::int64_t video) const {
  at::Tensor words = embed(caption);
  const Options& o = options_;
  if (o.caption_tokens_max <= 0) return words;
  const std::uint64_t key = random_key(o.seed, 2, video, RandomStream::Data);
  at::Generator gen = generator(key);
  const std::int64_t rows =
      o.caption_tokens_min + pick(gen, o.caption_tokens_max - o.caption_tokens_min + 1);
  if (rows <= words.size(0)) return words;  // a caption is never cut
  // Filler rows: position code + a vocabulary row picked by a hash of (video, row). Drawing them
  // (~110 x 4096 normal values a caption) took ~0.1 s of a stage-1 step's inputs on one thread,
  // which starved the GPU; picking rows is a copy.
  const std::int64_t n = words.size(0), extra = rows - n;
  std::vector<std::int64_t> picks(static_cast<std::size_t>(extra));
  for (std::int64_t j = 0; j < extra; ++j)
    picks[j] = static_cast<std::int64_t>(mix64(key ^ static_cast<std::uint64_t>(n + j)) %
                                         static_cast<std::uint64_t>(kFillerVocabulary));
  at::Tensor out = at::empty({rows, o.text_dim}, at::TensorOptions(at::kFloat));
  out.narrow(0, 0, n).copy_(words);
  at::Tensor filler = out.narrow(0, n, extra);
  at::index_select_out(filler, filler_vocabulary(), 0, at::tensor(picks, at::kLong));
  filler.add_(positions(rows).narrow(0, n, extra));
  return out;
}

Sample SyntheticSource::get(std::int64_t index) {
  check_index(index);
  const Scene s = scene(video_of(index));
  Sample sample;
  sample.latent = options_.mode == Mode::Frames ? render_frame(s, frame_of(index)).unsqueeze(1)
                                                : render_clip(s, clip_frames(index));
  sample.caption = caption(s);
  sample.text = embed_video_caption(sample.caption, video_of(index));
  sample.index = index;
  return sample;
}

PackSegment SyntheticSource::grid(std::int64_t index) {
  check_index(index);
  const std::int64_t frames = options_.mode == Mode::Frames ? 1 : clip_frames(index);
  return PackSegment{0, frames, options_.height, options_.width};
}

std::string SyntheticSource::describe() const {
  const Options& o = options_;
  const std::int64_t videos = o.mode == Mode::Frames
                                  ? (o.num_samples + o.latent_frames - 1) / o.latent_frames
                                  : o.num_samples;
  std::ostringstream s;
  s << "synthetic shapes: " << o.num_samples << (o.mode == Mode::Frames ? " frames" : " clips")
    << " of latent [" << o.channels << ", "
    << (o.mode == Mode::Clips && o.min_latent_frames > 0
            ? std::to_string(o.min_latent_frames) + ".." + std::to_string(o.latent_frames)
            : std::to_string(frames_per_sample()))
    << ", " << o.height << ", " << o.width << "] from " << videos << " videos of "
    << o.latent_frames << " latent frames, text_dim " << o.text_dim << ", seed " << o.seed;
  return s.str();
}

std::unique_ptr<DataSource> make_source(const PluginConfig& cfg) {
  return std::make_unique<SyntheticSource>(Options::from_config(cfg));
}

}  // namespace wanhost::plugins::synthetic
