// Internal interface of the synthetic data source plugin (plugin name "synthetic"); the plugin
// entry point and the tests both build on it.
//
// Every video is a small procedural scene rendered directly in latent space: 1-3 shapes (discs or
// squares), each with a colour, moving or growing over the latent frames, on a smooth background.
// Each colour and each shape kind owns a fixed pseudo-random channel vector, so the "look" of a
// shape class is the same in every video and a model can learn it from the caption. Captions
// describe the scene ("a red disc moving left and a blue square growing"); the text embedding
// gives each word a fixed pseudo-random vector plus a position code. Everything is a pure
// function of (seed, video index), so any rank can produce any sample.
//
// mode "clips": sample i is video i, [C, F, H, W]. mode "frames": sample i is frame i % F of video
// i / F, [C, 1, H, W], with the video's caption (like the reference stage 1: docs/training.md,
// "The two reference paths"). With min_latent_frames > 0, clips mode gives video i its own length
// (the first clip_frames(i) latent frames of its scene): clips of mixed grids.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <ATen/core/Tensor.h>

#include "wanhost/config.hpp"
#include "wanhost/data.hpp"

namespace wanhost::plugins::synthetic {

enum class Mode { Frames, Clips };

struct Options {
  Mode mode = Mode::Frames;
  std::int64_t num_samples = 512;
  std::int64_t latent_frames = 5;
  std::int64_t min_latent_frames = 0;  // clips mode, > 0: clip lengths in [this, latent_frames]
  std::int64_t height = 8;
  std::int64_t width = 8;
  std::int64_t channels = 16;
  std::int64_t text_dim = 4096;
  // > 0: each video's caption embedding is extended to a length drawn from
  // [caption_tokens_min, caption_tokens_max] rows (filler rows after its words), like real
  // tokenised captions; 0: one row a word.
  std::int64_t caption_tokens_min = 0, caption_tokens_max = 0;
  std::uint64_t seed = 0;

  static Options from_config(const PluginConfig& cfg);
};

enum class Motion { Still, Left, Right, Up, Down, Growing, Shrinking };

inline constexpr const char* kColourNames[] = {"red",    "green",  "blue",
                                               "yellow", "purple", "orange"};
inline constexpr int kNumColours = 6;
// Rows of the random vocabulary that filler caption rows are drawn from (16 MB at text_dim 4096).
inline constexpr std::int64_t kFillerVocabulary = 1024;

struct Shape {
  int colour = 0;       // index into kColourNames
  bool square = false;  // else a disc
  Motion motion = Motion::Still;
  // Geometry at the middle of the clip, in latent cells: centre (x along W, y along H), radius.
  double x = 0, y = 0, radius = 1;
  double vx = 0, vy = 0;  // cells per latent frame
  double growth = 1;      // radius factor per latent frame
};

struct Scene {
  std::vector<Shape> shapes;                    // drawn in order; later shapes cover earlier ones
  at::Tensor base;                              // [C] background level
  at::Tensor wave;                              // [C] amplitude of the background wave
  double kx = 0, ky = 0, phase = 0, drift = 0;  // wave numbers, phase, phase change per frame
};

// Words of a shape's motion as they appear in captions ("moving left", "growing", ...).
const char* motion_words(Motion m);

class SyntheticSource final : public DataSource {
 public:
  explicit SyntheticSource(Options options);

  std::int64_t size() const override { return options_.num_samples; }
  Sample get(std::int64_t index) override;
  PackSegment grid(std::int64_t index) override;
  std::string describe() const override;

  const Options& options() const { return options_; }
  std::int64_t frames_per_sample() const;
  // Latent frames of video `video`'s clip in clips mode (latent_frames unless min_latent_frames).
  std::int64_t clip_frames(std::int64_t video) const;
  // Which video and which of its latent frames sample `index` shows (frame -1: the whole clip).
  std::int64_t video_of(std::int64_t index) const;
  std::int64_t frame_of(std::int64_t index) const;

  Scene scene(std::int64_t video) const;
  std::string caption(const Scene& scene) const;
  at::Tensor render_frame(const Scene& scene, std::int64_t frame) const;  // [C, H, W]
  // [C, F, H, W], the first `frames` latent frames (-1: latent_frames).
  at::Tensor render_clip(const Scene& scene, std::int64_t frames = -1) const;
  at::Tensor embed(const std::string& caption) const;  // [words, text_dim]
  // embed(caption) extended to video `video`'s drawn caption length (caption_tokens_max > 0): each
  // filler row is the position code plus a row of a fixed random vocabulary, chosen per video and
  // row (like the tokens of a real caption, which come from a vocabulary too).
  at::Tensor embed_video_caption(const std::string& caption, std::int64_t video) const;
  at::Tensor word_vector(const std::string& word) const;  // [text_dim], the same for every seed
  // The channel vector a shape of this class is painted with.
  at::Tensor class_vector(int colour, bool square) const;

 private:
  void check_index(std::int64_t index) const;
  // The first `rows` rows of the text position code [rows, text_dim] (a view of a table made once
  // and grown when a longer caption comes: sin/cos over 200 x 4096 values a caption was most of
  // a stage-1 step's input time).
  at::Tensor positions(std::int64_t rows) const;
  // word_vector's table entry (drawn on first use).
  const at::Tensor& cached_word_vector(const std::string& word) const;
  // The filler rows' vocabulary [kFillerVocabulary, text_dim], made once from the data seed.
  const at::Tensor& filler_vocabulary() const;

  Options options_;
  // Tables made on first use; get() comes one call at a time (wanhost/data.hpp).
  mutable at::Tensor positions_, filler_vocabulary_;
  mutable std::unordered_map<std::string, at::Tensor> word_vectors_;
  std::vector<at::Tensor> colour_vectors_;  // [C] each
  at::Tensor disc_vector_, square_vector_;  // [C]
};

std::unique_ptr<DataSource> make_source(const PluginConfig& cfg);

}  // namespace wanhost::plugins::synthetic
