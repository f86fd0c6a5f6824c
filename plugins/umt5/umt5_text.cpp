// umt5 text side: the Wan pipelines' prompt cleaning (Python's html.unescape and `\s` whitespace,
// on code points) and the tokenizer (SentencePiece on spiece.model plus the fast tokenizer's
// added-token matching, end-of-sequence and truncation).
#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <unordered_map>

#include <sentencepiece_processor.h>

#include "umt5.hpp"
#include "wanhost/errors.hpp"
#include "wanhost/kit/json_file.hpp"
#include "wanhost/log.hpp"

namespace wanhost::plugins::umt5 {

using wanhost::FormatError;

// ---- files (umt5.hpp) ---------------------------------------------------------------------

bool is_file(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_dir(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Reads a JSON file; `skip_top_level` names top-level keys whose values are not kept (the
// vocabulary of a 16 MB tokenizer.json).
Json read_json(const std::string& path, const std::set<std::string>& skip_top_level) {
  // Guarded read (regular files only: a FIFO would block), then a filtered parse.
  const std::string text = read_regular_file(path, std::size_t{1} << 30);
  try {
    return Json::parse(text, [&](int depth, Json::parse_event_t event, Json& parsed) {
      return !(depth == 1 && event == Json::parse_event_t::key &&
               skip_top_level.count(parsed.get<std::string>()));
    });
  } catch (const Json::exception&) {
    return parse_json_text(text, path);  // throws FormatError with line, column and byte
  }
}

namespace {

struct HtmlEntity {
  const char* name;
  const char* text;
};
struct HtmlCharref {
  char32_t code;
  const char* text;
};
#include "html_entities.inc"

// ---- UTF-8 <-> code points ----------------------------------------------------------------

std::u32string decode_utf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  std::size_t i = 0;
  const auto bad = [&](std::size_t at) {
    throw std::invalid_argument("text is not valid UTF-8 (byte " + std::to_string(at) + ")");
  };
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    int n = 0;
    char32_t cp = 0, min = 0;
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    } else if ((b0 & 0xE0) == 0xC0) {
      n = 1, cp = b0 & 0x1F, min = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
      n = 2, cp = b0 & 0x0F, min = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
      n = 3, cp = b0 & 0x07, min = 0x10000;
    } else {
      bad(i);
    }
    for (int k = 1; k <= n; ++k) {
      if (i + k >= s.size()) bad(i);
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) bad(i);
      cp = (cp << 6) | (b & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) bad(i);
    out.push_back(cp);
    i += static_cast<std::size_t>(n) + 1;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string encode_utf8(const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t cp : s) append_utf8(out, cp);
  return out;
}

// `\s` of the `regex` module, which diffusers' pipeline_wan imports as `re`: the Unicode
// White_Space property.
bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Python's str.isspace() (what str.strip() removes): White_Space plus U+001C..U+001F.
bool is_space(char32_t c) {
  return is_white_space(c) || (c >= 0x1C && c <= 0x1F);
}

// ---- html.unescape -------------------------------------------------------------------------

const std::unordered_map<std::u32string, std::u32string>& entity_map() {
  static const auto map = [] {
    std::unordered_map<std::u32string, std::u32string> m;
    for (const auto& e : kHtmlEntities) m.emplace(decode_utf8(e.name), decode_utf8(e.text));
    return m;
  }();
  return map;
}

bool is_digit(char32_t c) {
  return c >= '0' && c <= '9';
}
bool is_hex(char32_t c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
int hex_value(char32_t c) {
  return is_digit(c) ? static_cast<int>(c - '0') : static_cast<int>((c | 0x20) - 'a' + 10);
}

// A numeric reference's replacement (Python's html._replace_charref).
std::u32string numeric_charref(std::uint64_t num) {
  for (const auto& r : kInvalidCharrefs)
    if (r.code == num) return decode_utf8(r.text);
  if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return U"\uFFFD";
  for (char32_t c : kInvalidCodepoints)
    if (c == num) return U"";
  return std::u32string(1, static_cast<char32_t>(num));
}

// One pass of html.unescape: the regex &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)
// applied left to right, each match replaced as html._replace_charref does.
std::u32string unescape_once(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    if (s[i] != '&') {
      out.push_back(s[i++]);
      continue;
    }
    std::size_t j = i + 1;
    if (j < s.size() && s[j] == '#') {
      const bool hex = j + 1 < s.size() && (s[j + 1] == 'x' || s[j + 1] == 'X');
      std::size_t k = j + (hex ? 2 : 1);
      const std::size_t digits_start = k;
      std::uint64_t num = 0;
      while (k < s.size() && (hex ? is_hex(s[k]) : is_digit(s[k]))) {
        num = num * (hex ? 16 : 10) + static_cast<std::uint64_t>(hex_value(s[k]));
        num = std::min<std::uint64_t>(num, 0x110000);  // anything larger maps to U+FFFD alike
        ++k;
      }
      if (k == digits_start) {  // "&#" or "&#x" without digits: no reference
        out.push_back(s[i++]);
        continue;
      }
      if (k < s.size() && s[k] == ';') ++k;
      out += numeric_charref(num);
      i = k;
      continue;
    }
    // Named: 1..32 characters that are none of \t \n \f space < & # ;, then an optional ';'.
    std::size_t k = j;
    while (k < s.size() && k - j < 32 && s[k] != '\t' && s[k] != '\n' && s[k] != '\f' &&
           s[k] != ' ' && s[k] != '<' && s[k] != '&' && s[k] != '#' && s[k] != ';')
      ++k;
    if (k == j) {
      out.push_back(s[i++]);
      continue;
    }
    if (k < s.size() && s[k] == ';') ++k;
    const std::u32string name = s.substr(j, k - j);
    const auto& map = entity_map();
    if (auto it = map.find(name); it != map.end()) {
      out += it->second;
    } else {
      // The longest prefix (at least 2 characters) that is a name allowed without ';'.
      bool found = false;
      for (std::size_t x = name.size() - 1; x > 1 && !found; --x) {
        if (auto p = map.find(name.substr(0, x)); p != map.end()) {
          out += p->second;
          out += name.substr(x);
          found = true;
        }
      }
      if (!found) out += U"&" + name;
    }
    i = k;
  }
  return out;
}

std::u32string strip(const std::u32string& s) {
  std::size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

// A special-token entry of tokenizer_config.json: a string or an AddedToken object.
std::string token_text(const Json& v, const std::string& where) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  throw FormatError(where + ": expected a token string or an object with \"content\"");
}

// The fast tokenizer splits words at Unicode White_Space (after its normalizer); SentencePiece
// splits only at what its normalizer turns into a space, and keeps e.g. U+0085 or U+2028 inside
// a word. Writing those as spaces first gives the fast tokenizer's words. U+000B stays: both
// normalizers delete it.
std::string white_space_to_space(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;  // bytes of a White_Space character starting at i
    if (b0 == '\t' || b0 == '\n' || b0 == '\f' || b0 == '\r') {
      n = 1;
    } else if (b0 == 0xC2 && i + 1 < s.size()) {
      const auto b1 = static_cast<unsigned char>(s[i + 1]);
      n = (b1 == 0x85 || b1 == 0xA0) ? 2 : 0;
    } else if ((b0 == 0xE1 || b0 == 0xE2 || b0 == 0xE3) && i + 2 < s.size()) {
      const auto b1 = static_cast<unsigned char>(s[i + 1]);
      const auto b2 = static_cast<unsigned char>(s[i + 2]);
      const bool ws =
          (b0 == 0xE1 && b1 == 0x9A && b2 == 0x80) ||  // U+1680
          (b0 == 0xE2 && b1 == 0x80 &&
           (b2 <= 0x8A || b2 == 0xA8 || b2 == 0xA9 || b2 == 0xAF)) ||  // U+2000..200A, 2028/9, 202F
          (b0 == 0xE2 && b1 == 0x81 && b2 == 0x9F) ||                  // U+205F
          (b0 == 0xE3 && b1 == 0x80 && b2 == 0x80);                    // U+3000
      n = ws ? 3 : 0;
    }
    if (n > 0) {
      out.push_back(' ');
      i += n;
    } else {
      out.push_back(s[i++]);
    }
  }
  return out;
}

}  // namespace

std::string html_unescape(const std::string& text) {
  if (text.find('&') == std::string::npos) return text;
  return encode_utf8(unescape_once(decode_utf8(text)));
}

std::string clean_prompt(const std::string& text) {
  std::u32string s = decode_utf8(text);
  if (s.find(U'&') != std::u32string::npos) s = unescape_once(unescape_once(s));
  s = strip(s);
  std::u32string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (!is_white_space(s[i])) {
      out.push_back(s[i]);
      continue;
    }
    out.push_back(U' ');
    while (i + 1 < s.size() && is_white_space(s[i + 1])) ++i;
  }
  return encode_utf8(strip(out));
}

// ---- Tokenizer -----------------------------------------------------------------------------

struct AddedToken {
  std::string content;
  std::int64_t id;
  bool lstrip, rstrip;
};

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  std::vector<AddedToken> added;  // longest first
};

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

void Tokenizer::load(const std::string& dir) {
  if (!is_dir(dir))
    throw FormatError("umt5 tokenizer: '" + dir +
                      "' is not a folder (expected the pipeline's tokenizer/ folder with "
                      "spiece.model; pass --tokenizer DIR)");
  const std::string model = dir + "/spiece.model";
  const std::string fast = dir + "/tokenizer.json";
  const std::string config = dir + "/tokenizer_config.json";
  if (!is_file(model))
    throw FormatError(
        "umt5 tokenizer: no spiece.model in '" + dir + "'" +
        (is_file(fast) ? " (it has tokenizer.json, which the plugin cannot run on its own; copy "
                         "spiece.model of google/umt5-xxl beside it)"
                       : " (expected the pipeline's tokenizer/ folder: spiece.model, "
                         "tokenizer.json, tokenizer_config.json)"));
  auto impl = std::make_unique<Impl>();
  if (const auto status = impl->sp.Load(model); !status.ok())
    throw FormatError(model + ": not a SentencePiece model: " + status.ToString());

  // Added tokens, matched in the raw text before SentencePiece sees it, as the fast tokenizer
  // does: tokenizer.json's "added_tokens", else tokenizer_config.json's "added_tokens_decoder",
  // else the model's control and unknown pieces.
  Json tok_config = is_file(config) ? read_json(config) : Json::object();
  std::vector<AddedToken> added;
  const auto add = [&](const Json& e, const std::string& where, std::int64_t id) {
    if (!e.is_object() || !e.contains("content") || !e["content"].is_string())
      throw FormatError(where + ": expected an object with a string \"content\"");
    const auto content = e["content"].get<std::string>();
    if (content.empty()) throw FormatError(where + ": empty \"content\"");
    added.push_back({content, id, e.value("lstrip", false), e.value("rstrip", false)});
  };
  if (is_file(fast)) {
    const Json j = read_json(fast, {"model", "normalizer", "pre_tokenizer", "decoder"});
    const auto it = j.find("added_tokens");
    if (it != j.end() && !it->is_array())
      throw FormatError(fast + ": \"added_tokens\" must be an array");
    if (it != j.end()) {
      for (std::size_t i = 0; i < it->size(); ++i) {
        const auto where = fast + ": /added_tokens/" + std::to_string(i);
        const auto& e = (*it)[i];
        if (!e.contains("id") || !e["id"].is_number_integer() || e["id"].get<std::int64_t>() < 0)
          throw FormatError(where + ": expected a non-negative integer \"id\"");
        add(e, where, e["id"].get<std::int64_t>());
      }
    }
  } else if (tok_config.contains("added_tokens_decoder")) {
    const auto& d = tok_config["added_tokens_decoder"];
    if (!d.is_object()) throw FormatError(config + ": \"added_tokens_decoder\" must be an object");
    for (const auto& [key, e] : d.items()) {
      const auto where = config + ": /added_tokens_decoder/" + key;
      std::int64_t id = -1;
      try {
        std::size_t used = 0;
        id = std::stoll(key, &used);
        if (used != key.size() || id < 0) id = -1;
      } catch (const std::exception&) {
      }
      if (id < 0) throw FormatError(where + ": the key must be a non-negative token id");
      add(e, where, id);
    }
  } else {
    for (int id = 0; id < impl->sp.GetPieceSize(); ++id)
      if (impl->sp.IsControl(id) || impl->sp.IsUnknown(id))
        added.push_back({impl->sp.IdToPiece(id), id, false, false});
  }
  std::stable_sort(added.begin(), added.end(), [](const AddedToken& a, const AddedToken& b) {
    return a.content.size() > b.content.size();
  });

  // eos / pad: the names tokenizer_config.json gives (T5 defaults), as added tokens or pieces.
  const auto resolve = [&](const char* key, const std::string& fallback) -> std::int64_t {
    const std::string text = tok_config.contains(key) && !tok_config[key].is_null()
                                 ? token_text(tok_config[key], config + ": /" + key)
                                 : fallback;
    for (const auto& a : added)
      if (a.content == text) return a.id;
    const int id = impl->sp.PieceToId(text);
    if (impl->sp.IdToPiece(id) != text)
      throw FormatError("umt5 tokenizer '" + dir + "': the " + key + " '" + text +
                        "' is neither an added token nor a piece of spiece.model");
    return id;
  };
  eos_id_ = resolve("eos_token", "</s>");
  pad_id_ = resolve("pad_token", "<pad>");
  max_id_ = impl->sp.GetPieceSize() - 1;
  for (const auto& a : added) max_id_ = std::max(max_id_, a.id);
  impl->added = std::move(added);
  impl_ = std::move(impl);
  wanhost::logger()->info("umt5: tokenizer {} ({} pieces, {} added tokens, eos {}, pad {})", dir,
                          impl_->sp.GetPieceSize(), impl_->added.size(), eos_id_, pad_id_);
}

std::vector<std::int64_t> Tokenizer::encode(const std::string& text,
                                            std::int64_t max_length) const {
  if (!impl_) throw std::logic_error("umt5: tokenizer used before load()");
  if (max_length < 1) throw std::invalid_argument("umt5: max_length must be at least 1");
  std::vector<std::int64_t> ids;
  const auto encode_segment = [&](std::string_view segment) {
    if (segment.empty()) return;
    std::vector<int> piece_ids;
    const auto status = impl_->sp.Encode(white_space_to_space(segment), &piece_ids);
    if (!status.ok()) throw std::runtime_error("umt5: SentencePiece failed: " + status.ToString());
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
  };
  const auto ascii_space = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  };
  std::size_t start = 0, i = 0;
  while (i < text.size()) {
    const AddedToken* hit = nullptr;
    for (const auto& a : impl_->added)
      if (text.compare(i, a.content.size(), a.content) == 0) {
        hit = &a;
        break;
      }
    if (!hit) {
      ++i;
      continue;
    }
    std::size_t seg_end = i;
    if (hit->lstrip)
      while (seg_end > start && ascii_space(text[seg_end - 1])) --seg_end;
    encode_segment(std::string_view(text).substr(start, seg_end - start));
    ids.push_back(hit->id);
    i += hit->content.size();
    if (hit->rstrip)
      while (i < text.size() && ascii_space(text[i])) ++i;
    start = i;
  }
  encode_segment(std::string_view(text).substr(start));
  if (static_cast<std::int64_t>(ids.size()) > max_length - 1)
    ids.resize(static_cast<std::size_t>(max_length - 1));
  ids.push_back(eos_id_);
  return ids;
}

}  // namespace wanhost::plugins::umt5
