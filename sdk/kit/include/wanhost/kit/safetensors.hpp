// safetensors files: the only format wanhost reads weights, checkpoints and datasets from.
//
// Reading is memory-mapped and strict (rules in docs/model.md, from the format's reference
// implementation): header length bounds, a JSON object header without duplicate keys, known
// dtypes, overflow-checked sizes, offsets that tile the data section exactly (no gaps, overlaps or
// trailing bytes), a string-only __metadata__. Every violation is a FormatError naming the file
// and the byte offset or tensor. Pickle/zip files (.pt/.pth/.bin) are recognised by their magic
// bytes and refused with a message saying how to convert them.
// Writing is atomic: a temporary file in the same folder, fsynced, renamed over the target, and
// the folder fsynced.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

#include "wanhost/kit/safetensors_header.hpp"  // TensorInfo, Header, parse_header, dtype_bits

namespace wanhost::safetensors {

// Throws FormatError when `path` starts like a pickle (0x80 protocol byte) or a zip/torch.save
// archive (PK\x03\x04), naming the file and how to convert it. A file whose first bytes are a
// plausible safetensors header is never refused (a header length of 128 starts with 0x80 too).
// File::open calls it when a file fails validation, so .pt/.pth/.bin files get this message.
void refuse_unsafe_formats(const std::string& path);

class File {
 public:
  // Maps and validates the file; throws FormatError.
  static File open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;  // throws std::out_of_range naming it
  // An owned CPU tensor with a copy of the data (safe after the file is closed or replaced).
  at::Tensor load(const std::string& name) const;
  std::map<std::string, at::Tensor> load_all() const;

 private:
  struct Mapping;
  std::string path_;
  Header header_;
  std::map<std::string, std::size_t> index_;
  std::shared_ptr<Mapping> mapping_;
};

// Writes `tensors` (any device, any contiguity; copied to CPU one at a time) atomically to `path`.
// Header keys are sorted with __metadata__ first; the header is space-padded so the data section
// starts 8-byte aligned, and data is ordered by element size (largest first), then name, so every
// tensor starts at a multiple of its element size. Throws FormatError (unsupported dtype,
// undefined tensor, the reserved name __metadata__, an I/O error) or whatever copying a tensor
// to the CPU throws; on any error the temporary file is removed and an existing `path` is intact.
void save(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
          const std::map<std::string, std::string>& metadata = {});

// A set of tensors stored as one file or as shards with a `*.safetensors.index.json`
// (`weight_map`: tensor -> shard file name in the same folder; names that could leave the folder,
// missing shards, tensors listed twice or absent from their shard are FormatErrors).
class Collection {
 public:
  // `path`: a .safetensors file, an index .json, or a folder holding exactly one of
  // `<stem>.safetensors` / `<stem>.safetensors.index.json` (any stem; several is an error; the
  // shards of the folder's index don't count as candidates).
  static Collection open(const std::string& path);
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;  // throws std::out_of_range naming it
  at::Tensor load(const std::string& name) const;

 private:
  std::string path_;  // the file or index opened, for messages
  std::vector<File> files_;
  std::map<std::string, std::size_t> where_;
};

// Maps between at::ScalarType and safetensors dtype tags (throws FormatError for unsupported).
std::string dtype_tag(at::ScalarType type);
at::ScalarType scalar_type(const std::string& tag, const std::string& what);

}  // namespace wanhost::safetensors
