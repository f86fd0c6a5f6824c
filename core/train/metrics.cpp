#include "metrics.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "../util/files.hpp"

namespace fs = std::filesystem;

namespace wanhost::core {

MetricsLog::MetricsLog(const std::string& run_dir, long resume_step) {
  const fs::path path = fs::path(run_dir) / "metrics.jsonl";
  path_ = path.string();
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) {
    std::stringstream in(read_file(path.string()));
    std::string line, kept;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      try {
        if (Json::parse(line).value("step", 0L) > resume_step) continue;
      } catch (const Json::exception&) {
        continue;  // a line cut by a crash
      }
      kept += line + "\n";
    }
    write_file_atomic(path.string(), kept);
  }
  fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0)
    throw std::runtime_error(path_ + ": cannot open for appending: " + std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  if (fd_ >= 0) ::close(fd_);
}

void MetricsLog::write(const Json& record) {
  const std::string line = record.dump() + "\n";
  struct stat st {};
  const bool regular = ::fstat(fd_, &st) == 0 && S_ISREG(st.st_mode);
  std::size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(fd_, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = n < 0 ? std::strerror(errno) : "nothing written";
      // Cut the partial record off again (O_APPEND put it at the old end of the file).
      if (regular && done > 0) {
        const int rc = ::ftruncate(fd_, st.st_size);
        (void)rc;  // best effort: the error below is what the user needs to see
      }
      throw std::runtime_error(path_ + ": cannot write the metrics of step " +
                               std::to_string(record.value("step", 0L)) + ": " + why);
    }
    done += static_cast<std::size_t>(n);
  }
}

std::uint32_t crc32c(const void* data, std::size_t n) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t crc = 0xFFFFFFFFu;
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

namespace {

// Minimal protobuf encoding of the few fields TensorBoard reads.
void varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void key(std::string& out, int field, int wire) {
  varint(out, (static_cast<std::uint64_t>(field) << 3) | wire);
}
void bytes_field(std::string& out, int field, const std::string& b) {
  key(out, field, 2);
  varint(out, b.size());
  out += b;
}
template <class T>
void fixed_field(std::string& out, int field, T v) {
  key(out, field, sizeof(T) == 8 ? 1 : 5);
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));
  out.append(buf, sizeof(T));
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Event { double wall_time = 1; int64 step = 2; oneof { string file_version = 3; Summary summary =
// 5; SessionLog session_log = 6; } }
std::string event_header(long step) {
  std::string e;
  fixed_field<double>(e, 1, now_seconds());
  key(e, 2, 0);
  varint(e, static_cast<std::uint64_t>(step));
  return e;
}

std::uint32_t masked(std::uint32_t crc) {
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::string& run_dir, long start_step) {
  const fs::path dir = fs::path(run_dir) / "tensorboard";
  fs::create_directories(dir);
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  const auto secs = static_cast<long>(now_seconds());
  const fs::path path = dir / ("events.out.tfevents." + std::to_string(secs) + "." + host + "." +
                               std::to_string(::getpid()) + ".wanhost");
  path_ = path.string();
  out_.open(path, std::ios::binary);
  if (!out_) throw std::runtime_error(path_ + ": cannot create: " + std::strerror(errno));
  std::string e = event_header(0);
  bytes_field(e, 3, "brain.Event:2");
  record(e);
  if (start_step > 0) {
    std::string s = event_header(start_step);
    std::string session;  // SessionLog { SessionStatus status = 1; } START = 1
    key(session, 1, 0);
    varint(session, 1);
    bytes_field(s, 6, session);
    record(s);
  }
  flush();
}

void TensorBoardWriter::scalar(const std::string& tag, double value, long step) {
  std::string v;  // Summary.Value { string tag = 1; float simple_value = 2; }
  bytes_field(v, 1, tag);
  fixed_field<float>(v, 2, static_cast<float>(value));
  std::string summary;  // Summary { repeated Value value = 1; }
  bytes_field(summary, 1, v);
  std::string e = event_header(step);
  bytes_field(e, 5, summary);
  record(e);
}

void TensorBoardWriter::record(const std::string& data) {
  // TFRecord: uint64 length, uint32 masked crc32c(length), data, uint32 masked crc32c(data).
  const std::uint64_t len = data.size();
  char header[8];
  std::memcpy(header, &len, 8);
  const std::uint32_t len_crc = masked(crc32c(header, 8));
  const std::uint32_t data_crc = masked(crc32c(data.data(), data.size()));
  out_.write(header, 8);
  out_.write(reinterpret_cast<const char*>(&len_crc), 4);
  out_.write(data.data(), static_cast<std::streamsize>(data.size()));
  out_.write(reinterpret_cast<const char*>(&data_crc), 4);
}

void TensorBoardWriter::flush() {
  out_.flush();
  if (!out_) throw std::runtime_error(path_ + ": cannot write TensorBoard events (disk full?)");
}

}  // namespace wanhost::core
