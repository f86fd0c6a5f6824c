// Atomic, verified checkpoints in <run>/checkpoints/:
//   1. every rank writes its files into .tmp-step-N/ (rank 0 created it, stale ones removed);
//   2. after a barrier, rank 0 fsyncs the tree, writes manifest.json (every file with its size
//      and checksum) last, renames the folder to step-N/, fsyncs, then swaps LATEST atomically;
//   3. retention removes the oldest complete checkpoints beyond keep_last, never the one LATEST
//      names.
// A run that trains a step again (resumed from an older checkpoint) replaces that step's folder.
// Only folders whose manifest verifies are ever loaded; a damaged LATEST falls back to the newest
// verified checkpoint with a warning. A crash at any point leaves the last good state intact.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "wanhost/communicator.hpp"
#include "wanhost/config.hpp"

namespace wanhost::core {

class CheckpointStore {
 public:
  CheckpointStore(std::string root, Communicator& world);

  // Collective. `write_files(dir)` writes this rank's files into `dir`. `meta` goes into the
  // manifest. Returns the checkpoint folder.
  std::string save(long step, const std::function<void(const std::string& dir)>& write_files,
                   const Json& meta, int keep_last);

  // The checkpoint to resume from: LATEST if it verifies, else the newest verified one; nullopt
  // when there is none. `refused` (optional) receives "FOLDER: why" for every checkpoint folder
  // that failed to verify on the way. (Any rank may call it; it only reads.)
  std::optional<std::string> find_latest(std::vector<std::string>* refused = nullptr) const;
  // True when the folder holds any checkpoint folder (step-N), complete or not.
  bool holds_checkpoints() const;
  // Verifies a folder; on failure returns false with the reason.
  static bool verify(const std::string& dir, std::string* why);
  static Json read_manifest(const std::string& dir);
  // Removes leftovers of interrupted saves (rank 0, at start).
  void remove_stale_temporaries() const;
  const std::string& root() const { return root_; }

 private:
  void retain(int keep_last) const;
  std::string root_;
  Communicator& world_;
};

}  // namespace wanhost::core
