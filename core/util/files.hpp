// Durable file operations: what "a crash never corrupts the last good state" rests on.
#pragma once

#include <cstdint>
#include <string>

namespace wanhost::core {

// Writes `content` to `path` via a temporary file in the same folder: write, fsync, rename,
// fsync the folder. Readers see the old or the new content, never a mix.
void write_file_atomic(const std::string& path, const std::string& content);
// fsync a folder (makes renames and creations in it durable).
void fsync_dir(const std::string& dir);
// fsync every regular file below `dir`, then the folders themselves.
void fsync_tree(const std::string& dir);
std::string read_file(const std::string& path);
// Removes a file or a folder with everything below it (symlinks are removed, not followed);
// a missing path is fine. Use this instead of std::filesystem::remove_all: the LibTorch wheel
// exports its own copy of that function, which crashes when called from code built with the
// system compiler's headers (seen on the GPU machines).
void remove_tree(const std::string& path);
// 64-bit FNV-1a over the file's bytes, as 16 hex digits (detects truncation and corruption; not
// a cryptographic hash).
std::string file_checksum(const std::string& path);

}  // namespace wanhost::core
