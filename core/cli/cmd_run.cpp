// `wanhost run` and `wanhost validate`.
#include <iostream>

#include "../config/run_config.hpp"
#include "../logging/logging.hpp"
#include "../train/trainer.hpp"
#include "app.hpp"
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
  validate->add_flag("--print-config", *print_v, "Print the resolved manifest");
  validate->callback([&g, vo, print_v] {
    auto reg = make_registry(g);
    Json resolved = resolve_run_config(request_of(*vo), *reg);
    if (*print_v)
      std::cout << resolved.dump(2) << "\n";
    else
      std::cout << (vo->manifests.empty() ? std::string("built-in default recipe")
                                          : vo->manifests.back())
                << ": OK (" << resolved["stages"].size() << " stage(s); model "
                << resolved["model"]["plugin"].get<std::string>() << ", parallelism "
                << resolved["parallelism"]["plugin"].get<std::string>() << ")\n";
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
    LaunchEnv env = resolve_launch_env(g.launch, [](const char* n) { return std::getenv(n); });
    setup_logging(env.rank, env.world_size, g.log_level);
    auto reg = make_registry(g);
    RunConfigRequest req = request_of(*ro);
    if (!out->empty()) req.sets.push_back("run.out=" + Json(*out).dump());
    Json resolved = resolve_run_config(req, *reg);
    if (*print) {
      if (env.rank == 0) std::cout << resolved.dump(2) << "\n";
      return;
    }
    if (env.rank == 0) logger()->info("launch: {}", env.describe());
    TrainOptions opts;
    if (run->count("--resume")) opts.resume = (*resume == "LATEST" ? std::string() : *resume);
    if (*stop > 0) opts.stop_after_steps = *stop;
    const int code = train(resolved, opts, env, *reg);
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

}  // namespace wanhost::core
