// safetensors files: mapping and loading (File), atomic writing (save), sharded checkpoints
// (Collection), and refusing pickle/zip files. Header validation lives in
// safetensors_header.cpp, which must stay free of LibTorch for the fuzz target.
#include "wanhost/kit/safetensors.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <random>
#include <set>
#include <stdexcept>
#include <system_error>

#include <ATen/ATen.h>

#include "safetensors_json.hpp"
#include "wanhost/errors.hpp"

namespace wanhost::safetensors {

using detail::quote_name;

// No std::filesystem here: the LibTorch wheels export their own copies of several of its
// functions (remove_all, status, rename, ...) built against a different libstdc++, and those
// win symbol lookup in any process that links LibTorch (remove_all crashes with GCC 12's
// libstdc++). POSIX calls and string paths avoid the mix.
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; loading copies bytes as they are");

[[noreturn]] void fail(const std::string& what, const std::string& message) {
  throw FormatError(what + ": " + message);
}

[[noreturn]] void fail_errno(const std::string& what, const std::string& doing, int err) {
  fail(what, doing + ": " + std::system_category().message(err));
}

// "a/b/c" -> "a/b"; "c" -> "."; "/c" -> "/".
std::string parent_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? std::string("/") : path.substr(0, slash);
}

std::string file_name_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string join_path(const std::string& folder, const std::string& name) {
  return !folder.empty() && folder.back() == '/' ? folder + name : folder + "/" + name;
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// An fd closed on scope exit.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

// Opens a regular file for reading. O_NONBLOCK keeps a FIFO from blocking the open; fstat then
// refuses it like any other non-regular file (devices, folders, sockets).
Fd open_regular(const std::string& path, struct stat& st) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (fd.get() < 0) fail_errno(path, "cannot open", errno);
  if (::fstat(fd.get(), &st) != 0) fail_errno(path, "cannot stat", errno);
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  return fd;
}

// Reads up to `n` bytes from the start of the file.
std::string read_prefix(int fd, const std::string& path, std::size_t n) {
  std::string bytes(n, '\0');
  std::size_t got = 0;
  while (got < n) {
    ssize_t r = ::pread(fd, bytes.data() + got, n - got, static_cast<off_t>(got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail_errno(path, "cannot read", errno);
    if (r == 0) break;
    got += static_cast<std::size_t>(r);
  }
  bytes.resize(got);
  return bytes;
}

// True when the first bytes could start a safetensors file: a sane header length that fits the
// file, followed by '{'. Such a file is judged by the safetensors rules, not by magic bytes.
bool plausible_safetensors(std::string_view head, std::uint64_t size) {
  if (head.size() < 9 || size < 9) return false;
  std::uint64_t n = 0;
  std::memcpy(&n, head.data(), 8);
  return n <= kMaxHeaderSize && n <= size - 8 && head[8] == '{';
}

std::string convert_hint(const std::string& path) {
  // x.pth -> x.safetensors; a misnamed x.safetensors -> x.converted.safetensors.
  const std::string name = file_name_of(path);
  const auto dot = name.find_last_of('.');
  const std::string stem = path.substr(0, path.size() - name.size()) +
                           (dot == std::string::npos || dot == 0 ? name : name.substr(0, dot));
  const std::string out =
      stem + (ends_with(name, ".safetensors") ? ".converted" : "") + ".safetensors";
  return "Convert it in a sandbox (a throwaway container with a recent torch, since loading it "
         "is the risky step), then use the .safetensors file: python -c \"import torch; from "
         "safetensors.torch import save_file; save_file(torch.load('" +
         path + "', weights_only=True), '" + out + "')\"";
}

void check_magic(std::string_view head, std::uint64_t size, const std::string& path) {
  if (plausible_safetensors(head, size)) return;
  const char* kind = nullptr;
  if (!head.empty() && static_cast<unsigned char>(head[0]) == 0x80) {
    kind = "a pickle file (e.g. a legacy torch.save .pt/.pth/.bin or a pickled cache)";
  } else if (head.substr(0, 4) == std::string_view("PK\x03\x04", 4)) {
    kind =
        "a zip archive as written by torch.save (a PyTorch .pt/.pth/.bin checkpoint or a "
        "TorchScript file)";
  }
  if (kind == nullptr) return;
  fail(path, std::string("this is ") + kind +
                 ", not safetensors. wanhost refuses to load pickle/PyTorch archives because "
                 "unpickling can execute arbitrary code. " +
                 convert_hint(path));
}

at::ScalarType to_scalar_type(std::string_view tag, bool& found) {
  static const std::pair<std::string_view, at::ScalarType> kTypes[] = {
      {"BOOL", at::kBool},
      {"U8", at::kByte},
      {"I8", at::kChar},
      {"I16", at::kShort},
      {"U16", at::kUInt16},
      {"I32", at::kInt},
      {"U32", at::kUInt32},
      {"I64", at::kLong},
      {"U64", at::kUInt64},
      {"F16", at::kHalf},
      {"BF16", at::kBFloat16},
      {"F32", at::kFloat},
      {"F64", at::kDouble},
      {"C64", at::kComplexFloat},
      {"F8_E4M3", at::kFloat8_e4m3fn},
      {"F8_E5M2", at::kFloat8_e5m2},
      {"F8_E8M0", at::kFloat8_e8m0fnu},
  };
  for (const auto& [name, type] : kTypes) {
    if (name == tag) {
      found = true;
      return type;
    }
  }
  found = false;
  return at::kFloat;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// dtype mapping

std::string dtype_tag(at::ScalarType type) {
  for (const char* tag : {"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F16",
                          "BF16", "F32", "F64", "C64", "F8_E4M3", "F8_E5M2", "F8_E8M0"}) {
    bool found = false;
    if (to_scalar_type(tag, found) == type && found) return tag;
  }
  throw FormatError(std::string("LibTorch dtype ") + c10::toString(type) +
                    " has no safetensors equivalent");
}

at::ScalarType scalar_type(const std::string& tag, const std::string& what) {
  bool found = false;
  const at::ScalarType type = to_scalar_type(tag, found);
  if (!found) {
    fail(what,
         "dtype " + quote_name(tag) +
             (dtype_bits(tag) ? " has no LibTorch equivalent" : " is not a safetensors dtype"));
  }
  return type;
}

// ---------------------------------------------------------------------------------------------
// Unsafe formats

void refuse_unsafe_formats(const std::string& path) {
  struct stat st {};
  Fd fd = open_regular(path, st);
  check_magic(read_prefix(fd.get(), path, 9), static_cast<std::uint64_t>(st.st_size), path);
}

// ---------------------------------------------------------------------------------------------
// File

// The read-only private mapping plus its fd, shared by copies of a File so tensors can be loaded
// for as long as any copy lives. The fd stays open so load() can notice a file that shrank
// (touching pages past the new end would raise SIGBUS).
struct File::Mapping {
  int fd = -1;
  const char* data = nullptr;
  std::uint64_t size = 0;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (data != nullptr) ::munmap(const_cast<char*>(data), size);
    if (fd >= 0) ::close(fd);
  }
};

File File::open(const std::string& path) {
  struct stat st {};
  Fd fd = open_regular(path, st);
  auto mapping = std::make_shared<Mapping>();
  mapping->size = static_cast<std::uint64_t>(st.st_size);
  if (mapping->size > 0) {
    void* p = ::mmap(nullptr, mapping->size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (p == MAP_FAILED) fail_errno(path, "cannot map", errno);
    mapping->data = static_cast<const char*>(p);
  }
  mapping->fd = fd.release();

  File file;
  file.path_ = path;
  const std::string_view bytes(mapping->data, mapping->size);
  try {
    file.header_ = parse_header(bytes, mapping->size, path);
  } catch (const FormatError&) {
    // A .pt/.pth/.bin fails as "header too large"; say what it really is instead.
    check_magic(bytes.substr(0, 9), mapping->size, path);
    throw;
  }
  for (std::size_t i = 0; i < file.header_.tensors.size(); ++i) {
    file.index_.emplace(file.header_.tensors[i].name, i);
  }
  file.mapping_ = std::move(mapping);
  return file;
}

const TensorInfo& File::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw std::out_of_range(path_ + ": no tensor " + quote_name(name));
  return header_.tensors[it->second];
}

at::Tensor File::load(const std::string& name) const {
  const TensorInfo& t = info(name);
  const at::ScalarType type = scalar_type(t.dtype, path_ + ": tensor " + quote_name(name));
  struct stat st {};
  if (::fstat(mapping_->fd, &st) != 0) fail_errno(path_, "cannot stat", errno);
  if (static_cast<std::uint64_t>(st.st_size) != mapping_->size) {
    fail(path_, "the file changed size from " + std::to_string(mapping_->size) + " to " +
                    std::to_string(st.st_size) + " bytes since it was opened");
  }
  // Offsets in the file need not be aligned for the dtype, so copy rather than wrap the mapping.
  at::Tensor out = at::empty(t.shape, at::TensorOptions().dtype(type).device(at::kCPU));
  const std::uint64_t nbytes = t.end - t.begin;
  if (static_cast<std::uint64_t>(out.nbytes()) != nbytes) {
    fail(path_, "tensor " + quote_name(name) + ": " + std::to_string(nbytes) +
                    " bytes in the file but LibTorch needs " + std::to_string(out.nbytes()));
  }
  if (nbytes > 0) {
    std::memcpy(out.data_ptr(), mapping_->data + 8 + header_.header_size + t.begin, nbytes);
  }
  return out;
}

std::map<std::string, at::Tensor> File::load_all() const {
  std::map<std::string, at::Tensor> all;
  for (const auto& t : header_.tensors) all.emplace(t.name, load(t.name));
  return all;
}

// ---------------------------------------------------------------------------------------------
// save

namespace {

// A temporary file beside the target, removed on destruction unless commit() renamed it.
class TempFile {
 public:
  explicit TempFile(const std::string& target) : target_(target) {
    folder_ = parent_of(target);
    std::random_device random;
    const std::uint64_t tag = (std::uint64_t{random()} << 32) ^ random();
    char suffix[64];
    std::snprintf(suffix, sizeof suffix, ".tmp-%ld-%016llx", static_cast<long>(::getpid()),
                  static_cast<unsigned long long>(tag));
    path_ = join_path(folder_, "." + file_name_of(target) + suffix);
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ < 0) fail_errno(target_, "cannot create temporary file " + path_, errno);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
  }

  void write(const void* data, std::size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      // Linux writes at most ~2 GiB per call; large tensors take several.
      ssize_t w = ::write(fd_, p, std::min<std::size_t>(n, std::size_t{1} << 30));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) fail_errno(target_, "cannot write " + path_, errno);
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }

  // Durable replace: data on disk before the rename, the rename on disk before returning.
  void commit() {
    if (::fsync(fd_) != 0) fail_errno(target_, "cannot fsync " + path_, errno);
    const int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) fail_errno(target_, "cannot close " + path_, errno);
    if (::rename(path_.c_str(), target_.c_str()) != 0) {
      fail_errno(target_, "cannot rename " + path_ + " over it", errno);
    }
    committed_ = true;
    Fd dir(::open(folder_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    // Some filesystems cannot fsync a folder (EINVAL); the file itself is complete either way.
    if (dir.get() < 0 || (::fsync(dir.get()) != 0 && errno != EINVAL)) {
      fail_errno(target_, "saved, but cannot fsync its folder " + folder_, errno);
    }
  }

 private:
  std::string target_, folder_, path_;
  int fd_ = -1;
  bool committed_ = false;
};

struct Planned {
  std::string name;
  const at::Tensor* tensor;
  std::string tag;
  std::uint64_t nbytes = 0, begin = 0;
};

std::vector<Planned> plan_layout(const std::string& path,
                                 const std::map<std::string, at::Tensor>& tensors) {
  std::vector<Planned> plan;
  for (const auto& [name, t] : tensors) {
    const std::string ref = "tensor " + quote_name(name);
    if (name == "__metadata__") fail(path, "\"__metadata__\" is reserved, not a tensor name");
    if (!t.defined()) fail(path, ref + " is undefined");
    if (t.layout() != at::kStrided) fail(path, ref + " is not a dense (strided) tensor");
    std::string tag;
    try {
      tag = dtype_tag(t.scalar_type());
    } catch (const FormatError& e) {
      fail(path, ref + ": " + e.what());
    }
    plan.push_back({name, &t, tag, static_cast<std::uint64_t>(t.numel()) * t.element_size(), 0});
  }
  // Largest elements first: every tensor then starts at a multiple of its element size, as the
  // reference writer does, so readers may map data without copying.
  std::stable_sort(plan.begin(), plan.end(), [](const Planned& a, const Planned& b) {
    return dtype_bits(a.tag) > dtype_bits(b.tag);
  });
  std::uint64_t offset = 0;
  for (auto& p : plan) {
    p.begin = offset;
    offset += p.nbytes;
  }
  return plan;
}

// A JSON string literal for a name or metadata entry; refuses invalid UTF-8 rather than
// writing a header no reader accepts (or silently altering a name).
std::string json_string(const std::string& s, const std::string& path, const std::string& role) {
  try {
    return nlohmann::json(s).dump();
  } catch (const nlohmann::json::exception&) {
    fail(path, role + " " + quote_name(s) + " is not valid UTF-8");
  }
}

std::string header_json(const std::string& path, std::vector<Planned> plan,
                        const std::map<std::string, std::string>& metadata) {
  std::sort(plan.begin(), plan.end(),
            [](const Planned& a, const Planned& b) { return a.name < b.name; });
  std::string h = "{";
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    for (const auto& [key, value] : metadata) {
      if (h.back() != '{') h += ',';
      h += json_string(key, path, "metadata key") + ":" +
           json_string(value, path, "metadata value of " + quote_name(key));
    }
    h += '}';
  }
  for (const auto& p : plan) {
    if (h.size() > 1) h += ',';
    const nlohmann::json shape = p.tensor->sizes().vec();
    h += json_string(p.name, path, "tensor name") + ":{\"dtype\":\"" + p.tag +
         "\",\"shape\":" + shape.dump() + ",\"data_offsets\":[" + std::to_string(p.begin) + "," +
         std::to_string(p.begin + p.nbytes) + "]}";
  }
  h += '}';
  // Pad with spaces (the spec's choice) so the data section starts 8-byte aligned.
  h.resize((h.size() + 7) / 8 * 8, ' ');
  return h;
}

}  // namespace

void save(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
          const std::map<std::string, std::string>& metadata) {
  const std::vector<Planned> plan = plan_layout(path, tensors);
  const std::string header = header_json(path, plan, metadata);
  TempFile out(path);
  const std::uint64_t n = header.size();
  out.write(&n, 8);
  out.write(header.data(), header.size());
  for (const auto& p : plan) {
    // One tensor at a time, so saving GPU weights never holds a CPU copy of all of them. Conj
    // and neg bits are lazy views; resolve them so the bytes are the values.
    at::Tensor cpu = p.tensor->to(at::kCPU).resolve_conj().resolve_neg().contiguous();
    if (static_cast<std::uint64_t>(cpu.nbytes()) != p.nbytes) {
      fail(path, "tensor " + quote_name(p.name) + " changed size while saving");
    }
    if (p.nbytes > 0) out.write(cpu.data_ptr(), p.nbytes);
  }
  out.commit();
}

// ---------------------------------------------------------------------------------------------
// Collection

namespace {

constexpr std::string_view kIndexSuffix = ".safetensors.index.json";
constexpr std::string_view kFileSuffix = ".safetensors";

// A shard must name a file in the index's own folder: anything else could read arbitrary files.
void check_shard_name(const std::string& index, const std::string& tensor,
                      const std::string& shard) {
  const bool bad = shard.empty() || shard == "." || shard == ".." ||
                   shard.find('/') != std::string::npos || shard.find('\\') != std::string::npos ||
                   shard.find('\0') != std::string::npos;
  if (bad) {
    fail(index, "weight_map[" + quote_name(tensor) + "]: shard " + quote_name(shard) +
                    " is not a plain file name in the index's folder");
  }
}

// tensor -> shard file name, validated.
std::map<std::string, std::string> read_index(const std::string& path) {
  struct stat st {};
  Fd fd = open_regular(path, st);
  if (static_cast<std::uint64_t>(st.st_size) > kMaxHeaderSize) {
    fail(path, "index too large: " + std::to_string(st.st_size) + " bytes");
  }
  const std::string text = read_prefix(fd.get(), path, static_cast<std::size_t>(st.st_size));
  // Nesting: the top object, weight_map/metadata, then a little room inside metadata.
  const nlohmann::json doc = detail::parse_json_strict(text, path, 0, 8);
  if (!doc.is_object()) fail(path, "the index must be a JSON object");
  for (const auto& [key, unused] : doc.items()) {
    if (key != "weight_map" && key != "metadata") {
      fail(path, "unknown key " + quote_name(key) + " (expected weight_map and metadata)");
    }
  }
  if (!doc.contains("weight_map") || !doc["weight_map"].is_object()) {
    fail(path, "weight_map must be an object mapping tensor names to shard file names");
  }
  if (doc.contains("metadata") && !doc["metadata"].is_object()) {
    fail(path, "metadata must be an object");
  }
  std::map<std::string, std::string> map;
  for (const auto& [tensor, shard] : doc["weight_map"].items()) {
    if (!shard.is_string()) fail(path, "weight_map[" + quote_name(tensor) + "] must be a string");
    check_shard_name(path, tensor, shard.get<std::string>());
    map.emplace(tensor, shard.get<std::string>());
  }
  return map;
}

std::set<std::string> shard_names(const std::map<std::string, std::string>& weight_map) {
  std::set<std::string> shards;
  for (const auto& [tensor, shard] : weight_map) shards.insert(shard);
  return shards;
}

std::string join(const std::vector<std::string>& items) {
  std::string s;
  for (const auto& i : items) s += (s.empty() ? "" : ", ") + i;
  return s;
}

// The one index or file a folder holds; shards of the index don't count.
std::string pick_in_folder(const std::string& folder) {
  std::vector<std::string> indexes, files;
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(folder.c_str()), ::closedir);
  if (!dir) fail_errno(folder, "cannot list", errno);
  while (const dirent* entry = ::readdir(dir.get())) {
    const std::string name = entry->d_name;
    if (ends_with(name, kIndexSuffix)) indexes.push_back(name);
    if (ends_with(name, kFileSuffix)) files.push_back(name);
  }
  std::sort(indexes.begin(), indexes.end());
  std::sort(files.begin(), files.end());
  std::vector<std::string> candidates = indexes;
  std::set<std::string> shards;
  if (indexes.size() == 1) shards = shard_names(read_index(join_path(folder, indexes[0])));
  for (const auto& f : files) {
    if (!shards.count(f)) candidates.push_back(f);
  }
  if (candidates.size() == 1) return join_path(folder, candidates[0]);
  if (candidates.empty()) {
    fail(folder, "holds no *.safetensors file and no *.safetensors.index.json");
  }
  fail(folder, "holds several safetensors candidates, name one: " + join(candidates));
}

}  // namespace

Collection Collection::open(const std::string& path) {
  const std::string chosen = is_directory(path) ? pick_in_folder(path) : path;
  Collection c;
  c.path_ = chosen;
  if (!ends_with(chosen, ".json")) {
    c.files_.push_back(File::open(chosen));
    for (const auto& t : c.files_[0].tensors()) c.where_.emplace(t.name, 0);
    return c;
  }

  const std::map<std::string, std::string> weight_map = read_index(chosen);
  const std::string folder = parent_of(chosen);
  std::map<std::string, std::size_t> shard_index;
  for (const auto& shard : shard_names(weight_map)) {
    const std::string shard_path = join_path(folder, shard);
    struct stat st {};
    if (::stat(shard_path.c_str(), &st) != 0 && errno == ENOENT) {
      fail(chosen, "shard " + quote_name(shard) + " not found: " + shard_path);
    }
    shard_index.emplace(shard, c.files_.size());
    c.files_.push_back(File::open(shard_path));
  }
  for (const auto& [tensor, shard] : weight_map) {
    const std::size_t i = shard_index.at(shard);
    if (!c.files_[i].contains(tensor)) {
      fail(chosen, "tensor " + quote_name(tensor) + " is mapped to shard " + quote_name(shard) +
                       " but missing from it");
    }
    c.where_.emplace(tensor, i);
  }
  // Each stored tensor must be listed, and listed for the shard that holds it: a copy elsewhere
  // would make the loaded weights depend on which file is read.
  for (const auto& [shard, i] : shard_index) {
    for (const auto& t : c.files_[i].tensors()) {
      auto it = weight_map.find(t.name);
      if (it == weight_map.end()) {
        fail(chosen, "tensor " + quote_name(t.name) + " is stored in shard " + quote_name(shard) +
                         " but not listed in weight_map");
      }
      if (it->second != shard) {
        fail(chosen, "tensor " + quote_name(t.name) + " is stored in shard " + quote_name(shard) +
                         " and in shard " + quote_name(it->second) + " (which weight_map names)");
      }
    }
  }
  return c;
}

std::vector<std::string> Collection::names() const {
  std::vector<std::string> names;
  names.reserve(where_.size());
  for (const auto& [name, i] : where_) names.push_back(name);
  return names;
}

const TensorInfo& Collection::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw std::out_of_range(path_ + ": no tensor " + quote_name(name));
  return files_[it->second].info(name);
}

at::Tensor Collection::load(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw std::out_of_range(path_ + ": no tensor " + quote_name(name));
  return files_[it->second].load(name);
}

}  // namespace wanhost::safetensors
