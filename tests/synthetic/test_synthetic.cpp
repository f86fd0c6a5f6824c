// The synthetic data source plugin, linked directly (synthetic_impl).
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "synthetic.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/collate.hpp"

using namespace wanhost;
using namespace wanhost::plugins;
using synthetic::Motion;
using synthetic::Options;
using synthetic::Scene;
using synthetic::SyntheticSource;

namespace {

// The config the host would hand the plugin: the sidecar defaults, a small text width, then
// `overrides`.
PluginConfig config(const Json& overrides = Json::object()) {
  std::ifstream in(WANHOST_SOURCE_DIR "/plugins/synthetic/synthetic.json");
  const Json manifest = Json::parse(in);
  PluginConfig cfg{"synthetic", "/data/synthetic", Json::object(), {}};
  for (const auto& [key, schema] : manifest.at("config").items())
    cfg.values[key] = schema.at("default");
  cfg.values["text_dim"] = 32;
  for (const auto& [key, value] : overrides.items()) cfg.values[key] = value;
  return cfg;
}

SyntheticSource source(const Json& overrides = Json::object()) {
  return SyntheticSource(Options::from_config(config(overrides)));
}

std::int64_t count_words(const std::string& s) {
  std::int64_t n = 0;
  bool in_word = false;
  for (char c : s) {
    if (c != ' ' && !in_word) ++n;
    in_word = c != ' ';
  }
  return n;
}

// Centre of mass and total of how far each cell is from the background, over one frame [C, H, W].
struct Blob {
  double x = 0, y = 0, mass = 0;
};
Blob blob(const at::Tensor& frame, const at::Tensor& background) {
  at::Tensor w = (frame - background).square().sum(0);  // [H, W]
  at::Tensor ys = at::arange(w.size(0), at::kFloat).unsqueeze(1);
  at::Tensor xs = at::arange(w.size(1), at::kFloat).unsqueeze(0);
  const double m = w.sum().item<double>();
  return {(w * xs).sum().item<double>() / m, (w * ys).sum().item<double>() / m, m};
}

}  // namespace

TEST(Synthetic, ShapesAndDefaults) {
  SyntheticSource frames = source();
  EXPECT_EQ(frames.size(), 512);
  Sample s = frames.get(3);
  EXPECT_EQ(s.latent.sizes(), (std::vector<std::int64_t>{16, 1, 8, 8}));
  EXPECT_EQ(s.latent.scalar_type(), at::kFloat);
  EXPECT_EQ(s.text.sizes(), (std::vector<std::int64_t>{count_words(s.caption), 32}));
  EXPECT_EQ(s.index, 3);
  EXPECT_EQ(frames.grid(3).frames, 1);

  SyntheticSource clips = source({{"mode", "clips"}, {"height", 6}, {"width", 10}});
  Sample c = clips.get(0);
  EXPECT_EQ(c.latent.sizes(), (std::vector<std::int64_t>{16, 5, 6, 10}));
  const PackSegment g = clips.grid(0);
  EXPECT_EQ(g.frames * g.height * g.width, 5 * 6 * 10);
  EXPECT_NE(clips.describe().find("clips"), std::string::npos);
  EXPECT_THROW(clips.get(512), std::out_of_range);
  EXPECT_THROW(clips.grid(-1), std::out_of_range);
  EXPECT_THROW(Options::from_config(config({{"mode", "images"}})), ConfigError);
  EXPECT_NE(synthetic::make_source(config()), nullptr);
}

TEST(Synthetic, SameIndexIsBitIdentical) {
  SyntheticSource a = source({{"mode", "clips"}}), b = source({{"mode", "clips"}});
  for (std::int64_t i : {0, 17, 311}) {
    Sample x = a.get(i), y = b.get(i), z = a.get(i);
    EXPECT_TRUE(at::equal(x.latent, y.latent));
    EXPECT_TRUE(at::equal(x.latent, z.latent));
    EXPECT_TRUE(at::equal(x.text, y.text));
    EXPECT_EQ(x.caption, y.caption);
  }
}

TEST(Synthetic, DifferentIndicesAndSeedsDiffer) {
  SyntheticSource a = source({{"mode", "clips"}});
  SyntheticSource other_seed = source({{"mode", "clips"}, {"seed", 1}});
  int same_caption = 0;
  for (std::int64_t i = 0; i < 20; ++i) {
    EXPECT_FALSE(at::allclose(a.get(i).latent, a.get(i + 1).latent));
    EXPECT_FALSE(at::allclose(a.get(i).latent, other_seed.get(i).latent));
    same_caption += a.get(i).caption == a.get(i + 1).caption;
  }
  EXPECT_LT(same_caption, 3);
}

TEST(Synthetic, FrameSamplesAreFramesOfTheClips) {
  SyntheticSource frames = source(), clips = source({{"mode", "clips"}});
  for (std::int64_t video : {0, 7, 40}) {
    Sample clip = clips.get(video);
    for (std::int64_t f = 0; f < 5; ++f) {
      Sample frame = frames.get(video * 5 + f);
      EXPECT_EQ(frames.video_of(video * 5 + f), video);
      EXPECT_EQ(frames.frame_of(video * 5 + f), f);
      EXPECT_TRUE(at::equal(frame.latent.select(1, 0), clip.latent.select(1, f)));
      EXPECT_EQ(frame.caption, clip.caption);  // each frame keeps its video's caption
      EXPECT_TRUE(at::equal(frame.text, clip.text));
    }
  }
}

// min_latent_frames: clips of mixed lengths, each the first frames of its video's full clip, the
// same length whenever asked, every length of the range used; grid() agrees with get().
TEST(Synthetic, MixedClipLengths) {
  SyntheticSource full = source({{"mode", "clips"}});
  SyntheticSource mixed = source({{"mode", "clips"}, {"min_latent_frames", 2}});
  std::set<std::int64_t> lengths;
  for (std::int64_t v = 0; v < 40; ++v) {
    const Sample m = mixed.get(v);
    const std::int64_t f = m.latent.size(1);
    lengths.insert(f);
    EXPECT_EQ(mixed.grid(v).frames, f) << v;
    EXPECT_EQ(mixed.clip_frames(v), f) << v;
    EXPECT_TRUE(at::equal(m.latent, full.get(v).latent.narrow(1, 0, f))) << v;
    EXPECT_TRUE(at::equal(m.latent, mixed.get(v).latent)) << v;
  }
  EXPECT_EQ(lengths, (std::set<std::int64_t>{2, 3, 4, 5}));
  EXPECT_NE(mixed.describe().find("2..5"), std::string::npos) << mixed.describe();
  // Frames mode ignores it; a minimum above latent_frames names the key.
  EXPECT_EQ(source({{"min_latent_frames", 2}}).get(3).latent.size(1), 1);
  try {
    Options::from_config(config({{"mode", "clips"}, {"min_latent_frames", 6}}));
    FAIL() << "min_latent_frames 6 > latent_frames 5 accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("/data/synthetic/min_latent_frames"), std::string::npos)
        << e.what();
  }
}

// caption_tokens_min/max: each video's caption embedding gets a drawn length in the range (its
// words first, never cut), the same for every frame of a video and for every call; bad ranges are
// refused naming the key.
TEST(Synthetic, CaptionLengthsDrawnFromTheRange) {
  SyntheticSource plain = source({{"text_dim", 8}});
  SyntheticSource longer =
      source({{"text_dim", 8}, {"caption_tokens_min", 20}, {"caption_tokens_max", 60}});
  std::set<std::int64_t> lengths;
  for (std::int64_t i = 0; i < 40; ++i) {
    const auto words = plain.get(i).text, rows = longer.get(i).text;
    ASSERT_GE(rows.size(0), 20);
    ASSERT_LE(rows.size(0), 60);
    EXPECT_TRUE(at::equal(rows.narrow(0, 0, words.size(0)), words));
    EXPECT_TRUE(at::equal(rows, longer.get(i).text));
    lengths.insert(rows.size(0));
  }
  EXPECT_GT(lengths.size(), 3u);  // drawn per video, not one length for all
  // Frames of one video share its caption.
  EXPECT_TRUE(at::equal(longer.get(0).text, longer.get(1).text));
  EXPECT_THROW(
      Options::from_config(config({{"caption_tokens_min", 30}, {"caption_tokens_max", 20}})),
      ConfigError);
}

// Filler rows are the position code plus rows of a fixed random vocabulary of unit-variance
// values, picked per video and row: not one row repeated, not the same rows for every video, and
// another seed has another vocabulary. word_vector hands out copies of its table entries.
TEST(Synthetic, FillerRowsComeFromARandomVocabulary) {
  const Json o = {{"text_dim", 64}, {"caption_tokens_min", 60}, {"caption_tokens_max", 60}};
  SyntheticSource src = source(o), other_seed = source({{"text_dim", 64},
                                                        {"caption_tokens_min", 60},
                                                        {"caption_tokens_max", 60},
                                                        {"seed", 9}});
  // Position code rows 0..59: a caption of 60 times "a", less the word's vector.
  std::string many;
  for (int i = 0; i < 60; ++i) many += i ? " a" : "a";
  const at::Tensor positions = src.embed(many) - src.word_vector("a");
  auto filler = [&](SyntheticSource& s, std::int64_t index) {
    const Sample sample = s.get(index);
    const std::int64_t words = count_words(sample.caption);
    return (sample.text - positions).narrow(0, words, 60 - words);
  };
  const at::Tensor f0 = filler(src, 0), f1 = filler(src, src.options().latent_frames);
  EXPECT_NEAR(f0.std().item<double>(), 1.0, 0.1);
  EXPECT_NEAR(f0.mean().item<double>(), 0.0, 0.1);
  // Distinct rows within a caption (50 picks from 1024 rows: a repeat is rare, not the rule).
  std::set<double> firsts;
  for (std::int64_t r = 0; r < f0.size(0); ++r) firsts.insert(f0[r][0].item<double>());
  EXPECT_GT(firsts.size(), static_cast<std::size_t>(f0.size(0) - 5));
  EXPECT_FALSE(at::allclose(f0.narrow(0, 0, 10), f1.narrow(0, 0, 10)));
  EXPECT_FALSE(at::allclose(f0.narrow(0, 0, 10), filler(other_seed, 0).narrow(0, 0, 10)));
  at::Tensor w = src.word_vector("red");
  w.add_(1.0);
  EXPECT_FALSE(at::equal(src.word_vector("red"), w)) << "word_vector wrote through its table";
}

TEST(Synthetic, CaptionNamesEveryShape) {
  SyntheticSource src = source({{"mode", "clips"}});
  std::vector<int> shape_counts(4, 0);
  for (std::int64_t v = 0; v < 60; ++v) {
    const Scene scene = src.scene(v);
    const std::string caption = src.get(v).caption;
    ASSERT_GE(scene.shapes.size(), 1u);
    ASSERT_LE(scene.shapes.size(), 3u);
    ++shape_counts[scene.shapes.size()];
    std::string expected;
    for (const synthetic::Shape& s : scene.shapes) {
      const std::string phrase = std::string("a ") + synthetic::kColourNames[s.colour] +
                                 (s.square ? " square " : " disc ") +
                                 synthetic::motion_words(s.motion);
      EXPECT_NE(caption.find(phrase), std::string::npos) << caption << " lacks " << phrase;
      expected += (expected.empty() ? "" : " and ") + phrase;
    }
    EXPECT_EQ(caption, expected);
  }
  for (int n = 1; n <= 3; ++n) EXPECT_GT(shape_counts[n], 5) << n << " shapes";
}

// The words describe what is rendered: a moving shape's centre moves that way, a growing shape
// covers more cells. Each shape is rendered alone on a flat background to measure it.
TEST(Synthetic, MotionWordsMatchTheRendering) {
  SyntheticSource src = source({{"mode", "clips"}, {"height", 24}, {"width", 24}});
  std::vector<int> seen(7, 0);
  for (std::int64_t v = 0; v < 40; ++v) {
    const Scene scene = src.scene(v);
    for (const synthetic::Shape& shape : scene.shapes) {
      Scene alone = scene;
      alone.shapes = {shape};
      alone.base = at::zeros_like(scene.base);
      alone.wave = at::zeros_like(scene.wave);
      const at::Tensor bg = at::zeros({16, 1, 1});
      const Blob first = blob(src.render_frame(alone, 0), bg);
      const Blob last = blob(src.render_frame(alone, 4), bg);
      ++seen[static_cast<int>(shape.motion)];
      switch (shape.motion) {
        case Motion::Left:
          EXPECT_LT(last.x, first.x - 1);
          break;
        case Motion::Right:
          EXPECT_GT(last.x, first.x + 1);
          break;
        case Motion::Up:
          EXPECT_LT(last.y, first.y - 1);
          break;
        case Motion::Down:
          EXPECT_GT(last.y, first.y + 1);
          break;
        case Motion::Growing:
          EXPECT_GT(last.mass, 1.5 * first.mass);
          break;
        case Motion::Shrinking:
          EXPECT_LT(last.mass, first.mass / 1.5);
          break;
        case Motion::Still:
          EXPECT_NEAR(last.x, first.x, 1e-3);
          EXPECT_NEAR(last.mass, first.mass, 1e-3 * first.mass);
          break;
      }
    }
  }
  for (int m = 0; m < 7; ++m) EXPECT_GT(seen[m], 0) << "motion " << m << " never drawn";
}

TEST(Synthetic, WordEmbeddingsAreFixedPerWord) {
  SyntheticSource a = source(), b = source({{"seed", 9}});
  EXPECT_TRUE(at::equal(a.word_vector("red"), b.word_vector("red")));
  EXPECT_FALSE(at::allclose(a.word_vector("red"), a.word_vector("blue")));
  // The same word at the same position gives the same row in any caption.
  at::Tensor e1 = a.embed("a red disc moving left");
  at::Tensor e2 = b.embed("a red square growing and a blue disc standing still");
  EXPECT_EQ(e1.size(0), 5);
  EXPECT_EQ(e2.size(0), 10);
  EXPECT_TRUE(at::equal(e1[0], e2[0]));
  EXPECT_TRUE(at::equal(e1[1], e2[1]));
  EXPECT_FALSE(at::allclose(e1[2], e2[2]));
  // Rows are word vector + position code: a word at two positions differs by the code only.
  at::Tensor e3 = a.embed("disc a");
  EXPECT_FALSE(at::allclose(e3[1], e1[0]));
  EXPECT_TRUE(at::allclose(e3[1] - a.word_vector("a"), e1[1] - a.word_vector("red"), 1e-5, 1e-5));
  EXPECT_TRUE(
      at::allclose(e1[2] - a.word_vector("disc"), e2[2] - a.word_vector("square"), 1e-5, 1e-5));
}

// The position code is a table made once and grown when a longer caption comes: a sample's text
// is the same bit for bit whichever captions were embedded before it (short ones first: the table
// grows; long ones first: it is sliced), and the caller's rows are its own (embed adds to them).
TEST(Synthetic, TextDoesNotDependOnWhatCameBefore) {
  const Json o = {{"text_dim", 8}, {"caption_tokens_min", 3}, {"caption_tokens_max", 40}};
  SyntheticSource forward = source(o), backward = source(o);
  constexpr std::int64_t n = 40;
  std::vector<at::Tensor> texts(n);
  for (std::int64_t i = 0; i < n; ++i) texts[i] = forward.get(i).text;
  for (std::int64_t i = n - 1; i >= 0; --i)
    EXPECT_TRUE(at::equal(backward.get(i).text, texts[i])) << "sample " << i;
  at::Tensor first = forward.embed("a red disc");
  first.add_(1.0);
  EXPECT_FALSE(at::equal(forward.embed("a red disc"), first)) << "the table was written through";
}

TEST(Synthetic, LatentsHaveRoughlyUnitScale) {
  SyntheticSource src = source({{"mode", "clips"}});
  std::vector<at::Tensor> all;
  for (std::int64_t i = 0; i < 64; ++i) all.push_back(src.get(i).latent);
  at::Tensor x = at::stack(all);
  const double std = x.std().item<double>();
  EXPECT_GT(std, 0.5);
  EXPECT_LT(std, 1.5);
  EXPECT_LT(std::abs(x.mean().item<double>()), 0.5);
}

TEST(Synthetic, CollatesDenseAndPacked) {
  SyntheticSource frames = source();
  std::vector<Sample> batch;
  for (std::int64_t i : {0, 1, 9}) batch.push_back(frames.get(i));
  Batch dense = collate_dense(batch, CollateOptions{});
  EXPECT_EQ(dense.latents.sizes(), (std::vector<std::int64_t>{3, 16, 1, 8, 8}));
  EXPECT_EQ(dense.sample_keys, (std::vector<std::int64_t>{0, 1, 9}));
  SyntheticSource clips = source({{"mode", "clips"}});
  Batch packed = collate_packed({clips.get(2), frames.get(2)}, CollateOptions{});
  EXPECT_EQ(packed.latents.size(1), 5 * 64 + 64);
}
