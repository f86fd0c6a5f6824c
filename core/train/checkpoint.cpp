#include "checkpoint.hpp"

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <regex>

#include "../util/faults.hpp"
#include "../util/files.hpp"
#include "wanhost/kit/json_file.hpp"
#include "wanhost/log.hpp"

namespace fs = std::filesystem;

namespace wanhost::core {
namespace {

constexpr const char* kManifest = "manifest.json";
constexpr const char* kLatest = "LATEST";

std::optional<long> step_of(const std::string& name) {
  static const std::regex re("step-([0-9]+)");
  std::smatch m;
  if (!std::regex_match(name, m, re)) return std::nullopt;
  return std::stol(m[1]);
}

}  // namespace

CheckpointStore::CheckpointStore(std::string root, Communicator& world)
    : root_(std::move(root)), world_(world) {}

void CheckpointStore::remove_stale_temporaries() const {
  std::error_code ec;
  if (!fs::is_directory(root_, ec)) return;
  for (const auto& e : fs::directory_iterator(root_, ec)) {
    const std::string name = e.path().filename().string();
    // .tmp-step-N/ of a save, .LATEST.tmp-* of write_file_atomic (util/files.hpp).
    if (name.rfind(".tmp-", 0) == 0 || name.rfind(std::string(".") + kLatest + ".tmp-", 0) == 0) {
      logger()->warn("removing the leftover of an interrupted checkpoint save: {}",
                     e.path().string());
      remove_tree(e.path().string());
    }
  }
}

std::string CheckpointStore::save(long step,
                                  const std::function<void(const std::string&)>& write_files,
                                  const Json& meta, int keep_last) {
  const std::string name = "step-" + std::to_string(step);
  const fs::path final_dir = fs::path(root_) / name;
  const fs::path tmp = fs::path(root_) / (".tmp-" + name);
  const bool rank0 = world_.rank() == 0;
  if (rank0) {
    fs::create_directories(root_);
    remove_tree(tmp.string());
    fs::create_directories(tmp);
  }
  world_.barrier();
  write_files(tmp.string());
  world_.barrier();
  fault_point("save.files_written", step);
  if (rank0) {
    fsync_tree(tmp.string());
    Json manifest = meta;
    manifest["format"] = "wanhost-checkpoint";
    manifest["format_version"] = 1;
    manifest["step"] = step;
    Json files = Json::array();
    for (const auto& e : fs::recursive_directory_iterator(tmp)) {
      if (!e.is_regular_file()) continue;
      const std::string rel = fs::relative(e.path(), tmp).string();
      files.push_back(
          {{"path", rel}, {"size", e.file_size()}, {"fnv1a64", file_checksum(e.path().string())}});
    }
    manifest["files"] = files;
    write_file_atomic((tmp / kManifest).string(), manifest.dump(2) + "\n");
    fault_point("save.manifest_written", step);
    // A folder of this step exists when the run trains a step again that it had saved before:
    // resumed from an older checkpoint, or from LATEST after a crash between the rename and the
    // LATEST swap. The new state replaces it (it may be incomplete, corrupt, or from another
    // configuration), so that LATEST always names the state this run reached.
    if (fs::exists(final_dir)) remove_tree(final_dir.string());
    fs::rename(tmp, final_dir);
    fsync_dir(root_);
    fault_point("save.renamed", step);
    write_file_atomic((fs::path(root_) / kLatest).string(), name + "\n");
    retain(keep_last);
  }
  world_.barrier();
  return final_dir.string();
}

void CheckpointStore::retain(int keep_last) const {
  std::string latest;
  try {
    latest = read_file((fs::path(root_) / kLatest).string());
    latest.erase(latest.find_last_not_of(" \n\r\t") + 1);
  } catch (const std::exception&) {
  }
  std::vector<std::pair<long, fs::path>> complete;
  for (const auto& e : fs::directory_iterator(root_)) {
    auto s = step_of(e.path().filename().string());
    if (s && e.is_directory() && fs::exists(e.path() / kManifest))
      complete.emplace_back(*s, e.path());
  }
  std::sort(complete.begin(), complete.end());
  long excess = static_cast<long>(complete.size()) - keep_last;
  for (const auto& [s, p] : complete) {
    if (excess <= 0) break;
    if (p.filename().string() == latest) continue;
    try {
      remove_tree(p.string());
    } catch (const std::exception& e) {
      logger()->warn("retention: could not remove {}: {}", p.string(), e.what());
    }
    --excess;
  }
}

Json CheckpointStore::read_manifest(const std::string& dir) {
  return read_json_file((fs::path(dir) / kManifest).string());
}

bool CheckpointStore::verify(const std::string& dir, std::string* why) {
  auto bad = [&](const std::string& w) {
    if (why) *why = w;
    return false;
  };
  if (!fs::is_directory(dir)) return bad(dir + " is not a folder");
  if (!fs::exists(fs::path(dir) / kManifest))
    return bad(dir + " has no manifest.json (incomplete save)");
  Json m;
  try {
    m = read_manifest(dir);
  } catch (const std::exception& e) {
    return bad(dir + "/manifest.json is unreadable: " + e.what());
  }
  if (m.value("format", "") != "wanhost-checkpoint" || !m.contains("files"))
    return bad(dir + "/manifest.json is not a wanhost checkpoint manifest");
  for (const auto& f : m["files"]) {
    const fs::path p = fs::path(dir) / f.value("path", "");
    std::error_code ec;
    if (!fs::is_regular_file(p, ec)) return bad("missing file " + p.string());
    if (fs::file_size(p, ec) != f.value("size", std::uintmax_t(0)))
      return bad(p.string() + " has " + std::to_string(fs::file_size(p, ec)) +
                 " bytes, the manifest says " + std::to_string(f.value("size", 0)));
    if (file_checksum(p.string()) != f.value("fnv1a64", ""))
      return bad(p.string() + " fails its checksum");
  }
  return true;
}

bool CheckpointStore::holds_checkpoints() const {
  std::error_code ec;
  if (!fs::is_directory(root_, ec)) return false;
  for (const auto& e : fs::directory_iterator(root_, ec))
    if (step_of(e.path().filename().string())) return true;
  return false;
}

std::optional<std::string> CheckpointStore::find_latest(std::vector<std::string>* refused) const {
  std::error_code ec;
  if (!fs::is_directory(root_, ec)) return std::nullopt;
  std::string why, latest_name;
  if (fs::exists(fs::path(root_) / kLatest, ec)) try {
      std::string name = read_file((fs::path(root_) / kLatest).string());
      name.erase(name.find_last_not_of(" \n\r\t") + 1);
      const fs::path dir = fs::path(root_) / name;
      if (!step_of(name))
        why = "not a checkpoint name";
      else if (verify(dir.string(), &why))
        return dir.string();
      latest_name = name;
      logger()->warn(
          "checkpoints/LATEST names '{}', which does not verify ({}); looking for an older one",
          name, why);
    } catch (const std::exception& e) {
      logger()->warn(
          "checkpoints/LATEST is unreadable ({}); looking for the newest complete checkpoint",
          e.what());
    }
  std::vector<std::pair<long, fs::path>> found;
  for (const auto& e : fs::directory_iterator(root_, ec))
    if (auto s = step_of(e.path().filename().string())) found.emplace_back(*s, e.path());
  std::sort(found.rbegin(), found.rend());
  for (const auto& [s, p] : found) {
    if (verify(p.string(), &why)) return p.string();
    if (refused) refused->push_back(p.string() + ": " + why);
    // (LATEST's target was reported above.)
    if (p.filename().string() != latest_name)
      logger()->warn("skipping checkpoint {}: {}", p.string(), why);
  }
  return std::nullopt;
}

}  // namespace wanhost::core
