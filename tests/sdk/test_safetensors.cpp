// safetensors reader/writer: round trips, byte compatibility with the reference writer, every
// validation rule (safetensors format specification, huggingface/safetensors README, "Format"),
// pickle/zip refusal, sharded indexes and atomic saving.
#include <dirent.h>
#include <ftw.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "wanhost/errors.hpp"
#include "wanhost/kit/safetensors.hpp"

namespace st = wanhost::safetensors;
using namespace std::string_literals;

namespace {

// Folder helpers use POSIX, not std::filesystem: LibTorch exports its own, ABI-mismatched copies
// of several std::filesystem functions (remove_all crashes with GCC 12's libstdc++).
void remove_tree(const std::string& path) {
  ::nftw(
      path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); },
      16, FTW_DEPTH | FTW_PHYS);
}

void make_dirs(const std::string& path) {
  for (std::size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
    ::mkdir(path.substr(0, slash).c_str(), 0755);
    if (slash == std::string::npos) break;
  }
}

// A fresh folder per test under the scratch path the build gives this executable.
class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::string(WANHOST_TEST_TMP) + "/" + info->test_suite_name() + "." + info->name();
    remove_tree(dir_);
    make_dirs(dir_);
  }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string le64(std::uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
  return s;
}

// A file from its header JSON (padded with spaces to a multiple of 8 unless told not to) and
// data bytes.
std::string file_bytes(std::string header, const std::string& data = {}, bool pad = true) {
  if (pad) header.resize((header.size() + 7) / 8 * 8, ' ');
  return le64(header.size()) + header + data;
}

// Files in `dir` other than `keep`: leftover temporaries would show up here.
std::vector<std::string> others(const std::string& dir, const std::string& keep) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  while (const dirent* e = d ? ::readdir(d) : nullptr) {
    const std::string name = e->d_name;
    if (name != "." && name != ".." && name != keep) names.push_back(name);
  }
  if (d) ::closedir(d);
  return names;
}

// Runs `fn`, which must throw FormatError whose message holds `phrase` and `file`.
void expect_format_error(const std::function<void()>& fn, const std::string& phrase,
                         const std::string& file) {
  try {
    fn();
    ADD_FAILURE() << "no FormatError; expected one containing '" << phrase << "'";
  } catch (const wanhost::FormatError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(phrase), std::string::npos)
        << "message: " << what << "\nwanted: " << phrase;
    EXPECT_NE(what.find(file), std::string::npos)
        << "message: " << what << "\nwanted file: " << file;
  }
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  at::Tensor ac = a.contiguous(), bc = b.contiguous();
  return ac.nbytes() == bc.nbytes() &&
         (ac.nbytes() == 0 || std::memcmp(ac.data_ptr(), bc.data_ptr(), ac.nbytes()) == 0);
}

// A tensor of `type` and `shape` filled with seeded random bytes (bools stay 0/1).
at::Tensor random_tensor(at::ScalarType type, std::vector<std::int64_t> shape, int seed) {
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(type));
  auto* p = static_cast<unsigned char*>(out.data_ptr());
  std::uint32_t x = 2463534242u + static_cast<std::uint32_t>(seed);
  for (std::size_t i = 0; i < out.nbytes(); ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    p[i] = static_cast<unsigned char>(type == at::kBool ? (x & 1) : x);
  }
  return out;
}

const std::vector<at::ScalarType> kMappable = {
    at::kBool,        at::kByte,          at::kChar,   at::kShort,        at::kUInt16,
    at::kInt,         at::kUInt32,        at::kLong,   at::kUInt64,       at::kHalf,
    at::kBFloat16,    at::kFloat,         at::kDouble, at::kComplexFloat, at::kFloat8_e4m3fn,
    at::kFloat8_e5m2, at::kFloat8_e8m0fnu};

// ---------------------------------------------------------------------------------------------
// Round trips

TEST_F(Safetensors, RoundTripEveryMappableDtype) {
  std::map<std::string, at::Tensor> tensors;
  int seed = 0;
  for (auto type : kMappable) {
    tensors["t_" + std::string(c10::toString(type))] = random_tensor(type, {3, 5}, ++seed);
  }
  tensors["empty"] = at::empty({0, 3}, at::kFloat);
  tensors["scalar"] = random_tensor(at::kBFloat16, {}, ++seed);
  tensors["odd_u8"] = random_tensor(at::kByte, {7}, ++seed);  // shifts later offsets off alignment
  tensors["transposed"] = random_tensor(at::kFloat, {4, 6}, ++seed).t();
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"ünïcode", "✓"}};
  const std::string file = path("all.safetensors");
  st::save(file, tensors, metadata);

  st::File f = st::File::open(file);
  EXPECT_EQ(f.metadata(), metadata);
  EXPECT_EQ(f.tensors().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    ASSERT_TRUE(f.contains(name)) << name;
    EXPECT_EQ(f.info(name).dtype, st::dtype_tag(t.scalar_type())) << name;
    EXPECT_TRUE(same_bytes(f.load(name), t)) << name;
  }
  EXPECT_EQ(f.load("scalar").dim(), 0);
  EXPECT_EQ(f.load("empty").sizes(), (at::IntArrayRef{0, 3}));
  // Each tensor starts at a multiple of its element size.
  for (const auto& t : f.tensors())
    EXPECT_EQ(t.begin % (st::dtype_bits(t.dtype) / 8), 0u) << t.name;
  // load_all agrees, and loaded tensors own their data after the File is gone.
  auto all = f.load_all();
  f = st::File::open(file);
  EXPECT_EQ(all.size(), tensors.size());
  EXPECT_TRUE(same_bytes(all.at("t_BFloat16"), tensors.at("t_BFloat16")));
}

TEST_F(Safetensors, NoTensorsAndNoMetadata) {
  const std::string file = path("none.safetensors");
  st::save(file, {});
  EXPECT_EQ(read_bytes(file), le64(8) + "{}      ");
  st::File f = st::File::open(file);
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_TRUE(f.metadata().empty());
}

TEST_F(Safetensors, DtypeMapping) {
  for (auto type : kMappable) {
    const std::string tag = st::dtype_tag(type);
    EXPECT_GT(st::dtype_bits(tag), 0) << tag;
    EXPECT_EQ(st::scalar_type(tag, "x"), type) << tag;
  }
  EXPECT_THROW(st::dtype_tag(at::kComplexDouble), wanhost::FormatError);
  EXPECT_THROW(st::dtype_tag(at::kQInt8), wanhost::FormatError);
  expect_format_error([] { st::scalar_type("F4", "some.safetensors"); }, "no LibTorch equivalent",
                      "some.safetensors");
  expect_format_error([] { st::scalar_type("Q4", "some.safetensors"); }, "not a safetensors dtype",
                      "some.safetensors");
}

// ---------------------------------------------------------------------------------------------
// Byte compatibility

// Written by the Python safetensors package 0.8.0:
//   save_file({"b_weight": tensor([[1.5, -2.0], [0.25, 3.0]], dtype=bfloat16),
//              "a_bias": tensor([1, 2, 3]), "c_flag": tensor([True, False, True]),
//              "d_empty": zeros(0, 3), "e_scalar": tensor(7.0, dtype=float16)},
//             metadata={"format": "pt", "note": "hi"})
const std::string kPythonFile =
    "\x68\x01\x00\x00\x00\x00\x00\x00"s
    R"({"__metadata__":{"format":"pt","note":"hi"},"a_bias":{"dtype":"I64","shape":[3],)"
    R"("data_offsets":[0,24]},"d_empty":{"dtype":"F32","shape":[0,3],"data_offsets":[24,24]},)"
    R"("b_weight":{"dtype":"BF16","shape":[2,2],"data_offsets":[24,32]},"e_scalar":{"dtype":)"
    R"("F16","shape":[],"data_offsets":[32,34]},"c_flag":{"dtype":"BOOL","shape":[3],)"
    R"("data_offsets":[34,37]}}       )"
    "\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00"s
    "\x03\x00\x00\x00\x00\x00\x00\x00\xc0\x3f\x00\xc0\x80\x3e\x40\x40\x00\x47\x01\x00\x01"s;

TEST_F(Safetensors, LoadsFileWrittenByPythonSafetensors) {
  ASSERT_EQ(kPythonFile.size(), 405u);
  const std::string file = path("python.safetensors");
  write_bytes(file, kPythonFile);
  st::File f = st::File::open(file);
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "hi"}}));
  EXPECT_TRUE(at::equal(f.load("a_bias"), at::tensor({1, 2, 3}, at::kLong)));
  EXPECT_TRUE(at::equal(f.load("b_weight").to(at::kFloat),
                        at::tensor({1.5f, -2.0f, 0.25f, 3.0f}).reshape({2, 2})));
  EXPECT_TRUE(at::equal(f.load("c_flag"), at::tensor({1, 0, 1}, at::kByte).to(at::kBool)));
  EXPECT_EQ(f.load("d_empty").sizes(), (at::IntArrayRef{0, 3}));
  at::Tensor scalar = f.load("e_scalar");
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_EQ(scalar.scalar_type(), at::kHalf);
  EXPECT_EQ(scalar.item<float>(), 7.0f);
  // Sorted by offset; the two tensors sharing offset 24 (one empty) are both legal.
  std::vector<std::string> order;
  for (const auto& t : f.tensors()) order.push_back(t.name);
  EXPECT_EQ(order,
            (std::vector<std::string>{"a_bias", "d_empty", "b_weight", "e_scalar", "c_flag"}));
}

TEST_F(Safetensors, WriterLayoutMatchesSpecByteByByte) {
  const std::string file = path("layout.safetensors");
  st::save(file, {{"b", at::tensor({1.0f, 2.0f})}, {"a", at::tensor({1, 2, 3}, at::kByte)}},
           {{"k", "v"}});
  // Keys sorted with __metadata__ first; F32 data before U8 (largest elements first); the
  // 132-byte JSON padded with spaces to 136 so data starts at byte 144.
  const std::string expected =
      "\x88\x00\x00\x00\x00\x00\x00\x00"s
      R"({"__metadata__":{"k":"v"},"a":{"dtype":"U8","shape":[3],"data_offsets":[8,11]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}    )"
      "\x00\x00\x80\x3f\x00\x00\x00\x40\x01\x02\x03"s;
  EXPECT_EQ(read_bytes(file), expected);
}

TEST_F(Safetensors, HeaderMayStartWith0x80) {
  // A 128-byte header makes the first byte 0x80, the pickle protocol opcode: still safetensors.
  std::string header = R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  header.resize(128, ' ');
  const std::string file = path("x.safetensors");
  write_bytes(file, file_bytes(header, "\x2a"));
  ASSERT_EQ(static_cast<unsigned char>(read_bytes(file)[0]), 0x80);
  EXPECT_NO_THROW(st::refuse_unsafe_formats(file));
  EXPECT_EQ(st::File::open(file).load("x").item<std::uint8_t>(), 42);
}

TEST_F(Safetensors, SubByteDtypesValidateButDoNotLoad) {
  const std::string file = path("fp4.safetensors");
  write_bytes(file, file_bytes(R"({"a":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]},)"
                               R"("b":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[3,6]}})",
                               "abcdef"));
  st::File f = st::File::open(file);
  EXPECT_EQ(f.tensors().size(), 2u);
  expect_format_error([&] { f.load("a"); }, "no LibTorch equivalent", file);
}

TEST_F(Safetensors, ParseHeaderNeedsOnlyTheHeaderBytes) {
  const std::string bytes = kPythonFile;
  const std::uint64_t n = 8 + 0x168;
  st::Header h = st::parse_header(std::string_view(bytes).substr(0, n), bytes.size(), "p");
  EXPECT_EQ(h.header_size, 0x168u);
  EXPECT_EQ(h.tensors.size(), 5u);
}

// ---------------------------------------------------------------------------------------------
// Malformed files: one case per rule

struct Malformed {
  const char* name;
  std::string bytes;
  const char* phrase;
};

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  std::uint64_t begin, std::uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
}

std::vector<Malformed> malformed_cases() {
  const std::string f32x2 = entry("a", "F32", "[2]", 0, 8);
  const std::string eight(8, 'x');
  return {
      {"empty_file", "", "header too small"},
      {"seven_bytes", "\x01\x00\x00\x00\x00\x00\x00"s, "header too small"},
      {"length_over_limit", le64(100'000'001) + "{}", "header too large"},
      {"length_max_u64", le64(~0ull) + "{}", "header too large"},
      {"length_beyond_file", le64(1000) + "{}      ", "invalid header length"},
      {"zero_length", le64(0), "must be a JSON object starting with '{'"},
      {"leading_space", file_bytes(" {}"), "must be a JSON object starting with '{'"},
      {"array_header", file_bytes("[1]"), "must be a JSON object"},
      {"not_utf8", file_bytes("{\"a\xff\":1}"), "not valid UTF-8 at byte 11"},
      {"overlong_utf8", file_bytes("{\"\xc0\xaf\":1}"), "not valid UTF-8"},
      {"nul_byte", file_bytes("{}\0  "s, "", false), "NUL byte in JSON at byte 10"},
      {"not_json", file_bytes("{oops}"), "not valid JSON"},
      {"trailing_json", file_bytes("{} {}"), "not valid JSON"},
      {"unclosed", file_bytes("{\"a\":"), "not valid JSON"},
      {"number_overflow",
       file_bytes(R"({"a":{"dtype":"F32","shape":[1e999],"data_offsets":[0,0]}})"),
       "not valid JSON"},
      {"duplicate_tensor", file_bytes("{" + f32x2 + "," + f32x2 + "}", eight),
       "duplicate key \"a\" at the top level"},
      {"duplicate_field",
       file_bytes(R"({"a":{"dtype":"F32","dtype":"U8","shape":[2],"data_offsets":[0,8]}})", eight),
       "duplicate key \"dtype\" in \"a\""},
      {"duplicate_metadata_key", file_bytes(R"({"__metadata__":{"k":"1","k":"2"}})"),
       "duplicate key \"k\" in \"__metadata__\""},
      {"metadata_number", file_bytes(R"({"__metadata__":{"k":1}})"),
       "__metadata__ value of key \"k\" must be a string"},
      {"metadata_nested", file_bytes(R"({"__metadata__":{"k":{"x":"y"}}})"),
       "__metadata__ value of key \"k\" must be a string"},
      {"metadata_not_object", file_bytes(R"({"__metadata__":"k"})"),
       "__metadata__ must be an object"},
      {"entry_not_object", file_bytes(R"({"a":[1]})"), "tensor \"a\": entry must be an object"},
      {"missing_shape", file_bytes(R"({"a":{"dtype":"F32","data_offsets":[0,0]}})"),
       "tensor \"a\": missing field \"shape\""},
      {"unknown_field",
       file_bytes(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[0,4],"x":1}})", "abcd"),
       "tensor \"a\": unknown field \"x\""},
      {"unknown_dtype", file_bytes("{" + entry("a", "F128", "[1]", 0, 16) + "}", eight + eight),
       "tensor \"a\": unknown dtype \"F128\""},
      {"dtype_not_string",
       file_bytes(R"({"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", "abcd"),
       "unknown dtype 4"},
      {"negative_shape", file_bytes("{" + entry("a", "F32", "[-1]", 0, 0) + "}"),
       "shape entry 0 is -1"},
      {"fractional_shape", file_bytes("{" + entry("a", "F32", "[2.0]", 0, 8) + "}", eight),
       "shape entry 0 is 2.0"},
      {"shape_over_int64",
       file_bytes("{" + entry("a", "U8", "[9223372036854775808,0]", 0, 0) + "}"),
       "not a non-negative integer that fits int64"},
      {"nested_shape", file_bytes("{" + entry("a", "F32", "[[2]]", 0, 8) + "}", eight),
       "nested deeper than 3 levels"},
      {"shape_product_overflow",
       file_bytes("{" + entry("a", "U8", "[4294967296,4294967296,2]", 0, 0) + "}"),
       "overflow computing the element count"},
      {"bits_overflow", file_bytes("{" + entry("a", "F64", "[2305843009213693952]", 0, 0) + "}"),
       "overflow computing its size in bits"},
      {"sub_byte_misaligned", file_bytes("{" + entry("a", "F4", "[3]", 0, 1) + "}", "x"),
       "misaligned F4 tensor"},
      {"f6_misaligned", file_bytes("{" + entry("a", "F6_E3M2", "[1]", 0, 1) + "}", "x"),
       "misaligned F6_E3M2 tensor"},
      {"offsets_not_pair",
       file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})", eight),
       "data_offsets must be [begin, end]"},
      {"offsets_negative",
       file_bytes(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[-8,-8]}})"),
       "data_offsets must be [begin, end]"},
      {"end_before_begin", file_bytes("{" + entry("a", "F32", "[2]", 8, 0) + "}", eight),
       "end before they begin"},
      {"span_mismatch", file_bytes("{" + entry("a", "F32", "[2]", 0, 4) + "}", "abcd"),
       "span 4 bytes but its shape and dtype F32 need 8 bytes"},
      {"gap_at_start", file_bytes("{" + entry("a", "F32", "[1]", 4, 8) + "}", eight),
       "invalid offset: gap of 4 bytes"},
      {"gap_between",
       file_bytes(
           "{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 8, 12) + "}",
           eight + "abcd"),
       "tensor \"b\": invalid offset: gap of 4 bytes"},
      {"overlap", file_bytes("{" + f32x2 + "," + entry("b", "F32", "[1]", 4, 8) + "}", eight),
       "overlap tensor \"a\""},
      {"alias_same_bytes",
       file_bytes("{" + f32x2 + "," + entry("b", "F32", "[2]", 0, 8) + "}", eight),
       "overlap tensor \"a\""},
      {"empty_inside_other",
       file_bytes("{" + f32x2 + "," + entry("b", "F32", "[0]", 4, 4) + "}", eight),
       "overlap tensor \"a\""},
      {"trailing_bytes", file_bytes("{" + f32x2 + "}", eight + "junk"), "trailing bytes: 4 bytes"},
      {"trailing_without_tensors", file_bytes("{}", "x"), "trailing bytes: 1 bytes"},
      {"data_truncated", file_bytes("{" + f32x2 + "}", "abcd"), "incomplete buffer"},
  };
}

TEST_F(Safetensors, MalformedFilesAreRefusedWithSpecificMessages) {
  for (const auto& c : malformed_cases()) {
    SCOPED_TRACE(c.name);
    const std::string file = path(std::string(c.name) + ".safetensors");
    write_bytes(file, c.bytes);
    expect_format_error([&] { st::File::open(file); }, c.phrase, file);
    // The pure parser agrees.
    expect_format_error([&] { st::parse_header(c.bytes, c.bytes.size(), c.name); }, c.phrase,
                        c.name);
  }
}

TEST_F(Safetensors, ValidEdgeCasesAreAccepted) {
  const std::vector<std::pair<const char*, std::string>> cases = {
      {"unpadded", file_bytes("{}", "", false)},
      {"padded_json_whitespace", file_bytes("{}\n\t ", "", false)},
      {"two_empty_same_offset", file_bytes("{" + entry("a", "F32", "[0]", 0, 0) + "," +
                                           entry("b", "I8", "[2,0]", 0, 0) + "}")},
      {"zero_dim_with_huge_other",
       file_bytes("{" + entry("a", "U8", "[0,4294967296]", 0, 0) + "}")},
      {"scalar", file_bytes("{" + entry("a", "F16", "[]", 0, 2) + "}", "ab")},
      {"escaped_name",
       file_bytes(R"({"a\"\u00e9\n":{"dtype":"U8","shape":[],"data_offsets":[0,1]}})", "z")},
  };
  for (const auto& [name, bytes] : cases) {
    SCOPED_TRACE(name);
    const std::string file = path(std::string(name) + ".safetensors");
    write_bytes(file, bytes);
    EXPECT_NO_THROW(st::File::open(file).load_all());
  }
}

TEST_F(Safetensors, NonRegularFilesAreRefused) {
  expect_format_error([&] { st::File::open(dir_); }, "not a regular file", dir_);
  const std::string fifo = path("pipe.safetensors");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  expect_format_error([&] { st::File::open(fifo); }, "not a regular file", fifo);
  expect_format_error([&] { st::File::open(path("missing.safetensors")); }, "cannot open",
                      "missing.safetensors");
}

TEST_F(Safetensors, TruncationAtEveryByteIsAFormatError) {
  const std::string file = path("whole.safetensors");
  st::save(file,
           {{"w", at::arange(6, at::kFloat).reshape({2, 3})},
            {"b", at::tensor({1, 2}, at::kShort)},
            {"s", at::scalar_tensor(3, at::kByte)}},
           {{"k", "v"}});
  const std::string whole = read_bytes(file);
  const std::uint64_t data_start = 8 + st::parse_header(whole, whole.size(), "w").header_size;
  for (std::size_t len = 0; len < whole.size(); ++len) {
    SCOPED_TRACE(len);
    const std::string cut = path("cut.safetensors");
    write_bytes(cut, whole.substr(0, len));
    const char* phrase = len < 8            ? "header too small"
                         : len < data_start ? "invalid header length"
                                            : "incomplete buffer";
    expect_format_error([&] { st::File::open(cut); }, phrase, cut);
  }
}

// ---------------------------------------------------------------------------------------------
// Pickle / zip

TEST_F(Safetensors, PickleAndZipAreRefusedWithConvertHint) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"model.pt", "PK\x03\x04\x00\x00\x08\x08\x00\x00archive/data.pkl"s},
      {"legacy.pth", "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.}q\x00"s},
      {"pytorch_model.bin", "\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94."s},
      {"cache.meta", "\x80\x05\x95"s},
  };
  for (const auto& [name, bytes] : cases) {
    SCOPED_TRACE(name);
    const std::string file = path(name);
    write_bytes(file, bytes);
    for (const auto& check : std::vector<std::function<void()>>{
             [&] { st::refuse_unsafe_formats(file); }, [&] { st::File::open(file); },
             [&] { st::Collection::open(file); }}) {
      expect_format_error(check, "unpickling can execute arbitrary code", file);
      expect_format_error(check, "weights_only=True", file);
      expect_format_error(check, "save_file(torch.load('" + file + "'", file);
    }
  }
  expect_format_error([&] { st::File::open(path("model.pt")); }, "zip archive", "model.pt");
  expect_format_error([&] { st::File::open(path("legacy.pth")); }, "pickle file", "legacy.pth");
  expect_format_error([&] { st::File::open(path("legacy.pth")); }, "legacy.safetensors'",
                      "legacy.pth");
  // Other garbage keeps its safetensors error.
  write_bytes(path("text.safetensors"), "hello world, not a model");
  EXPECT_NO_THROW(st::refuse_unsafe_formats(path("text.safetensors")));
  expect_format_error([&] { st::File::open(path("text.safetensors")); }, "header too large",
                      "text.safetensors");
}

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints

class Sharded : public Safetensors {
 protected:
  void SetUp() override {
    Safetensors::SetUp();
    st::save(path("m-1.safetensors"), {{"a", at::ones({2})}, {"b", at::zeros({3}, at::kInt)}});
    st::save(path("m-2.safetensors"), {{"c", at::arange(4, at::kFloat)}});
  }
  void write_index(const std::string& weight_map,
                   const std::string& name = "m.safetensors.index.json") {
    write_bytes(path(name), R"({"metadata":{"total_size":28},"weight_map":)" + weight_map + "}");
  }
  std::string index() const { return path("m.safetensors.index.json"); }
  const std::string good_map_ =
      R"({"a":"m-1.safetensors","b":"m-1.safetensors","c":"m-2.safetensors"})";
};

TEST_F(Sharded, OpensIndexOrFolder) {
  write_index(good_map_);
  for (const auto& where : {index(), dir_}) {
    SCOPED_TRACE(where);
    st::Collection c = st::Collection::open(where);
    EXPECT_EQ(c.names(), (std::vector<std::string>{"a", "b", "c"}));
    EXPECT_TRUE(at::equal(c.load("c"), at::arange(4, at::kFloat)));
    EXPECT_EQ(c.info("b").dtype, "I32");
    EXPECT_THROW(c.load("zzz"), std::out_of_range);
  }
}

TEST_F(Sharded, SingleFileAndFolderWithOneFile) {
  st::Collection c = st::Collection::open(path("m-2.safetensors"));
  EXPECT_EQ(c.names(), std::vector<std::string>{"c"});
  ::unlink(path("m-1.safetensors").c_str());
  EXPECT_EQ(st::Collection::open(dir_).names(), std::vector<std::string>{"c"});
}

TEST_F(Sharded, BrokenIndexesAreRefused) {
  struct Case {
    const char* name;
    std::string weight_map;
    const char* phrase;
  };
  const std::vector<Case> cases = {
      {"missing_shard", R"({"a":"m-1.safetensors","b":"m-1.safetensors","c":"m-3.safetensors"})",
       "shard \"m-3.safetensors\" not found"},
      {"parent_dir", R"({"a":"../m-1.safetensors"})", "is not a plain file name"},
      {"absolute", R"({"a":"/etc/m-1.safetensors"})", "is not a plain file name"},
      {"dot_dot", R"({"a":".."})", "is not a plain file name"},
      {"nul", R"({"a":"m-1.safetensors\u0000x"})", "is not a plain file name"},
      {"empty_name", R"({"a":""})", "is not a plain file name"},
      {"listed_twice", R"({"a":"m-1.safetensors","a":"m-2.safetensors"})", "duplicate key \"a\""},
      {"missing_from_shard",
       R"({"a":"m-1.safetensors","b":"m-2.safetensors","c":"m-2.safetensors"})",
       "tensor \"b\" is mapped to shard \"m-2.safetensors\" but missing from it"},
      {"extra_in_shard", R"({"a":"m-1.safetensors","c":"m-2.safetensors"})",
       "tensor \"b\" is stored in shard \"m-1.safetensors\" but not listed in weight_map"},
      {"not_string", R"({"a":1})", "must be a string"},
      {"not_object", R"(["m-1.safetensors"])", "weight_map must be an object"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    write_index(c.weight_map);
    expect_format_error([&] { st::Collection::open(index()); }, c.phrase, index());
  }
  write_bytes(index(), R"({"weight_map":{},"extra":1})");
  expect_format_error([&] { st::Collection::open(index()); }, "unknown key \"extra\"", index());
  write_bytes(index(), R"({"metadata":[],"weight_map":{}})");
  expect_format_error([&] { st::Collection::open(index()); }, "metadata must be an object",
                      index());
}

TEST_F(Sharded, TensorInTwoShardsIsRefused) {
  st::save(path("m-2.safetensors"), {{"c", at::arange(4, at::kFloat)}, {"a", at::ones({2})}});
  write_index(good_map_);
  expect_format_error([&] { st::Collection::open(index()); },
                      "tensor \"a\" is stored in shard \"m-2.safetensors\" and in shard "
                      "\"m-1.safetensors\"",
                      index());
}

TEST_F(Sharded, FolderCandidates) {
  // Two shard files and no index: ambiguous.
  expect_format_error([&] { st::Collection::open(dir_); },
                      "several safetensors candidates, name one: m-1.safetensors, m-2.safetensors",
                      dir_);
  write_index(good_map_);
  write_index(good_map_, "m.fp16.safetensors.index.json");
  expect_format_error([&] { st::Collection::open(dir_); },
                      "m.fp16.safetensors.index.json, m.safetensors.index.json", dir_);
  ::unlink(path("m.fp16.safetensors.index.json").c_str());
  // A stray file the index does not name is a second candidate.
  st::save(path("other.safetensors"), {});
  expect_format_error([&] { st::Collection::open(dir_); },
                      "m.safetensors.index.json, other.safetensors", dir_);
  const std::string empty = path("empty");
  ::mkdir(empty.c_str(), 0755);
  expect_format_error([&] { st::Collection::open(empty); }, "holds no", empty);
}

// ---------------------------------------------------------------------------------------------
// Atomic save

TEST_F(Safetensors, SaveLeavesNoTemporaryFiles) {
  const std::string file = path("ckpt.safetensors");
  st::save(file, {{"w", at::ones({4})}});
  st::save(file, {{"w", at::zeros({4})}});
  EXPECT_TRUE(others(dir_, "ckpt.safetensors").empty());
  EXPECT_TRUE(at::equal(st::File::open(file).load("w"), at::zeros({4})));
}

TEST_F(Safetensors, SaveOverAnOpenFileKeepsTheOpenMappingValid) {
  // The bug the reference writer fixed (#764): writing in place over a mapped file zero-filled it.
  const std::string file = path("ckpt.safetensors");
  st::save(file, {{"w", at::ones({1024})}});
  st::File before = st::File::open(file);
  st::save(file, {{"w", at::full({1024}, 2.0f)}});
  EXPECT_TRUE(at::equal(before.load("w"), at::ones({1024})));
  EXPECT_TRUE(at::equal(st::File::open(file).load("w"), at::full({1024}, 2.0f)));
}

TEST_F(Safetensors, FailedSaveKeepsTheOldFile) {
  const std::string file = path("ckpt.safetensors");
  st::save(file, {{"w", at::ones({4})}});
  const std::string old = read_bytes(file);

  // Fails before anything is written: a dtype safetensors cannot hold.
  expect_format_error(
      [&] {
        st::save(file, {{"w", at::zeros({4}, at::kComplexDouble)}});
      },
      "no safetensors equivalent", file);
  expect_format_error([&] { st::save(file, {{"__metadata__", at::ones({1})}}); }, "reserved", file);
  expect_format_error([&] { st::save(file, {{"u", at::Tensor()}}); }, "undefined", file);
  expect_format_error(
      [&] {
        st::save(file, {{"bad\xff", at::ones({1})}});
      },
      "tensor name \"bad\ufffd\" is not valid UTF-8", file);
  expect_format_error(
      [&] {
        st::save(file, {{"w", at::ones({1})}}, {{"k", "\xc0"}});
      },
      "metadata value of \"k\"", file);
  // Fails mid-write: the header is out, then a meta tensor has no data to copy to the CPU.
  EXPECT_ANY_THROW(st::save(
      file, {{"a", at::ones({4})}, {"z", at::empty({4}, at::TensorOptions().device(at::kMeta))}}));
  EXPECT_EQ(read_bytes(file), old);
  EXPECT_TRUE(others(dir_, "ckpt.safetensors").empty());
}

TEST_F(Safetensors, FailedRenameRemovesTheTemporaryFile) {
  // The target is a non-empty folder: everything succeeds up to the rename.
  const std::string target = path("taken.safetensors");
  ::mkdir(target.c_str(), 0755);
  write_bytes(target + "/keep", "x");
  expect_format_error([&] { st::save(target, {{"w", at::ones({4})}}); }, "cannot rename", target);
  EXPECT_TRUE(others(dir_, "taken.safetensors").empty());
  EXPECT_EQ(read_bytes(target + "/keep"), "x");
}

TEST_F(Safetensors, WriteErrorKeepsTheOldFile) {
  // A file-size limit makes write() fail with EFBIG part-way, like a full disk, even for root.
  const std::string file = path("ckpt.safetensors");
  st::save(file, {{"w", at::ones({4})}});
  const std::string old = read_bytes(file);
  struct rlimit saved {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  auto* previous = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = saved;
  small.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  try {
    st::save(file, {{"w", at::ones({1 << 16})}});
    ADD_FAILURE() << "save succeeded past the file-size limit";
  } catch (const wanhost::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot write"), std::string::npos) << e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, previous);
  EXPECT_EQ(read_bytes(file), old);
  EXPECT_TRUE(others(dir_, "ckpt.safetensors").empty());
}

TEST_F(Safetensors, ReadOnlyFolderKeepsTheOldFile) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores folder permissions";
  const std::string file = path("ckpt.safetensors");
  st::save(file, {{"w", at::ones({4})}});
  ::chmod(dir_.c_str(), 0500);
  expect_format_error(
      [&] {
        st::save(file, {{"w", at::zeros({4})}});
      },
      "cannot create temporary file", file);
  ::chmod(dir_.c_str(), 0700);
  EXPECT_TRUE(at::equal(st::File::open(file).load("w"), at::ones({4})));
  EXPECT_TRUE(others(dir_, "ckpt.safetensors").empty());
}

}  // namespace
