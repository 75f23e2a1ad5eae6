#!/usr/bin/python3
"""Writes an HF-layout CLIPSeg checkpoint folder with random, well-scaled weights (for tests and benches).

    /usr/bin/python3 tools/make_clipseg_checkpoint.py --out DIR [--config full|tiny] [--seed N]
        [--format safetensors|bin] [--vocab-dir DIR]

--config full  the real CIDAS/clipseg-rd64-refined sizes (ViT-B/16 vision tower, CLIP text tower,
               rd64, refined head; 150,747,746 parameters, 603 MB); tiny: the clipseg_tiny fixture's config.
--format       safetensors (default): model.safetensors with HF's keys, float32, metadata {"format": "pt"},
               as `save_pretrained` writes it; bin: pytorch_model.bin only (a torch.save'd state dict, as
               older Hub folders ship), to be turned into model.safetensors by tools/convert_weights.py.
--vocab-dir    copies vocab.json, merges.txt and the tokenizer files found there (tokenizer_config.json,
               special_tokens_map.json, tokenizer.json) into DIR; without it, DIR has no tokenizer files.
Also written: config.json (tools/clipseg_ref.py's CLIPSegConfig.to_json: every HF field, nested
text_config / vision_config, text eos_token_id 2 as in the Hub file) and preprocessor_config.json
(CIDAS/clipseg-rd64-refined's: ViTImageProcessor, 352 x 352, PIL bilinear (resample 2), rescale 1/255,
ImageNet mean / std). Weights: clipseg_ref.randomize_nontrivial(seed), so activations stay O(1).
The same seed gives the same files. DIR is created; existing files of these names are replaced.
"""
import argparse
import json
import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import st  # noqa: E402
from clipseg_ref import RD64_REFINED, CLIPSegConfig, CLIPSegForImageSegmentation, randomize_nontrivial  # noqa: E402
from fixtures.clipseg_tiny import CONFIG as TINY  # noqa: E402

CONFIGS = {"full": RD64_REFINED, "tiny": TINY}

PREPROCESSOR = {  # CIDAS/clipseg-rd64-refined's preprocessor_config.json (since the 2023 mean/std fix)
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "ViTImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "processor_class": "CLIPSegProcessor",
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 352, "width": 352},
}
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")


def build(config_name: str, seed: int) -> CLIPSegForImageSegmentation:
    if config_name not in CONFIGS:
        raise SystemExit(f"make_clipseg_checkpoint: --config {config_name!r}: expected one of {sorted(CONFIGS)}")
    model = CLIPSegForImageSegmentation(CLIPSegConfig.from_dict(CONFIGS[config_name])).eval()
    randomize_nontrivial(model, seed)
    return model


def write(model: CLIPSegForImageSegmentation, out: str, fmt: str = "safetensors", vocab_dir=None) -> list:
    """Writes the folder; returns the file names written."""
    if vocab_dir is not None:
        missing = [n for n in ("vocab.json", "merges.txt") if not os.path.isfile(os.path.join(vocab_dir, n))]
        if missing:
            raise SystemExit(f"make_clipseg_checkpoint: --vocab-dir {vocab_dir}: missing {', '.join(missing)}")
    os.makedirs(out, exist_ok=True)
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    written = []
    if fmt == "safetensors":
        st.save(os.path.join(out, "model.safetensors"), sd, {"format": "pt"})
        written.append("model.safetensors")
    elif fmt == "bin":
        torch.save(sd, os.path.join(out, "pytorch_model.bin"))
        written.append("pytorch_model.bin")
    else:
        raise SystemExit(f"make_clipseg_checkpoint: --format {fmt!r}: expected safetensors or bin")
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write(model.config.to_json())
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        f.write(json.dumps(PREPROCESSOR, indent=2, sort_keys=True) + "\n")
    written += ["config.json", "preprocessor_config.json"]
    if vocab_dir is not None:
        for name in TOKENIZER_FILES:
            src = os.path.join(vocab_dir, name)
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(out, name))
                written.append(name)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write an HF-layout CLIPSeg folder with random, well-scaled weights.")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--config", default="full", choices=sorted(CONFIGS))
    ap.add_argument("--seed", type=int, default=0, help="weight seed (any integer >= 0)")
    ap.add_argument("--format", default="safetensors", choices=["safetensors", "bin"])
    ap.add_argument("--vocab-dir", help="folder with vocab.json + merges.txt (+ tokenizer files) to copy in")
    args = ap.parse_args(argv)
    if args.seed < 0:
        ap.error(f"--seed must be >= 0, got {args.seed}")
    torch.set_num_threads(1)
    model = build(args.config, args.seed)
    files = write(model, args.out, args.format, args.vocab_dir)
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.out}: CLIPSeg {args.config}, {n:,} parameters, seed {args.seed}: {', '.join(files)}")


if __name__ == "__main__":
    main()
