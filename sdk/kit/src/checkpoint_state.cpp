#include "wanhost/kit/checkpoint_state.hpp"

#include <cstdio>
#include <filesystem>
#include <stdexcept>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "wanhost/kit/json_file.hpp"
#include "wanhost/kit/safetensors.hpp"

namespace wanhost {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using Shapes = WholeState::Shapes;

std::string key_of(const std::string& name, const std::string& what) {
  return what == "param" ? "param." + name : "optim." + name + "." + what;
}

at::Tensor load(const safetensors::File& f, const std::string& key) {
  if (!f.contains(key)) throw std::runtime_error(f.path() + ": no tensor '" + key + "'");
  return f.load(key);
}

class DdpState final : public WholeState {
 public:
  explicit DdpState(const fs::path& dir)
      : model_(safetensors::File::open(
            (dir / "model" / "diffusion_pytorch_model.safetensors").string())),
        optim_(safetensors::File::open((dir / "optimizer.safetensors").string())) {
    for (const auto& t : model_.tensors()) shapes_[t.name] = t.shape;
  }
  std::string writer() const override { return "ddp"; }
  const Shapes& shapes() const override { return shapes_; }
  at::Tensor tensor(const std::string& name, const std::string& what) const override {
    return what == "param" ? load(model_, name) : load(optim_, name + "." + what);
  }
  at::Tensor step() const override { return load(optim_, "__step__"); }

 private:
  safetensors::File model_, optim_;
  Shapes shapes_;
};

class FsdpState final : public WholeState {
 public:
  explicit FsdpState(const fs::path& dir) {
    const Json meta = read_json_file((dir / "fsdp.json").string());
    ranks_ = meta.at("dp_size").get<int>();
    for (const auto& p : meta.at("params"))
      shapes_[p.at("name").get<std::string>()] = p.at("shape").get<std::vector<std::int64_t>>();
    for (int r = 0; r < ranks_; ++r) {
      char file[64];
      std::snprintf(file, sizeof file, "fsdp_rank_%05d.safetensors", r);
      files_.push_back(safetensors::File::open((dir / file).string()));
    }
  }
  std::string writer() const override { return "automodel_fsdp dp=" + std::to_string(ranks_); }
  const Shapes& shapes() const override { return shapes_; }
  at::Tensor tensor(const std::string& name, const std::string& what) const override {
    std::vector<at::Tensor> chunks;
    for (const auto& f : files_) chunks.push_back(load(f, key_of(name, what)));
    const auto& shape = shapes_.at(name);
    std::int64_t numel = 1;
    for (auto s : shape) numel *= s;
    return at::cat(chunks).slice(0, 0, numel).reshape(shape).contiguous();
  }
  at::Tensor step() const override { return load(files_.front(), "optim.__step__"); }

 private:
  int ranks_ = 1;
  Shapes shapes_;
  std::vector<safetensors::File> files_;
};

class MegatronState final : public WholeState {
 public:
  explicit MegatronState(const fs::path& dir) : dir_(dir) {
    const Json meta = read_json_file((dir / "megatron.json").string());
    tp_ = meta.at("tp").get<int>();
    writer_ = "megatron_tpppcp tp=" + std::to_string(tp_) +
              " pp=" + std::to_string(meta.at("pp").get<int>()) +
              " dp=" + std::to_string(meta.at("dp").get<int>());
    for (const auto& p : meta.at("params")) {
      const auto name = p.at("name").get<std::string>();
      shapes_[name] = p.at("shape").get<std::vector<std::int64_t>>();
      place_[name] = {p.at("split_dim").get<std::int64_t>(), p.at("stage").get<int>()};
    }
  }
  std::string writer() const override { return writer_; }
  const Shapes& shapes() const override { return shapes_; }
  at::Tensor tensor(const std::string& name, const std::string& what) const override {
    const auto [split, stage] = place_.at(name);
    if (split < 0) return load(file(0, stage), key_of(name, what));
    std::vector<at::Tensor> parts;
    for (int k = 0; k < tp_; ++k) parts.push_back(load(file(k, stage), key_of(name, what)));
    return at::cat(parts, split);
  }
  at::Tensor step() const override { return load(file(0, 0), "optim.__step__"); }

 private:
  const safetensors::File& file(int tp, int pp) const {
    const auto key = std::make_pair(tp, pp);
    auto it = files_.find(key);
    if (it == files_.end()) {
      char name[64];
      std::snprintf(name, sizeof name, "megatron_tp%03d_pp%03d.safetensors", tp, pp);
      it = files_.emplace(key, safetensors::File::open((dir_ / name).string())).first;
    }
    return it->second;
  }

  fs::path dir_;
  int tp_ = 1;
  std::string writer_;
  Shapes shapes_;
  std::map<std::string, std::pair<std::int64_t, int>> place_;
  mutable std::map<std::pair<int, int>, safetensors::File> files_;
};

std::string shape_problems(const Shapes& saved, const Shapes& model) {
  std::string problems;
  for (const auto& [name, shape] : model) {
    auto it = saved.find(name);
    if (it == saved.end())
      problems += "\n  missing " + name;
    else if (it->second != shape)
      problems += "\n  " + name + " has shape " + Json(it->second).dump() + ", the model " +
                  Json(shape).dump();
  }
  for (const auto& [name, shape] : saved)
    if (!model.count(name)) problems += "\n  unexpected " + name;
  return problems;
}

std::unique_ptr<WholeState> open_format(const fs::path& d) {
  if (fs::exists(d / "megatron.json")) return std::make_unique<MegatronState>(d);
  if (fs::exists(d / "fsdp.json")) return std::make_unique<FsdpState>(d);
  if (fs::exists(d / "optimizer.safetensors")) return std::make_unique<DdpState>(d);
  throw std::runtime_error(d.string() +
                           " holds no parallelism state of ddp (optimizer.safetensors), "
                           "automodel_fsdp (fsdp.json) or megatron_tpppcp (megatron.json)");
}

}  // namespace

std::unique_ptr<WholeState> WholeState::open(const std::string& dir, const Shapes& model) {
  std::unique_ptr<WholeState> state = open_format(fs::path(dir));
  if (const std::string problems = shape_problems(state->shapes(), model); !problems.empty())
    throw std::runtime_error("the checkpoint " + dir + " (" + state->writer() +
                             ") does not match the model:" + problems);
  return state;
}

}  // namespace wanhost
