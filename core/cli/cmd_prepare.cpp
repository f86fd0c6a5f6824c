// `wanhost prepare` (videos + captions -> latent dataset) and `wanhost data inspect`.
#include <iostream>

#include "app.hpp"

#if WANHOST_WITH_FFMPEG
#include "../prepare/prepare.hpp"
#include "wanhost/errors.hpp"

namespace wanhost::core {

void add_prepare_command(CLI::App& app, GlobalOptions& g) {
  auto o = std::make_shared<data::PrepareOptions>();
  auto* cmd = app.add_subcommand(
      "prepare",
      "Encode a folder of captioned videos into a latent dataset folder for training (see "
      "docs/data.md)");
  // A flag given twice: the last one counts (handy for scripts that append overrides).
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--input", o->input, "Folder of videos (searched recursively) with captions")
      ->required()
      ->type_name("DIR");
  cmd->add_option("--output", o->output, "Dataset folder to write (re-runs resume)")
      ->required()
      ->type_name("DIR");
  cmd->add_option("--model", o->model,
                  "Diffusers pipeline folder with vae/, text_encoder/ and tokenizer/")
      ->required()
      ->type_name("DIR");
  cmd->add_option("--mode", o->mode,
                  "frames: evenly spaced frames, each a sample (stage 1); video: clips or whole "
                  "videos (stage 2)")
      ->required()
      ->type_name("frames|video");
  cmd->add_option("--height", o->height, "Frame height in pixels (multiple of 16)")
      ->capture_default_str();
  cmd->add_option("--width", o->width, "Frame width in pixels (multiple of 16)")
      ->capture_default_str();
  cmd->add_option("--frames-per-video", o->frames_per_video, "Frames mode: frames a video")
      ->capture_default_str();
  cmd->add_option("--num-frames", o->num_frames, "Video mode: frames a clip (4k+1)")
      ->capture_default_str();
  cmd->add_option("--fps", o->fps, "Video mode: resample clips to this frame rate (0: source rate)")
      ->capture_default_str();
  cmd->add_option("--clips-per-video", o->clips_per_video,
                  "Video mode: clips a video, spread over it without overlap (0: as many as fit)")
      ->capture_default_str();
  cmd->add_flag("--whole-video", o->whole_video,
                "Video mode: each video is one clip of its own length from its first frame, cut "
                "to the largest 4k+1 frames <= --max-frames (mixed lengths: train with the packed "
                "collator or micro batch 1); replaces --num-frames and --clips-per-video");
  cmd->add_option("--min-frames", o->min_frames,
                  "--whole-video: skip videos that give fewer frames (4k+1)")
      ->capture_default_str();
  cmd->add_option("--max-frames", o->max_frames,
                  "--whole-video: longest clip kept (4k+1; 129 = 8 s at --fps 16)")
      ->capture_default_str();
  cmd->add_option("--videos-per-shard", o->videos_per_shard,
                  "Input videos per shard file (the unit of resuming)")
      ->capture_default_str();
  cmd->add_option("--vae-plugin", o->vae_plugin, "video_autoencoder plugin")->capture_default_str();
  cmd->add_option("--text-plugin", o->text_plugin, "text_encoder plugin")->capture_default_str();
  cmd->add_option("--device", o->device, "auto (CUDA when visible), cpu or cuda")
      ->capture_default_str();
  cmd->add_option("--dtype", o->dtype,
                  "Encoder and storage dtype: auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16")
      ->capture_default_str();
  cmd->add_option("--workers", o->workers, "Decoding threads (0: every core)")
      ->capture_default_str();
  cmd->add_option("--batch", o->batch, "Samples per VAE call (0: 8 frames or 1 clip)")
      ->capture_default_str();
  cmd->add_option("--text-batch", o->text_batch, "Captions per text encoder call")
      ->capture_default_str();
  cmd->add_option("--progress", o->progress,
                  "auto (a bar on a terminal, else a line every 10 s), bar, lines or none")
      ->check(CLI::IsMember({"auto", "bar", "lines", "none"}))
      ->capture_default_str();
  cmd->callback([&g, o, cmd] {
    o->frames_per_video_given = cmd->count("--frames-per-video") > 0;
    o->num_frames_given = cmd->count("--num-frames") > 0;
    o->fps_given = cmd->count("--fps") > 0;
    o->clips_given = cmd->count("--clips-per-video") > 0;
    o->min_frames_given = cmd->count("--min-frames") > 0;
    o->max_frames_given = cmd->count("--max-frames") > 0;
    auto reg = make_registry(g);
    data::prepare(*reg, *o);
  });

  auto* data_cmd = app.add_subcommand("data", "Look at prepared dataset folders");
  data_cmd->require_subcommand(1);
  auto* inspect = data_cmd->add_subcommand(
      "inspect",
      "Counts, latent shapes and the histograms of latent frame counts and token counts of a "
      "dataset folder");
  auto dir = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  inspect->add_option("DIR", *dir, "Dataset folder written by `wanhost prepare`")->required();
  inspect->add_flag("--json", *json, "Print JSON instead of text");
  inspect->callback([dir, json] {
    const auto summary = data::inspect_dataset(*dir);
    if (*json)
      std::cout << summary.dump(2) << "\n";
    else
      std::cout << data::describe_inspection(summary);
    // A dataset a run cannot read whole is an error (exit 1), after the listing.
    if (!summary["problems"].empty())
      throw FormatError(*dir + ": " + std::to_string(summary["problems"].size()) +
                        " problem(s) with its shards (listed above)");
  });
}

}  // namespace wanhost::core

#else  // a build without the FFmpeg libraries: the commands exist and say why they cannot run

#include "wanhost/errors.hpp"

namespace wanhost::core {

void add_prepare_command(CLI::App& app, GlobalOptions&) {
  const auto refuse = [] {
    throw UsageError(
        "this wanhost was built without the FFmpeg libraries (libavformat, libavcodec, "
        "libavutil, libswscale): install their -dev packages and rebuild to prepare datasets");
  };
  auto* prepare =
      app.add_subcommand("prepare", "Videos + captions -> latent dataset (needs FFmpeg)");
  prepare->allow_extras();
  prepare->callback(refuse);
  auto* data = app.add_subcommand("data", "Dataset tools (needs FFmpeg)");
  data->allow_extras();
  data->callback(refuse);
}

}  // namespace wanhost::core

#endif
