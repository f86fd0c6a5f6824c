// `wanhost generate` end to end through the program.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>

#include "parity_util.hpp"
#include "wanhost/kit/safetensors.hpp"
#if WANHOST_WITH_FFMPEG
#include "prepare/video_reader.hpp"
#endif

namespace fs = std::filesystem;
using wanhost::testing::read_json;
using wanhost::testing::run_wanhost;

namespace {

const fs::path kRef = fs::path(WANHOST_BINARY_DIR) / "reference" / "generate";

// GTEST_SKIP returns from the function it is written in only, so each test skips itself:
//   if (!have_reference()) GTEST_SKIP() << no_reference();
bool have_reference() {
  return fs::exists(kRef / "DONE");
}

std::string no_reference() {
  return "no reference data in " + kRef.string() +
         " (needs the Python packages of tests/reference/requirements.txt)";
}

fs::path scratch(const std::string& name) {
  const fs::path dir = fs::path(WANHOST_TEST_TMP) / name;
  fs::remove_all(dir);
  fs::create_directories(dir.parent_path());
  return dir;
}

std::string quoted(const std::string& s) {
  return "'" + s + "'";
}

// The generated latents of a folder, samples stacked in order.
at::Tensor generated(const fs::path& out) {
  const auto all =
      wanhost::safetensors::File::open((out / "latents.safetensors").string()).load_all();
  std::vector<at::Tensor> v;
  for (const auto& [k, t] : all) v.push_back(t);  // keys "000", "001", ... sort in order
  return at::stack(v);
}

double max_rel(const at::Tensor& got, const at::Tensor& want) {
  return ((got.to(at::kDouble) - want.to(at::kDouble)).abs().max() /
          want.to(at::kDouble).abs().max())
      .item<double>();
}

std::string case_args(const nlohmann::json& c) {
  std::string a = "--pipeline " + (kRef / "pipeline").string();
  for (const auto& p : c["prompts"]) a += " --prompt " + quoted(p.get<std::string>());
  a += " --negative-prompt " + quoted(c["negative"].get<std::string>());
  a += " --size " + std::to_string(c["width"].get<int>()) + "x" +
       std::to_string(c["height"].get<int>());
  a += " --frames " + std::to_string(c["frames"].get<int>());
  a += " --steps " + std::to_string(c["steps"].get<int>());
  a += " --guidance " + std::to_string(c["guidance"].get<double>());
  a += " --sampler " + c["sampler"].get<std::string>();
  a += " --initial-noise " + (kRef / c["noise"].get<std::string>()).string();
  return a + " --batch 2 --device cpu";
}

class GenerateParity : public ::testing::TestWithParam<std::string> {};

// Final latents within 1e-4 (max abs difference over the reference's max abs value, fp32) of
// the Diffusers WanPipeline with the same initial noise: UniPC and Euler, with and without
// classifier-free guidance (negative prompt), videos and an image.
TEST_P(GenerateParity, FinalLatentsMatchDiffusersWanPipeline) {
  if (!have_reference()) GTEST_SKIP() << no_reference();
  const auto cases = read_json((kRef / "cases.json").string());
  const auto& c = cases.at(GetParam());
  const fs::path out = scratch("parity_" + GetParam());
  const auto r =
      run_wanhost("--log-level warn generate " + case_args(c) + " --out " + out.string());
  ASSERT_EQ(r.code, 0) << r.output;
  const at::Tensor want =
      wanhost::safetensors::File::open((kRef / (GetParam() + ".safetensors")).string())
          .load_all()
          .at("latents");
  const at::Tensor got = generated(out);
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_LT(max_rel(got, want), 1e-4) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Cases, GenerateParity,
                         ::testing::Values("unipc_guided", "unipc_unguided", "euler_guided",
                                           "euler_unguided", "unipc_image"));

bool starts_with(const fs::path& file, const std::string& magic, std::size_t at = 0) {
  std::ifstream in(file, std::ios::binary);
  std::string head(at + magic.size(), '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  return in && head.substr(at) == magic;
}

// Videos become H.264 MP4 files of the right size and frame count, images PNG files, and
// samples.jsonl says which prompt each file shows.
TEST(Generate, WritesImagesVideosLatentsAndTheirRecord) {
  if (!have_reference()) GTEST_SKIP() << no_reference();
  const auto cases = read_json((kRef / "cases.json").string());
  const fs::path video = scratch("files_video"), image = scratch("files_image");
  auto r = run_wanhost("--log-level warn generate " + case_args(cases["unipc_guided"]) + " --out " +
                       video.string());
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_wanhost("--log-level warn generate " + case_args(cases["unipc_image"]) + " --out " +
                  image.string());
  ASSERT_EQ(r.code, 0) << r.output;

  EXPECT_TRUE(starts_with(image / "000.png", "\x89PNG\r\n\x1a\n"));
  EXPECT_FALSE(fs::exists(image / "000.mp4"));
  EXPECT_TRUE(starts_with(video / "001.frames.png", "\x89PNG\r\n\x1a\n"));
  for (const char* f : {"000.mp4", "001.mp4"}) {
    EXPECT_TRUE(starts_with(video / f, "ftyp", 4)) << f;
#if WANHOST_WITH_FFMPEG
    const auto probe = wanhost::core::data::probe_video((video / f).string());
    EXPECT_EQ(probe.codec, "h264");
    EXPECT_EQ(probe.width, 48);
    EXPECT_EQ(probe.height, 32);
    EXPECT_EQ(probe.frames(), 5);
#endif
  }
  std::ifstream in(video / "samples.jsonl");
  std::string line;
  std::vector<nlohmann::json> recs;
  while (std::getline(in, line)) recs.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[1]["prompt"], cases["unipc_guided"]["prompts"][1]);
  EXPECT_EQ(recs[1]["file"], "001.mp4");
  EXPECT_EQ(recs[1]["frames"], 5);
  EXPECT_EQ(recs[0]["negative_prompt"], cases["unipc_guided"]["negative"]);
  // Writing into a folder that already holds samples is refused: nothing is overwritten.
  r = run_wanhost("--log-level warn generate " + case_args(cases["unipc_image"]) + " --out " +
                  image.string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("already holds generated samples"), std::string::npos) << r.output;
}

// Without --initial-noise each sample draws its own noise from (seed, its index): the batch size
// does not change a sample, the seed does.
TEST(Generate, ASamplesNoiseDependsOnTheSeedNotOnTheBatch) {
  if (!have_reference()) GTEST_SKIP() << no_reference();
  const std::string base = "--log-level warn generate --pipeline " + (kRef / "pipeline").string() +
                           " --prompt 'a red square' --prompt 'a blue circle' --size 48x32"
                           " --frames 1 --steps 3 --guidance 2 --device cpu";
  const fs::path a = scratch("noise_b1"), b = scratch("noise_b2"), c = scratch("noise_seed");
  ASSERT_EQ(run_wanhost(base + " --batch 1 --out " + a.string()).code, 0);
  ASSERT_EQ(run_wanhost(base + " --batch 2 --out " + b.string()).code, 0);
  ASSERT_EQ(run_wanhost(base + " --batch 2 --seed 5 --out " + c.string()).code, 0);
  EXPECT_LT(max_rel(generated(a), generated(b)), 1e-5);
  EXPECT_GT(max_rel(generated(a), generated(c)), 0.1);
}

// Flag mistakes stop before any work with exit code 2 and a message naming the flag.
TEST(Generate, BadFlagsAreRefusedNamingTheFlag) {
  if (!have_reference()) GTEST_SKIP() << no_reference();
  const std::string pipe = " --pipeline " + (kRef / "pipeline").string();
  const fs::path out = scratch("bad_flags");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--prompt x --out " + out.string(), "no model"},
      {pipe + " --out " + out.string(), "what to generate"},
      {pipe + " --prompt x --size 50x32 --out " + out.string(), "--size 50x32"},
      {pipe + " --prompt x --size 48 --out " + out.string(), "--size 48"},
      {pipe + " --prompt x --frames 4 --out " + out.string(), "--frames 4"},
      {pipe + " --prompt x --steps 0 --out " + out.string(), "--steps 0"},
      {pipe + " --prompt x --run /a --model /b --out " + out.string(), "give one of them"},
      {pipe + " --prompt x --model /nonexistent --out " + out.string(), "--model /nonexistent"},
      {pipe + " --prompt x --frames 1 --size 48x32 --initial-noise " +
           (kRef / "noise.safetensors").string() + " --out " + out.string(),
       "--initial-noise"},
      {pipe + " --prompt x --count 2 --out " + out.string(), "--count"},
  };
  for (const auto& [args, want] : cases) {
    const auto r = run_wanhost("--log-level warn generate " + args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(want), std::string::npos) << args << "\n" << r.output;
  }
  EXPECT_FALSE(fs::exists(out / "samples.jsonl"));
}

// A trained run generates from its export and from its checkpoints: the export and the last
// checkpoint give the same samples, an earlier checkpoint other ones; --from-run-data takes the
// run's own (synthetic) samples.
TEST(Generate, FromARunsExportAndCheckpoints) {
  const fs::path run = scratch("run");
  const std::string settings =
      " --set stages.0.steps=4 --set stages.1.steps=2 --set checkpoint.every_steps=2"
      " --set checkpoint.keep_last=10 --set logging.progress=\"off\" --set run.threads=1"
      " --set stages.0.optimizer.lr=0.01 --set stages.0.lr_schedule.type=constant";
  auto r = run_wanhost("--log-level warn run --out " + run.string() + settings);
  ASSERT_EQ(r.code, 0) << r.output;
  ASSERT_TRUE(fs::exists(run / "export" / "config.json"));
  const std::string common = " --from-run-data --count 2 --steps 3 --guidance 1 --device cpu";
  const fs::path e = scratch("from_export"), last = scratch("from_last"),
                 early = scratch("from_early");
  r = run_wanhost("--log-level warn generate --run " + run.string() + common + " --out " +
                  e.string());
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_wanhost("--log-level warn generate --checkpoint " +
                  (run / "checkpoints" / "step-6").string() + common + " --out " + last.string());
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_wanhost("--log-level warn generate --checkpoint " +
                  (run / "checkpoints" / "step-2").string() + common + " --out " + early.string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(max_rel(generated(e), generated(last)), 0.0);
  EXPECT_GT(max_rel(generated(e), generated(early)), 1e-3);
  EXPECT_EQ(generated(e).size(0), 2);
  // Without a pipeline folder, a weightless VAE plugin renders the run's samples and the
  // training latents beside them.
  const fs::path shown = scratch("rendered");
  r = run_wanhost("--log-level warn generate --run " + run.string() + common +
                  " --vae-plugin pixel_vae --out " + shown.string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(max_rel(generated(shown), generated(e)), 0.0);
  EXPECT_TRUE(fs::exists(shown / "000.mp4") || fs::exists(shown / "000.frames.png") ||
              fs::exists(shown / "000.png"));
  EXPECT_TRUE(fs::exists(shown / "000.reference.mp4") ||
              fs::exists(shown / "000.reference.frames.png") ||
              fs::exists(shown / "000.reference.png"));
}

}  // namespace
