// Runs the fuzz target without libFuzzer: every seed in the corpus, then a fixed number of
// seeded random mutations of them. It exercises the header parser in every build (g++, no
// sanitizers needed); the clang/libFuzzer smoke test explores further where clang is installed.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "wanhost/kit/safetensors_header.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

// Not linked with LibTorch, so std::filesystem is safe here (see test_safetensors.cpp).
std::vector<std::string> read_corpus() {
  std::vector<std::string> seeds;
  for (const auto& e : std::filesystem::directory_iterator(WANHOST_FUZZ_CORPUS)) {
    std::ifstream in(e.path(), std::ios::binary);
    seeds.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  return seeds;
}

void run(const std::string& input) {
  LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(input.data()), input.size());
}

bool accepted(const std::string& input) {
  try {
    wanhost::safetensors::parse_header(input, input.size(), "seed");
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

const std::vector<std::string> kTokens = {"{",
                                          "}",
                                          "[",
                                          "]",
                                          ":",
                                          ",",
                                          "\"",
                                          " ",
                                          "\\u0000",
                                          "\\ud800",
                                          "\xff",
                                          "\xc0\xaf",
                                          "\"__metadata__\"",
                                          "\"dtype\"",
                                          "\"shape\"",
                                          "\"data_offsets\"",
                                          "\"F32\"",
                                          "\"F4\"",
                                          "\"F6_E3M2\"",
                                          "\"BOOL\"",
                                          "-1",
                                          "0",
                                          "1e999",
                                          "2.0",
                                          "4294967296",
                                          "9223372036854775808",
                                          "18446744073709551615",
                                          "18446744073709551616",
                                          std::string(1, '\0')};

const std::vector<std::uint64_t> kLengths = {0,           1,           7,          8,
                                             100'000'000, 100'000'001, 1ull << 63, ~0ull};

class Mutator {
 public:
  explicit Mutator(std::uint32_t seed) : rng_(seed) {}

  std::string mutate(std::string s, const std::vector<std::string>& corpus) {
    const int steps = 1 + pick(4);
    for (int i = 0; i < steps; ++i) s = step(std::move(s), corpus);
    return s;
  }

 private:
  std::size_t pick(std::size_t n) { return n == 0 ? 0 : rng_() % n; }

  std::string step(std::string s, const std::vector<std::string>& corpus) {
    switch (pick(8)) {
      case 0:  // flip a bit
        if (!s.empty()) s[pick(s.size())] ^= static_cast<char>(1 << pick(8));
        return s;
      case 1:  // insert a token
        return s.insert(pick(s.size() + 1), kTokens[pick(kTokens.size())]);
      case 2:  // erase a range
        if (!s.empty()) s.erase(pick(s.size()), 1 + pick(8));
        return s;
      case 3:  // truncate
        return s.substr(0, pick(s.size() + 1));
      case 4:  // an interesting header length
        if (s.size() >= 8) {
          const std::uint64_t n = kLengths[pick(kLengths.size())];
          for (int b = 0; b < 8; ++b) s[b] = static_cast<char>(n >> (8 * b));
        }
        return s;
      case 5:  // splice another input
      {
        const std::string& other = corpus[pick(corpus.size())];
        return s.substr(0, pick(s.size() + 1)) + other.substr(pick(other.size() + 1));
      }
      default:  // edit the JSON and keep the length prefix right, to get past the first checks
        return edit_json(std::move(s));
    }
  }

  std::string edit_json(std::string s) {
    if (s.size() < 8) return s;
    std::uint64_t n = 0;
    for (int b = 7; b >= 0; --b) n = (n << 8) | static_cast<unsigned char>(s[b]);
    if (n > s.size() - 8) return s;
    std::string json = s.substr(8, n), data = s.substr(8 + n);
    if (pick(2) == 0 && !json.empty()) {
      json.erase(pick(json.size()), 1 + pick(4));
    } else {
      json.insert(pick(json.size() + 1), kTokens[pick(kTokens.size())]);
    }
    if (pick(4) == 0 && !data.empty()) data.pop_back();
    std::string prefix(8, '\0');
    for (int b = 0; b < 8; ++b) prefix[b] = static_cast<char>(json.size() >> (8 * b));
    return prefix + json + data;
  }

  std::mt19937 rng_;
};

TEST(SafetensorsHeaderReplay, CorpusSeedsRun) {
  const auto corpus = read_corpus();
  ASSERT_GE(corpus.size(), 10u) << WANHOST_FUZZ_CORPUS;
  int valid = 0;
  for (const auto& seed : corpus) {
    EXPECT_NO_THROW(run(seed));
    valid += accepted(seed);
  }
  EXPECT_GE(valid, 5) << "the corpus should hold valid files to mutate from";
}

TEST(SafetensorsHeaderReplay, RandomMutations) {
  const auto corpus = read_corpus();
  ASSERT_FALSE(corpus.empty());
  Mutator mutator(20240601);
  int accepted_count = 0;
  for (int i = 0; i < 200'000; ++i) {
    const std::string input = mutator.mutate(corpus[i % corpus.size()], corpus);
    try {
      run(input);
    } catch (const std::exception& e) {
      FAIL() << "iteration " << i << ": " << e.what();
    }
    if (i % 16 == 0) accepted_count += accepted(input);
  }
  // Some mutants must stay valid, or the mutator only ever tests the first checks.
  EXPECT_GT(accepted_count, 0);
}

}  // namespace
