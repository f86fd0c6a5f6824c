// `wanhost prepare`, `wanhost data inspect` and the latent_dataset source end to end: the real
// program on the videos of make_videos.sh (several containers and codecs, a truncated and a garbage
// file, a video too short, one without caption), encoded by the pixel_vae plugin and the fixture
// plugin fake_text, and once by the real wan_vae and umt5 on tiny reference checkpoints; then a
// short two-stage training run on the prepared folders.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "plugin/registry.hpp"
#include "prepare/frame_plan.hpp"
#include "prepare/video_reader.hpp"
#include "util/files.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/safetensors.hpp"

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

const fs::path kVideos = DATA_PREPARE_VIDEOS;
constexpr std::int64_t kTextDim = 32;  // the tiny DiT preset's text width

// The videos that prepare must accept, with their frame counts and rates (make_videos.sh).
struct Good {
  std::string file;
  std::int64_t frames;
  double fps;
  std::string caption;
};
std::vector<Good> good_videos() {
  const std::string b = fs::exists(kVideos / "b.webm") ? "b.webm" : "b.mkv";
  return {{"a.mp4", 20, 10, "a test pattern with a counter"},
          {b, 18, 12, "colour bars moving"},
          {"d.avi", 25, 25, "a portrait pattern"},
          {"sub/c.mkv", 24, 8, "a pattern in a sub folder"},
          {"wide.mkv", 10, 10, "a red field"}};
}
// The inputs that must be skipped, with a word of the reason.
const std::map<std::string, std::string> kSkipped = {{"garbage.mp4", "cannot open"},
                                                     {"nocap.mp4", "missing caption"},
                                                     {"short.mp4", "too short"},
                                                     {"truncated.mp4", "cannot open"}};

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
Json read_json(const fs::path& p) {
  return Json::parse(read_text(p));
}

fs::path tmp_root() {
  return fs::path(WANHOST_TEST_TMP);
}

fs::path scratch() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir = tmp_root() / (std::string(info->test_suite_name()) + "." + info->name());
  if (fs::exists(dir)) {
    const std::string cmd = "rm -rf '" + dir.string() + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0);
  }
  fs::create_directories(dir);
  return dir;
}

struct Result {
  int code = -1;
  std::string out, err;
};

// Runs the wanhost program with `args`; stdout and stderr through files in `dir`.
Result run(const std::vector<std::string>& args, const fs::path& dir) {
  static int counter = 0;
  const std::string tag = "cli-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
  const fs::path out = dir / (tag + ".out"), err = dir / (tag + ".err");
  std::vector<std::string> argv_s{WANHOST_CLI};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (o < 0 || e < 0) ::_exit(126);
    ::dup2(o, 1);
    ::dup2(e, 2);
    ::unsetenv("WANHOST_PLUGIN_PATH");
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  Result r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_text(out);
  r.err = read_text(err);
  return r;
}

std::string describe(const Result& r) {
  return "exit " + std::to_string(r.code) + "\nstdout:\n" + r.out + "\nstderr:\n" + r.err;
}

// A stand-in pipeline folder for the fixture encoders, shared by every case of this binary. A
// config is written only when it differs, and then atomically: a case reading it while another
// writes it (ctest runs the cases at once) never reads a truncated file.
fs::path model_dir() {
  const fs::path m = tmp_root() / "model";
  fs::create_directories(m / "tokenizer");
  const auto config = [&](const std::string& part, const std::string& text) {
    fs::create_directories(m / part);
    const fs::path file = m / part / "config.json";
    if (read_text(file) != text) wanhost::core::write_file_atomic(file.string(), text);
  };
  config("vae", R"({"z_dim": 16})");
  config("text_encoder", R"({"d_model": )" + std::to_string(kTextDim) + R"(, "max_length": 64})");
  return m;
}

// `mode` is frames, video (5-frame clips at 8 fps, as many as fit) or whole (video mode,
// --whole-video at 8 fps).
std::vector<std::string> prepare_args(const fs::path& input, const fs::path& output,
                                      const std::string& mode,
                                      const std::vector<std::string>& extra = {}) {
  std::vector<std::string> a = {"--plugin-dir",
                                DATA_PREPARE_PLUGINS,
                                "prepare",
                                "--input",
                                input.string(),
                                "--output",
                                output.string(),
                                "--model",
                                model_dir().string(),
                                "--mode",
                                mode == "whole" ? "video" : mode,
                                "--height",
                                "32",
                                "--width",
                                "48",
                                "--vae-plugin",
                                "pixel_vae",
                                "--text-plugin",
                                "fake_text",
                                "--progress",
                                "lines"};
  if (mode == "frames") {
    a.insert(a.end(), {"--frames-per-video", "5", "--videos-per-shard", "2"});
  } else if (mode == "whole") {
    a.insert(a.end(), {"--whole-video", "--fps", "8", "--videos-per-shard", "2"});
  } else {
    a.insert(a.end(), {"--num-frames", "5", "--fps", "8", "--clips-per-video", "0",
                       "--videos-per-shard", "3"});
  }
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

std::string file_key(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return "missing";
  return std::to_string(st.st_size) + ":" + std::to_string(st.st_mtim.tv_sec) + "." +
         std::to_string(st.st_mtim.tv_nsec);
}

// The input folder of the --whole-video tests: three videos of three lengths and one too short,
// copied from make_videos.sh's folder, captions in .txt files. At 8 fps: a.mp4 (2 s) gives 16
// frames -> 13 = 4 * 3 + 1, b (1.5 s) 12 -> 9, d.avi (1 s) 8 -> 5, short.mp4 (3 frames at 10 fps)
// 2 -> skipped. Latent frames 1 + (frames - 1) / 4: 4, 3, 2.
struct Whole {
  std::string file;
  std::int64_t available, frames, latent_frames;
};
std::vector<Whole> whole_videos() {
  return {{"a.mp4", 16, 13, 4}, {good_videos()[1].file, 12, 9, 3}, {"d.avi", 8, 5, 2}};
}
fs::path whole_input() {
  return tmp_root() / "cache" / "whole-input";
}
void make_whole_input() {
  const fs::path in = whole_input();
  fs::remove_all(in);
  fs::create_directories(in);
  for (const auto& w : whole_videos()) {
    fs::copy_file(kVideos / w.file, in / w.file);
    std::ofstream(in / (fs::path(w.file).stem().string() + ".txt")) << "whole " << w.file;
  }
  fs::copy_file(kVideos / "short.mp4", in / "short.mp4");
  fs::copy_file(kVideos / "short.txt", in / "short.txt");
}

// The dataset of `mode` (prepare_args) prepared once per build (shared by the tests of this
// binary, which ctest runs as separate processes, possibly at once): a lock, and a stamp of the
// inputs and programs.
fs::path prepared(const std::string& mode) {
  const fs::path dir = tmp_root() / "cache" / mode;
  fs::create_directories(dir.parent_path());
  const int lock = ::open((dir.string() + ".lock").c_str(), O_RDWR | O_CREAT, 0644);
  ::flock(lock, LOCK_EX);
  std::string stamp = file_key(WANHOST_CLI) + " " + file_key(kVideos / "a.mp4");
  stamp += " " + file_key(fs::path(WANHOST_BINARY_DIR) / "plugins" / "pixel_vae.so");
  stamp += " " + file_key(fs::path(DATA_PREPARE_PLUGINS) / "fake_text.so");
  const fs::path stamp_file = dir.string() + ".stamp";
  if (read_text(stamp_file) != stamp) {
    const std::string cmd = "rm -rf '" + dir.string() + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0);
    if (mode == "whole") make_whole_input();
    const Result r =
        run(prepare_args(mode == "whole" ? whole_input() : kVideos, dir, mode), dir.parent_path());
    EXPECT_EQ(r.code, 0) << describe(r);
    if (r.code == 0) std::ofstream(stamp_file) << stamp;
  }
  ::flock(lock, LOCK_UN);
  ::close(lock);
  return dir;
}

std::int64_t words(const std::string& s) {
  std::istringstream in(s);
  std::int64_t n = 0;
  for (std::string w; in >> w;) ++n;
  return n;
}

const Good* find_good(const std::string& file) {
  static const auto goods = good_videos();
  for (const auto& g : goods)
    if (g.file == file) return &g;
  return nullptr;
}

// Checks what every prepared folder must satisfy: the skipped inputs, the index against the
// shards, captions and token counts. Returns the index.
Json check_common(const fs::path& dir, std::int64_t latent_frames) {
  const Json index = read_json(dir / "index.json");
  const Json report = read_json(dir / "report.json");
  EXPECT_EQ(index["format"], "wanhost-latents");
  EXPECT_EQ(index["latent_channels"], 16);
  EXPECT_EQ(index["text_dim"], kTextDim);
  EXPECT_EQ(index["videos"], good_videos().size());
  EXPECT_EQ(report["videos"], good_videos().size() + kSkipped.size());
  EXPECT_EQ(report["prepared"], good_videos().size());
  std::map<std::string, std::string> skipped;
  for (const auto& s : report["skipped"])
    skipped[s["file"].get<std::string>()] = s["reason"].get<std::string>();
  EXPECT_EQ(skipped.size(), kSkipped.size()) << report["skipped"].dump(1);
  for (const auto& [file, word] : kSkipped) {
    if (!skipped.count(file)) {
      ADD_FAILURE() << file << " not in " << report["skipped"].dump(1);
      continue;
    }
    EXPECT_NE(skipped[file].find(word), std::string::npos) << file << ": " << skipped[file];
  }
  EXPECT_EQ(report["caption_problems"].size(), 1u);  // the line of captions.jsonl that is no JSON
  EXPECT_GT(report["frames_decoded"].get<std::int64_t>(), 0);

  std::map<std::int64_t, wanhost::safetensors::File> shards;
  for (std::size_t k = 0; k < index["shards"].size(); ++k)
    shards.emplace(k, wanhost::safetensors::File::open(
                          (dir / index["shards"][k]["file"].get<std::string>()).string()));
  for (const auto& s : index["samples"]) {
    const Good* g = find_good(s["source"].get<std::string>());
    EXPECT_TRUE(g) << "unexpected source " << s["source"];
    if (!g) continue;
    EXPECT_EQ(s["caption"].get<std::string>(), g->caption);
    EXPECT_EQ(s["text_tokens"], words(g->caption) + 1);  // + end of sequence
    EXPECT_EQ(s["latent_shape"].get<std::vector<std::int64_t>>(),
              (std::vector<std::int64_t>{16, latent_frames, 4, 6}));
    const auto& f = shards.at(s["shard"].get<std::int64_t>());
    const at::Tensor lat = f.load(s["latent"].get<std::string>());
    EXPECT_EQ(lat.sizes().vec(), (std::vector<std::int64_t>{16, latent_frames, 4, 6}));
    EXPECT_TRUE(lat.isfinite().all().item<bool>());
    const at::Tensor text = f.load(s["text"].get<std::string>());
    EXPECT_EQ(text.sizes().vec(),
              (std::vector<std::int64_t>{s["text_tokens"].get<std::int64_t>(), kTextDim}));
    EXPECT_GT(text.abs().sum(1).min().item<float>(), 0.0f) << "a real token row is zero";
  }
  return index;
}

}  // namespace

TEST(Decode, ProbeCountsFramesAndDecodeCropsTheCentre) {
  using namespace wanhost::core::data;
  const VideoProbe p = probe_video((kVideos / "a.mp4").string());
  EXPECT_EQ(p.frames(), 20);
  EXPECT_NEAR(p.fps, 10.0, 1e-6);
  EXPECT_NEAR(p.times[1], 0.1, 1e-3);
  EXPECT_NEAR(p.duration(), 2.0, 1e-3);
  EXPECT_EQ(p.width, 64);
  const VideoProbe w = probe_video((kVideos / "wide.mkv").string());
  EXPECT_EQ(w.frames(), 10);
  EXPECT_EQ(w.codec, "ffv1");
  // 128x48 with green/blue strips on the outer eighths; a centre crop to 48x32 is all red.
  const at::Tensor f = decode_frames((kVideos / "wide.mkv").string(), {0, 9}, 32, 48, 1);
  ASSERT_EQ(f.sizes().vec(), (std::vector<std::int64_t>{2, 32, 48, 3}));
  const at::Tensor rgb = f.to(at::kInt);
  EXPECT_GE(rgb.select(3, 0).min().item<int>(), 240);
  EXPECT_LE(rgb.select(3, 1).max().item<int>(), 16);
  EXPECT_LE(rgb.select(3, 2).max().item<int>(), 16);
  try {
    decode_frames((kVideos / "a.mp4").string(), {25}, 32, 48, 1);
    ADD_FAILURE() << "decoding frame 25 of 20 succeeded";
  } catch (const VideoError& e) {
    EXPECT_NE(std::string(e.what()).find("frame 25 is needed"), std::string::npos) << e.what();
  }
  EXPECT_THROW(probe_video((kVideos / "garbage.mp4").string()), VideoError);
  try {
    probe_video((kVideos / "truncated.mp4").string());
    ADD_FAILURE() << "a truncated mp4 was read";
  } catch (const VideoError& e) {
    EXPECT_NE(std::string(e.what()).find("moov atom not found"), std::string::npos) << e.what();
  }
}

TEST(Prepare, FramesMode) {
  const fs::path dir = prepared("frames");
  const Json index = check_common(dir, 1);
  EXPECT_EQ(index["mode"], "frames");
  EXPECT_EQ(index["samples"].size(), 5 * good_videos().size());
  EXPECT_EQ(index["shards"].size(), 5u);  // 9 inputs, 2 a shard
  // Evenly spaced frames of each video, each sample its own frame.
  for (const auto& g : good_videos()) {
    std::vector<std::int64_t> frames;
    for (const auto& s : index["samples"])
      if (s["source"].get<std::string>() == g.file)
        frames.push_back(s["frame"].get<std::int64_t>());
    EXPECT_EQ(frames, wanhost::core::data::even_frames(g.frames, 5)) << g.file;
  }
  // wide.mkv is red in the centre: channels 0-2 of the fixture VAE are the pooled RGB in [-1, 1].
  for (const auto& s : index["samples"]) {
    if (s["source"] != "wide.mkv") continue;
    const auto f = wanhost::safetensors::File::open(
        (dir / index["shards"][s["shard"].get<std::size_t>()]["file"].get<std::string>()).string());
    const at::Tensor lat = f.load(s["latent"].get<std::string>());
    EXPECT_NEAR(lat[0].min().item<float>(), 1.0, 0.06);
    EXPECT_NEAR(lat[1].max().item<float>(), -1.0, 0.06);
    EXPECT_NEAR(lat[2].max().item<float>(), -1.0, 0.06);
  }
  // The text of a video is stored once and shared by its frames.
  const Json& first = index["samples"][0];
  EXPECT_EQ(first["text"], index["samples"][4]["text"]);
}

// The real encoders end to end: wan_vae and umt5 on the tiny reference checkpoints that
// tests/wan_vae and tests/umt5 generate from Diffusers / Transformers (a stand-in pipeline folder
// of links to them). Latents have the VAE's shape; each stored text equals what
// `wanhost model forward --plugin umt5 --entry encode` gives for the caption.
TEST(Prepare, RealEncodersWanVaeAndUmt5) {
  const fs::path ref = fs::path(WANHOST_BINARY_DIR) / "reference";
  if (!fs::exists(ref / "vae" / "DONE") || !fs::exists(ref / "umt5" / "DONE"))
    GTEST_SKIP() << "no VAE / umT5 reference checkpoints in " << ref;
  if (!fs::exists(fs::path(WANHOST_BINARY_DIR) / "plugins" / "umt5.so"))
    GTEST_SKIP() << "the umt5 plugin is not built (no sentencepiece)";
  const fs::path dir = scratch(), model = dir / "pipeline", out = dir / "frames";
  fs::create_directories(model);
  fs::create_directory_symlink(ref / "vae" / "base" / "model", model / "vae");
  fs::create_directory_symlink(ref / "umt5" / "model", model / "text_encoder");
  fs::create_directory_symlink(ref / "umt5" / "tokenizer", model / "tokenizer");
  auto args = prepare_args(kVideos, out, "frames");
  auto set = [&](const std::string& flag, const std::string& value) {
    auto it = std::find(args.begin(), args.end(), flag);
    ASSERT_NE(it, args.end()) << flag;
    *(it + 1) = value;
  };
  set("--model", model.string());
  set("--vae-plugin", "wan_vae");
  set("--text-plugin", "umt5");
  const Result r = run(args, dir);
  ASSERT_EQ(r.code, 0) << describe(r);

  const Json index = read_json(out / "index.json");
  EXPECT_EQ(index["samples"].size(), 5 * good_videos().size());
  EXPECT_EQ(index["text_dim"], 32);  // the reference umT5's d_model
  const Json& first = index["samples"][0];
  const auto shard = wanhost::safetensors::File::open(
      (out / index["shards"][first["shard"].get<std::size_t>()]["file"].get<std::string>())
          .string());
  for (const auto& s : index["samples"]) {
    if (s["shard"] != first["shard"]) continue;
    const at::Tensor lat = shard.load(s["latent"].get<std::string>());
    // z_dim 4; one latent frame; 32 x 48 pixels / 8.
    EXPECT_EQ(lat.sizes(), (std::vector<std::int64_t>{4, 1, 4, 6}));
    EXPECT_TRUE(lat.isfinite().all().item<bool>());
    EXPECT_GT(lat.abs().max().item<float>(), 0.0f);
  }

  const std::string caption = first["caption"];
  const fs::path emb = dir / "caption.safetensors";
  const Result enc =
      run({"model", "forward", "--plugin", "umt5", "--entry", "encode", "--weights",
           (model / "text_encoder").string(), "--prompt", caption, "--output", emb.string()},
          dir);
  ASSERT_EQ(enc.code, 0) << describe(enc);
  const auto f = wanhost::safetensors::File::open(emb.string());
  const std::int64_t len = first["text_tokens"];
  EXPECT_EQ(f.load("lengths")[0].item<std::int64_t>(), len);
  const at::Tensor stored = shard.load(first["text"].get<std::string>());
  ASSERT_EQ(stored.sizes(), (std::vector<std::int64_t>{len, 32}));
  const at::Tensor want = f.load("hidden")[0].narrow(0, 0, len);
  EXPECT_LT((stored.to(at::kDouble) - want.to(at::kDouble)).norm().item<double>(),
            1e-5 * want.to(at::kDouble).norm().item<double>());
}

TEST(Prepare, VideoMode) {
  const fs::path dir = prepared("video");
  const Json index = check_common(dir, 2);  // 5 frames -> 1 + 4/4 latent frames
  EXPECT_EQ(index["mode"], "video");
  // Clips of 5 frames at 8 fps, as many as fit: 2 s -> 16 frames -> 3 clips, 1.5 s -> 2, 1 s -> 1,
  // 3 s -> 4.
  std::map<std::string, int> clips;
  for (const auto& s : index["samples"]) {
    ++clips[s["source"].get<std::string>()];
    const Json& c = s["clip"];
    EXPECT_EQ(c["frames"], 5);
    EXPECT_EQ(c["fps"], 8.0);
    EXPECT_NEAR(c["end"].get<double>() - c["start"].get<double>(), 5.0 / 8, 1e-6);
  }
  for (const auto& g : good_videos()) {
    const auto m = static_cast<std::int64_t>(std::floor(g.frames / g.fps * 8 + 1e-6));
    EXPECT_EQ(clips[g.file], m / 5) << g.file;
  }
  // a.mp4 (10 fps) at 8 fps: the first clip shows source frames 0, 1, 2, 3, 5.
  for (const auto& s : index["samples"])
    if (s["source"] == "a.mp4") {
      EXPECT_EQ(s["clip"]["first"], 0);
      EXPECT_EQ(s["clip"]["last"], 5);
      break;
    }
}

// --whole-video: each video one clip of its own length (the largest 4k+1 frames at 8 fps), so
// three videos of three lengths give three latent frame counts; the one too short is skipped.
TEST(Prepare, WholeVideoThreeLengths) {
  const fs::path dir = prepared("whole");
  const Json index = read_json(dir / "index.json");
  const Json settings = index["settings"];
  EXPECT_EQ(index["mode"], "video");
  EXPECT_EQ(settings["whole_video"], true);
  EXPECT_EQ(settings["min_frames"], 5);
  EXPECT_EQ(settings["max_frames"], 129);
  EXPECT_EQ(settings["fps"], 8.0);
  EXPECT_FALSE(settings.contains("num_frames")) << settings.dump();
  EXPECT_FALSE(settings.contains("clips_per_video")) << settings.dump();
  EXPECT_EQ(read_json(dir / "prepare.json")["settings"], settings);
  ASSERT_EQ(index["samples"].size(), whole_videos().size()) << index["samples"].dump(1);
  std::map<std::string, Json> by_source;
  for (const auto& s : index["samples"]) by_source[s["source"].get<std::string>()] = s;
  for (const auto& w : whole_videos()) {
    ASSERT_TRUE(by_source.count(w.file)) << w.file;
    const Json& s = by_source[w.file];
    EXPECT_EQ(s["latent_shape"], Json({16, w.latent_frames, 4, 6})) << w.file;
    const Json& c = s["clip"];
    EXPECT_EQ(c["frames"], w.frames) << w.file;
    EXPECT_EQ(c["available"], w.available) << w.file;
    EXPECT_EQ(c["first"], 0) << w.file;
    EXPECT_NEAR(c["start"].get<double>(), 0.0, 1e-9) << w.file;
    EXPECT_NEAR(c["end"].get<double>(), static_cast<double>(w.frames) / 8, 1e-6) << w.file;
    // The stored tensor has the indexed shape.
    const auto f = wanhost::safetensors::File::open(
        (dir / index["shards"][s["shard"].get<std::size_t>()]["file"].get<std::string>()).string());
    EXPECT_EQ(f.load(s["latent"].get<std::string>()).sizes(),
              (std::vector<std::int64_t>{16, w.latent_frames, 4, 6}))
        << w.file;
  }
  const Json report = read_json(dir / "report.json");
  ASSERT_EQ(report["skipped"].size(), 1u) << report.dump(1);
  EXPECT_EQ(report["skipped"][0]["file"], "short.mp4");
  const std::string why = report["skipped"][0]["reason"];
  EXPECT_NE(why.find("too short"), std::string::npos) << why;
  EXPECT_NE(why.find("gives 2 frame(s) at --fps 8"), std::string::npos) << why;
  EXPECT_NE(why.find("--whole-video needs --min-frames 5"), std::string::npos) << why;
}

// Whole-video settings are part of the folder's settings: the same ones resume, others are refused.
TEST(Prepare, WholeVideoSettingsAreCompared) {
  const fs::path dir = scratch();
  const fs::path out = dir / "out";
  const std::string copy = "cp -a '" + prepared("whole").string() + "' '" + out.string() + "'";
  ASSERT_EQ(std::system(copy.c_str()), 0);
  Result r = run(prepare_args(whole_input(), out, "whole"), dir);
  ASSERT_EQ(r.code, 0) << describe(r);
  const Json report = read_json(out / "report.json");
  EXPECT_EQ(report["shards"]["written"], 0);
  EXPECT_EQ(report["shards"]["reused"], 2);

  r = run(prepare_args(whole_input(), out, "whole", {"--max-frames", "9"}), dir);
  EXPECT_EQ(r.code, 2) << describe(r);
  EXPECT_NE(r.err.find("--max-frames 129 then, 9 now"), std::string::npos) << r.err;
  r = run(prepare_args(whole_input(), out, "whole", {"--min-frames", "9"}), dir);
  EXPECT_EQ(r.code, 2) << describe(r);
  EXPECT_NE(r.err.find("--min-frames 5 then, 9 now"), std::string::npos) << r.err;
  // Fixed-length clips into a folder of whole videos.
  r = run(prepare_args(whole_input(), out, "video"), dir);
  EXPECT_EQ(r.code, 2) << describe(r);
  EXPECT_NE(r.err.find("--whole-video true then, unset now"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--num-frames unset then, 5 now"), std::string::npos) << r.err;
  EXPECT_EQ(read_json(out / "index.json"), read_json(prepared("whole") / "index.json"));
}

TEST(Prepare, ResumesFinishedShards) {
  const fs::path dir = scratch();
  const fs::path out = dir / "out";
  const std::string copy = "cp -a '" + prepared("frames").string() + "' '" + out.string() + "'";
  ASSERT_EQ(std::system(copy.c_str()), 0);
  std::map<std::string, std::string> before;
  for (const auto& e : fs::directory_iterator(out))
    if (e.path().extension() == ".safetensors") before[e.path().filename()] = file_key(e.path());
  ASSERT_EQ(before.size(), 5u);

  Result r = run(prepare_args(kVideos, out, "frames"), dir);
  ASSERT_EQ(r.code, 0) << describe(r);
  Json report = read_json(out / "report.json");
  EXPECT_EQ(report["shards"]["written"], 0);
  EXPECT_EQ(report["shards"]["reused"], 5);
  for (const auto& [name, key] : before) EXPECT_EQ(file_key(out / name), key) << name;

  // A lost shard and a damaged one are made again; the others stay as they are.
  fs::remove(out / "shard-00001.safetensors");
  { std::ofstream(out / "shard-00003.safetensors", std::ios::trunc) << "damaged"; }
  r = run(prepare_args(kVideos, out, "frames"), dir);
  ASSERT_EQ(r.code, 0) << describe(r);
  report = read_json(out / "report.json");
  EXPECT_EQ(report["shards"]["written"], 2);
  EXPECT_EQ(report["shards"]["reused"], 3);
  for (const char* kept :
       {"shard-00000.safetensors", "shard-00002.safetensors", "shard-00004.safetensors"})
    EXPECT_EQ(file_key(out / kept), before[kept]) << kept;
  EXPECT_EQ(read_json(out / "index.json"), read_json(prepared("frames") / "index.json"));

  // Other settings into the same folder: refused, nothing touched.
  r = run(prepare_args(kVideos, out, "frames", {"--height", "64"}), dir);
  EXPECT_EQ(r.code, 2) << describe(r);
  EXPECT_NE(r.err.find("--height 32 then, 64 now"), std::string::npos) << r.err;
}

TEST(Prepare, UsageErrorsExit2) {
  const fs::path dir = scratch();
  const auto expect_usage = [&](std::vector<std::string> args, const std::string& message) {
    const Result r = run(args, dir);
    EXPECT_EQ(r.code, 2) << describe(r);
    EXPECT_NE(r.err.find(message), std::string::npos) << "expected [" << message << "] in\n"
                                                      << r.err;
  };
  const fs::path out = dir / "out";
  auto a = prepare_args(kVideos, out, "video");
  a.insert(a.end(), {"--num-frames", "10"});
  expect_usage(a, "--num-frames 10: must be 4k+1");
  a = prepare_args(kVideos, out, "frames", {"--height", "40"});
  expect_usage(a, "--height 40: must be a positive multiple of 16");
  a = prepare_args(kVideos, out, "frames", {"--width", "50"});
  expect_usage(a, "--width 50: must be a positive multiple of 16");
  a = prepare_args(kVideos, out, "frames", {"--fps", "8"});
  expect_usage(a, "--fps: applies to --mode video only");
  a = prepare_args(kVideos, out, "frames", {"--whole-video"});
  expect_usage(a, "--whole-video: applies to --mode video only");
  a = prepare_args(kVideos, out, "whole", {"--num-frames", "5"});
  expect_usage(a, "--num-frames: cannot be combined with --whole-video");
  a = prepare_args(kVideos, out, "whole", {"--clips-per-video", "2"});
  expect_usage(a, "--clips-per-video: cannot be combined with --whole-video");
  a = prepare_args(kVideos, out, "whole", {"--max-frames", "80"});
  expect_usage(a, "--max-frames 80: must be 4k+1");
  a = prepare_args(kVideos, out, "whole", {"--min-frames", "13", "--max-frames", "9"});
  expect_usage(a, "--min-frames 13: must not exceed --max-frames 9");
  a = prepare_args(kVideos, out, "video", {"--max-frames", "9"});
  expect_usage(a, "--max-frames: applies to --whole-video only");
  a = prepare_args(kVideos, out, "frames", {"--vae-plugin", "fake_text"});
  expect_usage(a, "--vae-plugin fake_text: plugin 'fake_text' is not a video_autoencoder plugin");
  const fs::path bad_model = dir / "model";
  fs::create_directories(bad_model / "vae");
  a = prepare_args(kVideos, out, "frames", {"--model", bad_model.string()});
  expect_usage(a, "no text_encoder/ folder");
  a = prepare_args(dir / "nowhere", out, "frames");
  expect_usage(a, "--input " + (dir / "nowhere").string() + ": not a folder");
  // Usage errors are found before anything is written: not even the output folder exists.
  EXPECT_FALSE(fs::exists(out));
}

TEST(Prepare, FailsWhenNothingCanBePrepared) {
  const fs::path dir = scratch();
  const fs::path in = dir / "in";
  fs::create_directories(in);
  fs::copy_file(kVideos / "garbage.mp4", in / "garbage.mp4");
  fs::copy_file(kVideos / "garbage.txt", in / "garbage.txt");
  fs::copy_file(kVideos / "short.mp4", in / "short.mp4");
  fs::copy_file(kVideos / "short.txt", in / "short.txt");
  const Result r = run(prepare_args(in, dir / "out", "frames"), dir);
  EXPECT_EQ(r.code, 1) << describe(r);
  EXPECT_NE(r.err.find("nothing could be prepared"), std::string::npos) << r.err;
  const Json report = read_json(dir / "out" / "report.json");
  EXPECT_EQ(report["skipped"].size(), 2u);
  EXPECT_FALSE(fs::exists(dir / "out" / "index.json"));
}

TEST(Inspect, TextAndJson) {
  const fs::path dir = prepared("frames");
  const fs::path work = scratch();
  Result r = run({"data", "inspect", dir.string(), "--json"}, work);
  ASSERT_EQ(r.code, 0) << describe(r);
  const Json s = Json::parse(r.out);
  EXPECT_EQ(s["samples"], 25);
  EXPECT_EQ(s["videos"], 5);
  EXPECT_EQ(s["shards"], 5);
  EXPECT_EQ(s["mode"], "frames");
  EXPECT_EQ(s["latent_shapes"]["16x1x4x6"], 25);
  EXPECT_EQ(s["latent_frames"], Json::parse(R"([{"latent_frames": 1, "frames": 1, "count": 25}])"));
  EXPECT_EQ(s["skipped"].size(), kSkipped.size());
  // Token counts over the samples: 5 frames of each video, words + 1 tokens each.
  std::int64_t lo = 1000, hi = 0, total = 0;
  for (const auto& g : good_videos()) {
    lo = std::min(lo, words(g.caption) + 1);
    hi = std::max(hi, words(g.caption) + 1);
  }
  EXPECT_EQ(s["text_tokens"]["min"], lo);
  EXPECT_EQ(s["text_tokens"]["max"], hi);
  for (const auto& b : s["text_tokens"]["histogram"]) total += b["count"].get<std::int64_t>();
  EXPECT_EQ(total, 25);

  r = run({"data", "inspect", dir.string()}, work);
  ASSERT_EQ(r.code, 0) << describe(r);
  EXPECT_NE(r.out.find("25 from 5 videos in 5 shard(s)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[16x1x4x6] x 25"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("skipped     nocap.mp4: missing caption"), std::string::npos) << r.out;

  r = run({"data", "inspect", work.string()}, work);
  EXPECT_EQ(r.code, 2) << describe(r);
  EXPECT_NE(r.err.find("no index.json"), std::string::npos) << r.err;
}

// The histogram of video lengths (latent frames, with the clip's pixel frames) of a folder of
// whole videos, as JSON and as text.
TEST(Inspect, WholeVideoLengthHistogram) {
  const fs::path dir = prepared("whole");
  const fs::path work = scratch();
  Result r = run({"data", "inspect", dir.string(), "--json"}, work);
  ASSERT_EQ(r.code, 0) << describe(r);
  const Json s = Json::parse(r.out);
  EXPECT_EQ(s["samples"], 3);
  EXPECT_EQ(s["latent_frames"], Json::parse(R"([{"latent_frames": 2, "frames": 5, "count": 1},
                                                {"latent_frames": 3, "frames": 9, "count": 1},
                                                {"latent_frames": 4, "frames": 13, "count": 1}])"))
      << s.dump(1);
  r = run({"data", "inspect", dir.string()}, work);
  ASSERT_EQ(r.code, 0) << describe(r);
  EXPECT_NE(r.out.find("whole videos of 5-129 frames at 8.0 fps"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("frames      latent (pixel) -> samples"), std::string::npos) << r.out;
  for (const char* row : {"\n      2 (5)    #", "\n      3 (9)    #", "\n      4 (13)   #"})
    EXPECT_NE(r.out.find(row), std::string::npos) << "[" << row << "] not in\n" << r.out;
  EXPECT_NE(r.out.find("skipped     short.mp4: too short"), std::string::npos) << r.out;
}

TEST(LatentDataset, ServesTheIndexedSamples) {
  const fs::path dir = prepared("video");
  wanhost::core::PluginRegistry reg(
      {{(fs::path(WANHOST_BINARY_DIR) / "plugins").string(), "test"}});
  const auto& d = reg.load("latent_dataset");
  ASSERT_TRUE(d.factories.create_data_source);
  wanhost::PluginConfig cfg;
  cfg.plugin = "latent_dataset";
  cfg.pointer = "/data/latent_dataset";
  cfg.values = {{"path", dir.string()}, {"mode", "video"}, {"max_samples", 0}, {"open_files", 2}};
  auto src = d.factories.create_data_source(cfg);
  const Json index = read_json(dir / "index.json");
  ASSERT_EQ(src->size(), static_cast<std::int64_t>(index["samples"].size()));
  // Back and forth over the shards with 2 kept open, so shards are closed and opened again.
  std::vector<std::int64_t> order;
  for (std::int64_t i = src->size() - 1; i >= 0; i -= 2) order.push_back(i);
  for (std::int64_t i = 0; i < src->size(); i += 3) order.push_back(i);
  order.push_back(src->size() - 1);
  order.push_back(0);
  for (const std::int64_t i : order) {
    const Json& e = index["samples"][static_cast<std::size_t>(i)];
    const wanhost::Sample s = src->get(i);
    EXPECT_EQ(s.index, i);
    EXPECT_EQ(s.caption, e["caption"].get<std::string>());
    EXPECT_EQ(s.latent.scalar_type(), at::kFloat);
    EXPECT_EQ(s.text.size(0), e["text_tokens"].get<std::int64_t>());
    const auto f = wanhost::safetensors::File::open(
        (dir / index["shards"][e["shard"].get<std::size_t>()]["file"].get<std::string>()).string());
    EXPECT_TRUE(s.latent.equal(f.load(e["latent"].get<std::string>()).to(at::kFloat)));
    const wanhost::PackSegment g = src->grid(i);
    EXPECT_EQ(g.frames, 2);
    EXPECT_EQ(g.height, 4);
    EXPECT_EQ(g.width, 6);
  }
  EXPECT_NE(src->describe().find("clips from 5 videos"), std::string::npos) << src->describe();
  EXPECT_NE(src->describe().find("latent [16, 2, 4, 6], latent frames {2: 11}"), std::string::npos)
      << src->describe();
  EXPECT_THROW(src->get(src->size()), std::out_of_range);

  cfg.values["max_samples"] = 3;
  EXPECT_EQ(d.factories.create_data_source(cfg)->size(), 3);
  cfg.values["mode"] = "frames";
  try {
    d.factories.create_data_source(cfg);
    ADD_FAILURE() << "a video folder was accepted as frames";
  } catch (const wanhost::ConfigError& e) {
    EXPECT_EQ(e.pointer(), "/data/latent_dataset/mode");
  }
  cfg.values["mode"] = "any";
  cfg.values["path"] = (dir / "shard-00000.safetensors").string();
  EXPECT_THROW(d.factories.create_data_source(cfg), wanhost::ConfigError);
}

// A folder of whole videos: grid(i) and get(i) give each sample's own length; describe() gives
// the histogram of latent frame counts.
TEST(LatentDataset, WholeVideosOfMixedLengths) {
  const fs::path dir = prepared("whole");
  wanhost::core::PluginRegistry reg(
      {{(fs::path(WANHOST_BINARY_DIR) / "plugins").string(), "test"}});
  const auto& d = reg.load("latent_dataset");
  wanhost::PluginConfig cfg;
  cfg.plugin = "latent_dataset";
  cfg.pointer = "/data/latent_dataset";
  cfg.values = {{"path", dir.string()}, {"mode", "video"}, {"max_samples", 0}, {"open_files", 16}};
  auto src = d.factories.create_data_source(cfg);
  const Json index = read_json(dir / "index.json");
  ASSERT_EQ(src->size(), 3);
  std::set<std::int64_t> lengths;
  for (std::int64_t i = 0; i < 3; ++i) {
    const Json& e = index["samples"][static_cast<std::size_t>(i)];
    const std::int64_t want = e["latent_shape"][1];
    EXPECT_EQ(src->grid(i).frames, want);
    EXPECT_EQ(src->get(i).latent.size(1), want);
    lengths.insert(want);
  }
  EXPECT_EQ(lengths, (std::set<std::int64_t>{2, 3, 4}));
  EXPECT_NE(src->describe().find("3 clips from 3 videos"), std::string::npos) << src->describe();
  EXPECT_NE(src->describe().find("latent [16, 2-4, 4, 6], latent frames {2: 1, 3: 1, 4: 1}"),
            std::string::npos)
      << src->describe();
}

// Stage 2 on whole videos: the three lengths in one micro batch of 3 go through the tiny model
// as one pack (the packed collator); the dense collator refuses the mixed shapes, and takes them
// one at a time (micro batch 1) with the same losses as the pack (attention never crosses
// samples in a pack).
TEST(Train, WholeVideosPackedStage) {
  const fs::path whole = prepared("whole");
  const fs::path dir = scratch();
  Json manifest = Json::parse(R"({
    "data": {"plugin": "latent_dataset", "latent_dataset": {"path": ""}},
    "collator": {"plugin": "packed"},
    "stages": [{"name": "t2v", "steps": 3, "global_batch": 3, "micro_batch": 3,
                "data": {"latent_dataset": {"mode": "video"}},
                "optimizer": {"lr": 0.001, "clip_grad_norm": 1.0},
                "lr_schedule": {"type": "constant"}}],
    "checkpoint": {"every_steps": 100},
    "logging": {"every_steps": 1}})");
  manifest["data"]["latent_dataset"]["path"] = whole.string();
  const fs::path file = dir / "whole.json";
  std::ofstream(file) << manifest.dump(2);
  const Result r = run({"run", file.string(), "--out", (dir / "run").string()}, dir);
  ASSERT_EQ(r.code, 0) << describe(r);
  const auto metrics = [](const fs::path& run_dir) {
    std::ifstream in(run_dir / "metrics.jsonl");
    std::vector<Json> steps;
    for (std::string line; std::getline(in, line);) {
      const Json j = Json::parse(line);
      if (j.contains("loss")) steps.push_back(j);
    }
    return steps;
  };
  const std::vector<Json> steps = metrics(dir / "run");
  ASSERT_EQ(steps.size(), 3u);
  for (const auto& s : steps) {
    EXPECT_EQ(s["stage"], "t2v") << s.dump();
    EXPECT_TRUE(std::isfinite(s["loss"].get<double>())) << s.dump();
    EXPECT_TRUE(std::isfinite(s["grad_norm"].get<double>())) << s.dump();
    // Every step trains all three at their own lengths in one pack: the tiny DiT's 2x2 patches
    // make 4x6 latents 6 tokens a latent frame, (2 + 3 + 4) x 6 = 54 tokens.
    EXPECT_EQ(s["packs"], 1) << s.dump();
    EXPECT_EQ(s["samples"], 3) << s.dump();
    EXPECT_EQ(s["tokens"], 54) << s.dump();
  }
  EXPECT_NE(r.err.find("latent frames {2: 1, 3: 1, 4: 1}"), std::string::npos) << r.err;

  // The same micro batch through the dense collator: the three shapes cannot be stacked.
  const Result dense = run({"run", file.string(), "--out", (dir / "dense").string(), "--set",
                            "collator.plugin=\"dense\""},
                           dir);
  EXPECT_NE(dense.code, 0) << describe(dense);
  EXPECT_NE(dense.err.find("use a packing collator for mixed shapes"), std::string::npos)
      << dense.err;
  const Result one = run({"run", file.string(), "--out", (dir / "one").string(), "--set",
                          "collator.plugin=\"dense\"", "--set", "stages.0.micro_batch=1"},
                         dir);
  ASSERT_EQ(one.code, 0) << describe(one);
  const std::vector<Json> single = metrics(dir / "one");
  ASSERT_EQ(single.size(), steps.size());
  for (std::size_t i = 0; i < steps.size(); ++i) {
    EXPECT_EQ(single[i]["packs"], 3) << single[i].dump();  // three micro batches of one
    const double a = steps[i]["loss"].get<double>(), b = single[i]["loss"].get<double>();
    EXPECT_NEAR(a, b, 1e-5 * std::abs(b)) << "step " << i + 1;
  }
}

TEST(Train, TwoStagesOnPreparedFolders) {
  const fs::path frames = prepared("frames"), video = prepared("video");
  const fs::path dir = scratch();
  const std::vector<std::string> args = {
      "run",
      "--plugins",
      "latent_dataset",
      "--out",
      (dir / "run").string(),
      "--set",
      "data.latent_dataset.path=" + Json(frames.string()).dump(),
      "--set",
      "stages.1.data.latent_dataset.path=" + Json(video.string()).dump(),
      "--set",
      "stages.1.data.latent_dataset.mode=\"video\"",
      "--set",
      "stages.0.steps=3",
      "--set",
      "stages.1.steps=2",
      "--set",
      "stages.0.global_batch=4",
      "--set",
      "stages.0.micro_batch=2",
      "--set",
      "stages.1.global_batch=2",
      "--set",
      "stages.1.micro_batch=1",
      "--set",
      "checkpoint.every_steps=100"};
  const Result r = run(args, dir);
  ASSERT_EQ(r.code, 0) << describe(r);
  std::ifstream in(dir / "run" / "metrics.jsonl");
  std::vector<Json> steps;
  for (std::string line; std::getline(in, line);) {
    const Json j = Json::parse(line);
    if (j.contains("loss")) steps.push_back(j);
  }
  ASSERT_EQ(steps.size(), 5u);
  for (const auto& s : steps) EXPECT_TRUE(std::isfinite(s["loss"].get<double>())) << s.dump();
  EXPECT_NE(r.err.find("latent dataset " + frames.string() + ": 25 frames"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("latent dataset " + video.string() + ": 11 clips"), std::string::npos)
      << r.err;

  // A missing path is a configuration error naming the setting.
  const Result bad =
      run({"run", "--plugins", "latent_dataset", "--out", (dir / "bad").string()}, dir);
  EXPECT_EQ(bad.code, 2) << describe(bad);
  EXPECT_NE(bad.err.find("/latent_dataset/path"), std::string::npos) << bad.err;
}

// The recipe resolves against the real plugins; `validate` also builds its data sources, so until
// the stages point at prepared folders it names the first missing one (where the recipe sets it).
TEST(Recipe, DatasetRecipeValidates) {
  const fs::path dir = scratch();
  const std::string recipe =
      (fs::path(WANHOST_SOURCE_DIR) / "configs" / "wan21-1.3b-dataset.json").string();
  const Result r = run({"validate", recipe}, dir);
  EXPECT_EQ(r.code, 2) << describe(r);
  EXPECT_NE(r.err.find("config error at /stages/0/data/latent_dataset/path (plugin "
                       "'latent_dataset'): 'data/wan21-frames' is not a folder"),
            std::string::npos)
      << r.err;
  // 80 ranks split both stages' global batches (2560 = 80 x 32, 80 = 80 x 1), 3 do not.
  const Result w = run({"validate", recipe, "--world-size", "3"}, dir);
  EXPECT_EQ(w.code, 2) << describe(w);
  EXPECT_NE(w.err.find("config error at /stages/0/global_batch"), std::string::npos) << w.err;
}

// The pixel_vae plugin through `wanhost model forward`: latents have the Wan VAE's grid (8x8
// cells, the first frame alone then groups of 4 frames), channels 0-2 are the cells' mean RGB,
// and decode shows them back as pixels, so decode(encode(v)) is v averaged over the cells.
TEST(PixelVae, DecodeOfEncodeIsTheCellMean) {
  const fs::path dir = scratch();
  fs::create_directories(dir / "vae");
  std::ofstream(dir / "vae" / "config.json") << R"({"z_dim": 6})";
  at::manual_seed(0);
  const at::Tensor video = at::rand({2, 3, 9, 16, 24}) * 2 - 1;
  wanhost::safetensors::save((dir / "video.safetensors").string(), {{"video", video}});
  const auto forward = [&](const std::string& entry, const std::string& in, const std::string& out,
                           const std::string& name) {
    const Result r =
        run({"model", "forward", "--plugin", "pixel_vae", "--weights", (dir / "vae").string(),
             "--entry", entry, "--inputs", (dir / in).string(), "--output", (dir / out).string()},
            dir);
    EXPECT_EQ(r.code, 0) << describe(r);
    return wanhost::safetensors::File::open((dir / out).string()).load(name);
  };
  const at::Tensor lat = forward("encode", "video.safetensors", "latents.safetensors", "latents");
  ASSERT_EQ(lat.sizes(), (std::vector<std::int64_t>{2, 6, 3, 2, 3}));
  // Latent frame 1 of cell (1, 2): frames 1-4, rows 8-15, columns 16-23.
  const at::Tensor cell = video.slice(2, 1, 5).slice(3, 8, 16).slice(4, 16, 24).mean({2, 3, 4});
  EXPECT_TRUE(
      at::allclose(lat.select(2, 1).select(2, 1).select(2, 2).slice(1, 0, 3), cell, 1e-5, 1e-6));
  const at::Tensor first = video.select(2, 0).slice(2, 0, 8).slice(3, 0, 8).mean({2, 3});
  EXPECT_TRUE(
      at::allclose(lat.select(2, 0).select(2, 0).select(2, 0).slice(1, 0, 3), first, 1e-5, 1e-6));

  wanhost::safetensors::save((dir / "lat.safetensors").string(), {{"latents", lat}});
  const at::Tensor back = forward("decode", "lat.safetensors", "back.safetensors", "video");
  ASSERT_EQ(back.sizes(), video.sizes());
  EXPECT_TRUE(at::allclose(back.slice(2, 1, 5).slice(3, 8, 16).slice(4, 16, 24),
                           cell.view({2, 3, 1, 1, 1}).expand({2, 3, 4, 8, 8}), 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(back.select(2, 0).slice(2, 0, 8).slice(3, 0, 8),
                           first.view({2, 3, 1, 1}).expand({2, 3, 8, 8}), 1e-5, 1e-6));

  // A folder without config.json is refused by name.
  fs::create_directories(dir / "empty");
  const Result bad =
      run({"model", "forward", "--plugin", "pixel_vae", "--weights", (dir / "empty").string(),
           "--entry", "encode", "--inputs", (dir / "video.safetensors").string(), "--output",
           (dir / "x.safetensors").string()},
          dir);
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.err.find("pixel_vae: no config.json in"), std::string::npos) << bad.err;
}
