#include "wanhost/kit/json_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "wanhost/errors.hpp"

namespace wanhost {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw FormatError(path + ": " + what);
}

std::string file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  return "not a regular file";
}

// Closes the descriptor on every path out.
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

std::string read_regular_file(const std::string& path, std::size_t max_bytes) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever. The
  // descriptor is checked with fstat (not a stat of the path, which could change in between).
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)};
  if (f.fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) fail(path, std::string("cannot stat: ") + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(path, "is " + file_kind(st.st_mode) + ", not a regular file");
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size > max_bytes)
    fail(path, "is " + std::to_string(size) + " bytes, more than the " + std::to_string(max_bytes) +
                   " a JSON file may have here");
  std::string text(size, '\0');
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = ::read(f.fd, text.data() + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(path, std::string("cannot read: ") + std::strerror(errno));
    if (n == 0) break;  // shrank while reading: parse what is there (it will most likely fail)
    done += static_cast<std::size_t>(n);
  }
  text.resize(done);
  return text;
}

Json parse_json_text(const std::string& text, const std::string& path) {
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    // parse_error knows its byte (1-based: the character after the last one read); the other
    // errors (a number out of range) do not.
    std::size_t byte = 0;
    if (const auto* pe = dynamic_cast<const Json::parse_error*>(&e)) byte = pe->byte;
    std::string where = path;
    if (byte > 0) {
      std::size_t line = 1, col = 1;
      for (std::size_t i = 0; i + 1 < byte && i < text.size(); ++i) {
        if (text[i] == '\n')
          ++line, col = 1;
        else
          ++col;
      }
      where += ":" + std::to_string(line) + ":" + std::to_string(col) + " (byte " +
               std::to_string(byte) + ")";
    }
    // nlohmann's messages start with "[json.exception.KIND.ID] "; keep only the text after it.
    std::string what = e.what();
    if (const auto end = what.find("] ");
        what.rfind("[json.exception.", 0) == 0 && end != std::string::npos)
      what = what.substr(end + 2);
    throw FormatError(where + ": invalid JSON: " + what);
  }
}

Json read_json_file(const std::string& path, std::size_t max_bytes) {
  return parse_json_text(read_regular_file(path, max_bytes), path);
}

}  // namespace wanhost
