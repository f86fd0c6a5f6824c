// `wanhost run` and `wanhost validate`.
#include <iostream>

#include "../config/run_config.hpp"
#include "../logging/logging.hpp"
#include "../run/components.hpp"
#include "../run/resolve.hpp"
#include "../train/trainer.hpp"
#include "../util/stop_signal.hpp"
#include "app.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/log.hpp"

namespace wanhost::core {
namespace {

struct ConfigOptions {
  std::vector<std::string> manifests;
  std::string plugins;
  std::vector<std::string> sets;
};

void add_config_options(CLI::App* cmd, ConfigOptions& o) {
  cmd->add_option(
         "MANIFEST", o.manifests,
         "Run manifest(s) (JSON), merged in order over the built-in default recipe (e.g. a recipe "
         "then a preset from configs/presets/)")
      ->check(CLI::ExistingFile);
  cmd->add_option(
         "--plugins", o.plugins,
         "Comma-separated plugin names; each becomes the choice for its kinds, over the manifest")
      ->type_name("A,B");
  cmd->add_option("--set", o.sets,
                  "Override one setting: a.b.c=VALUE (VALUE is JSON, else a string); repeatable")
      ->type_name("KEY=VALUE");
}

RunConfigRequest request_of(const ConfigOptions& o) {
  RunConfigRequest r;
  r.manifest_paths = o.manifests;
  std::stringstream ss(o.plugins);
  std::string name;
  while (std::getline(ss, name, ','))
    if (!name.empty()) r.plugins.push_back(name);
  r.sets = o.sets;
  return r;
}

}  // namespace

void add_run_commands(CLI::App& app, GlobalOptions& g) {
  auto vo = std::make_shared<ConfigOptions>();
  auto* validate = app.add_subcommand(
      "validate", "Check a run manifest (and --plugins/--set) without running it");
  add_config_options(validate, *vo);
  auto print_v = std::make_shared<bool>(false);
  auto world_v = std::make_shared<int>(1);
  validate->add_flag("--print-config", *print_v, "Print the resolved manifest");
  validate
      ->add_option("--world-size", *world_v,
                   "Check the parallel layout and batch splits for this many processes")
      ->check(CLI::PositiveNumber)
      ->default_str("1");
  validate->callback([&g, vo, print_v, world_v] {
    auto reg = make_registry(g);
    const RunConfig config = parse_run_config(resolve_run_config(request_of(*vo), *reg));
    // The plugins' own checks too (all but the model, whose weights would be allocated).
    ComponentBuilder builder(*reg);
    const auto lines = check_run_plugins(config, builder, *world_v);
    if (*print_v) {
      std::cout << config.resolved.dump(2) << "\n";
      return;
    }
    std::cout << (vo->manifests.empty() ? std::string("built-in default recipe")
                                        : vo->manifests.back())
              << ": OK (" << config.stages.size() << " stage(s); model " << config.model.plugin
              << ", parallelism " << config.parallelism.plugin << ")\n";
    for (const auto& line : lines) std::cout << "  " << line << "\n";
  });

  auto ro = std::make_shared<ConfigOptions>();
  auto* run =
      app.add_subcommand("run", "Train: the stages of a manifest, or the built-in default recipe");
  add_config_options(run, *ro);
  auto out = std::make_shared<std::string>();
  auto print = std::make_shared<bool>(false);
  auto resume = std::make_shared<std::string>();
  auto stop = std::make_shared<long>(0);
  run->add_option("--out", *out, "Run folder (sets run.out)")->type_name("DIR");
  run->add_flag("--print-config", *print, "Print the resolved manifest and exit");
  run->add_option("--resume", *resume,
                  "Continue from a checkpoint: LATEST (of the run folder) or a checkpoint folder")
      ->expected(0, 1)
      ->default_str("LATEST");
  run->add_option("--stop-after-steps", *stop, "Save a checkpoint and stop after K global steps")
      ->check(CLI::PositiveNumber);
  run->add_option("--rank", g.launch.rank,
                  "This process's rank (else RANK / OMPI_COMM_WORLD_RANK / SLURM_PROCID)");
  run->add_option("--world-size", g.launch.world_size, "Number of processes");
  run->add_option("--local-rank", g.launch.local_rank, "Rank on this node");
  run->add_option("--master-addr", g.launch.master_addr, "Rendezvous host");
  run->add_option("--master-port", g.launch.master_port, "Rendezvous port");
  run->callback([&g, ro, out, print, resume, stop, run] {
    // First: a SIGTERM while plugins load or the run is built stops it cleanly (exit 75).
    install_stop_signal_handler();
    LaunchEnv env = resolve_launch_env(g.launch, [](const char* n) { return std::getenv(n); });
    setup_logging(env.rank, env.world_size, g.log_level);
    auto reg = make_registry(g);
    RunConfigRequest req = request_of(*ro);
    if (run->count("--out")) {
      if (out->empty()) throw UsageError("--out: the run folder must not be empty");
      req.sets.push_back("run.out=" + Json(*out).dump());
    }
    const RunConfig config = parse_run_config(resolve_run_config(req, *reg));
    if (*print) {
      if (env.rank == 0) std::cout << config.resolved.dump(2) << "\n";
      return;
    }
    if (env.rank == 0) logger()->info("launch: {}", env.describe());
    TrainOptions opts;
    if (run->count("--resume")) opts.resume = (*resume == "LATEST" ? std::string() : *resume);
    if (*stop > 0) opts.stop_after_steps = *stop;
    const int code = train(config, opts, env, *reg);
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

}  // namespace wanhost::core
