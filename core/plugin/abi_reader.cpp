#include "abi_reader.hpp"

#include <elf.h>

#include <cstring>
#include <fstream>
#include <stdexcept>
#include <vector>

namespace wanhost::core {
namespace {

template <class T>
T read_at(std::ifstream& in, std::uint64_t offset, const std::string& path, const char* what) {
  T value{};
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(reinterpret_cast<char*>(&value), sizeof(T));
  if (!in) throw std::runtime_error(path + ": truncated ELF file while reading the " + what);
  return value;
}

std::string fixed_string(const char* s, std::size_t n) {
  return std::string(s, strnlen(s, n));
}

}  // namespace

std::optional<AbiTag> read_abi_tag(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open for reading");
  auto eh = read_at<Elf64_Ehdr>(in, 0, path, "ELF header");
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0)
    throw std::runtime_error(path + ": not an ELF file");
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB)
    throw std::runtime_error(path + ": not a 64-bit little-endian ELF file");
  if (eh.e_type != ET_DYN) throw std::runtime_error(path + ": not a shared object");
  if (eh.e_shentsize != sizeof(Elf64_Shdr) || eh.e_shstrndx >= eh.e_shnum)
    throw std::runtime_error(path + ": malformed ELF section table");

  auto section = [&](unsigned i) {
    return read_at<Elf64_Shdr>(in, eh.e_shoff + std::uint64_t(i) * sizeof(Elf64_Shdr), path,
                               "section table");
  };
  const Elf64_Shdr names = section(eh.e_shstrndx);
  if (names.sh_size > (1u << 24)) throw std::runtime_error(path + ": section name table too large");
  std::vector<char> strtab(names.sh_size + 1, '\0');
  in.seekg(static_cast<std::streamoff>(names.sh_offset));
  in.read(strtab.data(), static_cast<std::streamsize>(names.sh_size));
  if (!in) throw std::runtime_error(path + ": truncated section name table");

  for (unsigned i = 0; i < eh.e_shnum; ++i) {
    const Elf64_Shdr sh = section(i);
    if (sh.sh_name >= names.sh_size) continue;
    if (std::strcmp(strtab.data() + sh.sh_name, WANHOST_ABI_SECTION) != 0) continue;
    if (sh.sh_type == SHT_NOBITS || sh.sh_size < sizeof(AbiTag))
      throw std::runtime_error(path + ": section " WANHOST_ABI_SECTION " has " +
                               std::to_string(sh.sh_size) + " bytes, expected at least " +
                               std::to_string(sizeof(AbiTag)));
    return read_at<AbiTag>(in, sh.sh_offset, path, WANHOST_ABI_SECTION " section");
  }
  return std::nullopt;
}

std::string describe(const AbiTag& t) {
  return "sdk " + std::to_string(t.sdk_major) + "." + std::to_string(t.sdk_minor) + ", torch " +
         fixed_string(t.torch_version, sizeof t.torch_version) + ", cxx11-abi " +
         std::to_string(t.cxx11_abi) + ", cuda " + (t.cuda ? "on" : "off");
}

std::string abi_mismatch(const AbiTag& p, const AbiTag& h) {
  if (std::memcmp(p.magic, h.magic, sizeof p.magic) != 0)
    return "bad ABI tag magic (not a wanhost plugin, or a tag from an incompatible SDK generation)";
  if (p.tag_size != h.tag_size)
    return "ABI tag size " + std::to_string(p.tag_size) + " but this host expects " +
           std::to_string(h.tag_size);
  std::string why;
  auto add = [&](const std::string& what, const std::string& plugin, const std::string& host) {
    why += (why.empty() ? "" : "; ") + what + ": plugin " + plugin + ", host " + host;
  };
  if (p.sdk_major != h.sdk_major)
    add("SDK ABI major", std::to_string(p.sdk_major), std::to_string(h.sdk_major));
  else if (p.sdk_minor > h.sdk_minor)
    add("SDK ABI minor (plugin needs a newer host)", std::to_string(p.sdk_minor),
        std::to_string(h.sdk_minor));
  const std::string pt = fixed_string(p.torch_version, sizeof p.torch_version);
  const std::string ht = fixed_string(h.torch_version, sizeof h.torch_version);
  if (pt != ht) add("LibTorch version", pt, ht);
  if (p.cxx11_abi != h.cxx11_abi)
    add("_GLIBCXX_USE_CXX11_ABI", std::to_string(p.cxx11_abi), std::to_string(h.cxx11_abi));
  if (p.cuda != h.cuda) add("CUDA", p.cuda ? "on" : "off", h.cuda ? "on" : "off");
  return why;
}

}  // namespace wanhost::core
