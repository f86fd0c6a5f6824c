#include "resume_check.hpp"

#include <set>
#include <string_view>

namespace wanhost::core {
namespace {

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// Settings that cannot change the numbers a step computes.
bool quiet(const std::string& p) {
  static const char* const prefixes[] = {
      "/run/out",         "/run/name",        "/run/threads",  "/run/prefetch", "/run/comm_",
      "/run/cuda_graphs", "/run/peak_tflops", "/run/kernels/", "/logging/",     "/checkpoint/",
  };
  for (const char* prefix : prefixes)
    if (starts_with(p, prefix)) return true;
  return false;
}

std::string value_text(const Json& flat, const std::string& p) {
  const auto it = flat.find(p);
  return it == flat.end() ? std::string("(absent)") : it->dump();
}

}  // namespace

ResumeChanges compare_resume_settings(const Json& saved, const Json& now, std::size_t stage) {
  const Json a = saved.flatten(), b = now.flatten();
  std::set<std::string> pointers;
  for (auto it = a.begin(); it != a.end(); ++it) pointers.insert(it.key());
  for (auto it = b.begin(); it != b.end(); ++it) pointers.insert(it.key());
  const std::string current_batch = "/stages/" + std::to_string(stage) + "/global_batch";
  ResumeChanges r;
  for (const std::string& p : pointers) {
    const auto ia = a.find(p), ib = b.find(p);
    if (ia != a.end() && ib != b.end() && *ia == *ib) continue;
    const std::string line = p + ": " + value_text(a, p) + " -> " + value_text(b, p);
    if (p == "/run/seed" || p == "/run/randomness" || p == "/run/master_weights" ||
        p == current_batch) {
      if (r.refused.empty()) r.first_refused = p;
      r.refused.push_back(line);
    } else if (!quiet(p)) {
      r.altering.push_back(line);
    }
  }
  return r;
}

}  // namespace wanhost::core
