// Unit tests of `wanhost prepare`'s pure parts: frame selection, clip planning, captions, the
// resize geometry and the flag checks.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "prepare/frame_plan.hpp"
#include "prepare/prepare.hpp"
#include "prepare/video_reader.hpp"
#include "wanhost/errors.hpp"

namespace fs = std::filesystem;
using namespace wanhost::core::data;

namespace {

std::vector<double> times_at(double fps, int n) {
  std::vector<double> t;
  for (int i = 0; i < n; ++i) t.push_back(i / fps);
  return t;
}

fs::path scratch() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir =
      fs::path(WANHOST_TEST_TMP) / (std::string(info->test_suite_name()) + "." + info->name());
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(dir)) fs::remove(e.path());
  return dir;
}

void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

std::string usage_error(const PrepareOptions& o) {
  try {
    validate_options(o);
  } catch (const wanhost::UsageError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(EvenFrames, MatchesIntLinspace) {
  // int(numpy.linspace(0, 19, 5)) = 0, 4, 9, 14, 19
  EXPECT_EQ(even_frames(20, 5), (std::vector<std::int64_t>{0, 4, 9, 14, 19}));
  // int(numpy.linspace(0, 24, 5)) = 0, 6, 12, 18, 24
  EXPECT_EQ(even_frames(25, 5), (std::vector<std::int64_t>{0, 6, 12, 18, 24}));
  EXPECT_EQ(even_frames(7, 1), (std::vector<std::int64_t>{0}));
  EXPECT_EQ(even_frames(5, 5), (std::vector<std::int64_t>{0, 1, 2, 3, 4}));
  EXPECT_TRUE(even_frames(4, 5).empty());
  // 40 of 121 frames: every third, last one included.
  const auto many = even_frames(121, 41);
  EXPECT_EQ(many.back(), 120);
  EXPECT_EQ(many[1], 3);
}

TEST(PlanClips, SourceRateUsesConsecutiveFrames) {
  std::int64_t m = 0;
  const auto clips = plan_clips(times_at(10, 20), 0.1, 5, 0, 1, &m);
  EXPECT_EQ(m, 20);
  ASSERT_EQ(clips.size(), 1u);
  EXPECT_EQ(clips[0].frames, (std::vector<std::int64_t>{0, 1, 2, 3, 4}));
  EXPECT_NEAR(clips[0].end, 0.5, 1e-9);
}

TEST(PlanClips, ResamplesToTargetRate) {
  // 10 fps -> 8 fps: target frame j at j/8 s shows source frame floor(j * 10 / 8).
  std::int64_t m = 0;
  const auto clips = plan_clips(times_at(10, 20), 0.1, 5, 8, 0, &m);
  EXPECT_EQ(m, 16);             // 2 s at 8 fps
  ASSERT_EQ(clips.size(), 3u);  // 16 / 5 whole clips
  EXPECT_EQ(clips[0].frames, (std::vector<std::int64_t>{0, 1, 2, 3, 5}));
  // Spread evenly from start to end without overlap: starts at 0, 5.5 -> 6 (rounded), 11.
  EXPECT_EQ(clips[1].frames.front(), 7);  // target 6 at 0.75 s shows source frame 7
  EXPECT_NEAR(clips[1].start, 0.75, 1e-9);
  EXPECT_NEAR(clips[2].start, 11.0 / 8.0, 1e-9);
  EXPECT_EQ(clips[2].frames.back(), 18);  // target 15 at 1.875 s
  EXPECT_NEAR(clips[2].end, 2.0, 1e-9);
  for (std::size_t c = 1; c < clips.size(); ++c)
    EXPECT_GE(clips[c].start, clips[c - 1].end - 1e-9) << "clips overlap";
  // Upsampling repeats frames: 4 fps source at 8 fps.
  const auto up = plan_clips(times_at(4, 4), 0.25, 5, 8, 1);
  ASSERT_EQ(up.size(), 1u);
  EXPECT_EQ(up[0].frames, (std::vector<std::int64_t>{0, 0, 1, 1, 2}));
}

TEST(PlanClips, ClipCountAndTooShort) {
  EXPECT_EQ(plan_clips(times_at(10, 20), 0.1, 5, 8, 2).size(), 2u);
  EXPECT_EQ(plan_clips(times_at(10, 20), 0.1, 5, 8, 9).size(), 3u);  // no more than fit
  std::int64_t m = 0;
  EXPECT_TRUE(plan_clips(times_at(10, 3), 0.1, 5, 8, 1, &m).empty());
  EXPECT_EQ(m, 2);
  EXPECT_TRUE(plan_clips(times_at(10, 4), 0.1, 5, 0, 1).empty());
}

TEST(PlanWholeVideo, LargestFourKPlusOneFromTheStart) {
  // 20 frames at 10 fps, every source frame: 20 available -> 17 = 4 * 4 + 1, frames 0..16.
  std::int64_t m = 0;
  auto w = plan_whole_video(times_at(10, 20), 0.1, 0, 5, 129, 4, &m);
  EXPECT_EQ(m, 20);
  ASSERT_EQ(w.size(), 1u);
  ASSERT_EQ(w[0].frames.size(), 17u);
  for (std::int64_t i = 0; i < 17; ++i) EXPECT_EQ(w[0].frames[static_cast<std::size_t>(i)], i);
  EXPECT_NEAR(w[0].start, 0.0, 1e-9);
  EXPECT_NEAR(w[0].end, 1.7, 1e-9);
  // Resampled to 8 fps: 2 s -> 16 frames -> 13; target frame j shows source floor(j * 10 / 8).
  w = plan_whole_video(times_at(10, 20), 0.1, 8, 5, 129, 4, &m);
  EXPECT_EQ(m, 16);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].frames, (std::vector<std::int64_t>{0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15}));
  EXPECT_NEAR(w[0].end, 13.0 / 8.0, 1e-9);
  // Exactly 4k+1 available: all of them.
  w = plan_whole_video(times_at(25, 25), 0.04, 0, 5, 129, 4);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].frames.size(), 25u);
  EXPECT_EQ(w[0].frames.back(), 24);
}

TEST(PlanWholeVideo, CappedByMaxFramesAndSkippedBelowMinFrames) {
  // 300 frames at 30 fps (10 s) at 16 fps: 160 available, capped to 129 from the start (8 s).
  std::int64_t m = 0;
  auto w = plan_whole_video(times_at(30, 300), 1.0 / 30, 16, 5, 129, 4, &m);
  EXPECT_EQ(m, 160);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].frames.size(), 129u);
  EXPECT_EQ(w[0].frames.front(), 0);
  EXPECT_EQ(w[0].frames.back(), 240);  // target 128 at 8 s shows source frame 240
  EXPECT_NEAR(w[0].end, 129.0 / 16.0, 1e-9);
  // A cap of 9 on 20 frames: 9.
  w = plan_whole_video(times_at(10, 20), 0.1, 0, 5, 9, 4);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].frames.size(), 9u);
  // 8 available -> 5 frames; with --min-frames 9 that is too few.
  EXPECT_EQ(plan_whole_video(times_at(10, 8), 0.1, 0, 5, 129, 4).at(0).frames.size(), 5u);
  EXPECT_TRUE(plan_whole_video(times_at(10, 8), 0.1, 0, 9, 129, 4, &m).empty());
  EXPECT_EQ(m, 8);
  // 4 frames give only 1 (4 * 0 + 1): below the default minimum of 5, kept with --min-frames 1.
  EXPECT_TRUE(plan_whole_video(times_at(10, 4), 0.1, 0, 5, 129, 4).empty());
  EXPECT_EQ(plan_whole_video(times_at(10, 4), 0.1, 0, 1, 129, 4).at(0).frames.size(), 1u);
  EXPECT_TRUE(plan_whole_video({}, 0.1, 0, 1, 129, 4, &m).empty());
  EXPECT_EQ(m, 0);
}

TEST(CoverAndCrop, KeepsAspectAndCentres) {
  // 128x48 into 48x32: scale 2/3 -> 85x32, crop 48 wide from x = 18.
  auto g = cover_and_crop(128, 48, 1.0, 32, 48);
  EXPECT_EQ(g.scaled_height, 32);
  EXPECT_EQ(g.scaled_width, 85);
  EXPECT_EQ(g.crop_x, 18);
  EXPECT_EQ(g.crop_y, 0);
  // Portrait 48x64 into 48 wide, 32 high: scale 1 -> crop 32 rows from y = 16.
  g = cover_and_crop(48, 64, 1.0, 32, 48);
  EXPECT_EQ(g.scaled_width, 48);
  EXPECT_EQ(g.scaled_height, 64);
  EXPECT_EQ(g.crop_y, 16);
  // Anamorphic pixels: 720x480 with SAR 32/27 displays as 853x480.
  g = cover_and_crop(720, 480, 32.0 / 27.0, 240, 416);
  EXPECT_EQ(g.scaled_height, 240);
  EXPECT_EQ(g.scaled_width, 427);
  // Upscaling a small frame.
  g = cover_and_crop(64, 48, 1.0, 240, 416);
  EXPECT_EQ(g.scaled_width, 416);
  EXPECT_EQ(g.scaled_height, 312);
}

TEST(Captions, AllThreeFormsAndPrecedence) {
  const fs::path dir = scratch();
  write(dir / "a.txt", "  hello \n  world\t ");
  write(dir / "b.mp4.txt", "named with extension");
  write(dir / "c.json", R"({"caption": "from json", "x": 1})");
  write(dir / "d.txt", "txt wins");
  write(dir / "d.json", R"({"caption": "json loses"})");
  write(dir / "bad.json", R"({"caption": 5})");
  write(dir / "broken.json", R"({"caption": )");
  write(dir / "empty.txt", " \n ");
  write(dir / "captions.jsonl",
        "{\"file\": \"sub/e.mkv\", \"caption\": \"by path\"}\n"
        "not json\n"
        "{\"file\": \"f.avi\", \"caption\": \"by name\"}\n"
        "{\"file\": \"x/g.mp4\", \"caption\": \"one\"}\n"
        "{\"file\": \"y/g.mp4\", \"caption\": \"two\"}\n"
        "{\"caption\": \"no file\"}\n");
  CaptionFinder f(dir);
  ASSERT_EQ(f.problems().size(), 2u);
  EXPECT_NE(f.problems()[0].find("captions.jsonl:2: invalid JSON"), std::string::npos);
  EXPECT_NE(f.problems()[1].find("captions.jsonl:6"), std::string::npos);
  std::string why;
  EXPECT_EQ(f.find(dir / "a.mp4", &why).value_or("-"), "hello world");
  EXPECT_EQ(f.find(dir / "b.mp4", &why).value_or("-"), "named with extension");
  EXPECT_EQ(f.find(dir / "c.webm", &why).value_or("-"), "from json");
  EXPECT_EQ(f.find(dir / "d.mp4", &why).value_or("-"), "txt wins");
  EXPECT_EQ(f.find(dir / "sub" / "e.mkv", &why).value_or("-"), "by path");
  EXPECT_EQ(f.find(dir / "other" / "f.avi", &why).value_or("-"), "by name");
  EXPECT_EQ(f.find(dir / "x" / "g.mp4", &why).value_or("-"), "one");
  EXPECT_FALSE(f.find(dir / "z" / "g.mp4", &why));
  EXPECT_NE(why.find("more than once"), std::string::npos) << why;
  EXPECT_FALSE(f.find(dir / "bad.mp4", &why));
  EXPECT_NE(why.find("/caption"), std::string::npos) << why;
  EXPECT_FALSE(f.find(dir / "broken.mp4", &why));
  EXPECT_NE(why.find("invalid JSON"), std::string::npos) << why;
  EXPECT_FALSE(f.find(dir / "empty.mp4", &why));
  EXPECT_NE(why.find("empty caption"), std::string::npos) << why;
  EXPECT_FALSE(f.find(dir / "none.mp4", &why));
  EXPECT_NE(why.find("missing caption"), std::string::npos) << why;
  EXPECT_TRUE(CaptionFinder::is_caption_file("x/captions.JSONL"));
  EXPECT_FALSE(CaptionFinder::is_caption_file("x/clip.mp4"));
}

TEST(Options, UsageErrorsNameTheFlag) {
  PrepareOptions o;
  o.mode = "frames";
  EXPECT_EQ(usage_error(o), "(no error)");
  o.height = 30;
  EXPECT_NE(usage_error(o).find("--height 30: must be a positive multiple of 16"),
            std::string::npos);
  o.height = 240;
  o.width = 0;
  EXPECT_NE(usage_error(o).find("--width 0"), std::string::npos);
  o.width = 416;
  o.num_frames_given = true;
  EXPECT_NE(usage_error(o).find("--num-frames: applies to --mode video only"), std::string::npos);
  o = PrepareOptions{};
  o.mode = "video";
  o.num_frames = 10;
  EXPECT_NE(usage_error(o).find("--num-frames 10: must be 4k+1"), std::string::npos);
  o.num_frames = 17;
  EXPECT_EQ(usage_error(o), "(no error)");
  o.fps = -1;
  EXPECT_NE(usage_error(o).find("--fps"), std::string::npos);
  o.fps = 16;
  o.frames_per_video_given = true;
  EXPECT_NE(usage_error(o).find("--frames-per-video: applies to --mode frames only"),
            std::string::npos);
  o.frames_per_video_given = false;
  // --whole-video: one clip a video; the fixed-length clip flags are refused beside it.
  o.whole_video = true;
  EXPECT_EQ(usage_error(o), "(no error)");
  o.num_frames_given = true;
  EXPECT_NE(usage_error(o).find("--num-frames: cannot be combined with --whole-video"),
            std::string::npos)
      << usage_error(o);
  o.num_frames_given = false;
  o.clips_given = true;
  EXPECT_NE(usage_error(o).find("--clips-per-video: cannot be combined with --whole-video"),
            std::string::npos)
      << usage_error(o);
  o.clips_given = false;
  o.max_frames = 64;
  o.max_frames_given = true;
  EXPECT_NE(usage_error(o).find("--max-frames 64: must be 4k+1"), std::string::npos);
  o.max_frames = 65;
  o.min_frames = 0;
  o.min_frames_given = true;
  EXPECT_NE(usage_error(o).find("--min-frames 0: must be 4k+1"), std::string::npos);
  o.min_frames = 69;
  EXPECT_NE(usage_error(o).find("--min-frames 69: must not exceed --max-frames 65"),
            std::string::npos)
      << usage_error(o);
  o.min_frames = 65;
  EXPECT_EQ(usage_error(o), "(no error)");
  o.whole_video = false;  // --min-frames / --max-frames without --whole-video
  EXPECT_NE(usage_error(o).find("--min-frames: applies to --whole-video only"), std::string::npos)
      << usage_error(o);
  o.min_frames_given = false;
  EXPECT_NE(usage_error(o).find("--max-frames: applies to --whole-video only"), std::string::npos)
      << usage_error(o);
  o.max_frames_given = false;
  o.mode = "frames";
  o.whole_video = true;
  EXPECT_NE(usage_error(o).find("--whole-video: applies to --mode video only"), std::string::npos)
      << usage_error(o);
  o.whole_video = false;
  o.mode = "clips";
  EXPECT_NE(usage_error(o).find("--mode clips"), std::string::npos);
}
