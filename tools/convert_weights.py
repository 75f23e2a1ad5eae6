#!/usr/bin/python3
"""Converts SegFormer and CLIPSeg checkpoints to an HF checkpoint folder (config.json + model.safetensors) for segml.

    /usr/bin/python3 tools/convert_weights.py INPUT --output DIR
        [--variant b0..b5] [--config config.json] [--num-labels N] [--id2label FILE] [--layout auto|hf|nvlabs|mmseg|clipseg]

INPUT is a PyTorch pickle (torch.load, on the CPU) in one of these layouts, detected from its keys:
  hf      HF transformers' pytorch_model.bin (`segformer.encoder.…`, `decode_head.…`, or the
          image classifier's top-level `classifier.…`); the names are kept. A config.json next to
          INPUT is used as the base config.
  nvlabs  the original NVlabs/SegFormer checkpoints: `mit_b0.pth` (ImageNet backbone: `patch_embed1.…`,
          `block1.0.attn.q/kv/sr/norm/proj`, `block1.0.norm1/2`, `block1.0.mlp.fc1/fc2/dwconv.dwconv`,
          `norm1..4`, `head.…`) and `segformer.b0.512x512.ade.160k.pth` (`state_dict` with `backbone.…` and
          `decode_head.linear_c{1..4}.proj`, `linear_fuse.conv`, `linear_fuse.bn`, `linear_pred`).
          The fused `kv` Linear is split: key = rows [0, C), value = rows [C, 2C).
  mmseg   mmsegmentation 1.x (`backbone.layers.{i}.0.projection` / `.0.norm`, `.1.{j}.norm1/norm2`,
          `.1.{j}.attn.attn.in_proj_*` / `out_proj` / `attn.sr` / `attn.norm`, `.1.{j}.ffn.layers.{0,1,4}`,
          `.2` the stage norm). nn.MultiheadAttention's in_proj is split into query / key / value
          (rows [0,C), [C,2C), [2C,3C)); the 1x1 convs of the FFN become Linear weights.
          mmseg's SegformerHead is a different network (a Conv+BN+ReLU per stage, concatenated in the
          order c1..c4), so it cannot be expressed with HF's head: only the backbone is converted, and
          the result is an encoder-only checkpoint whose decode head segml initialises afresh.
  clipseg HF transformers' CLIPSegForImageSegmentation (`clip.text_model.…`, `clip.vision_model.…`,
          `decoder.film_mul.…`), e.g. CIDAS/clipseg-rd64-refined's pytorch_model.bin. The names are kept;
          the config comes from --config or the config.json next to INPUT (required: it is copied as is);
          the `*.embeddings.position_ids` buffers of older files are dropped; the state dict must match
          tools/clipseg_ref.py's model exactly (missing, unexpected and misshaped keys are all errors).
          preprocessor_config.json and the tokenizer files next to INPUT are copied to the output.
Both NVlabs and HF concatenate the decode-head features in the order [c4, c3, c2, c1], so
`linear_fuse` is copied as is (checked by tools/test_convert_weights.py against the reference logits).

The architecture is inferred from the weights: hidden sizes, patch sizes and input channels from the
patch embeddings, depths from the blocks, sr ratios from the sr convs, MLP ratios from the FFN, the
decoder size and num_labels from the head. Attention heads and strides are not in the weights: the
MiT values ([1, 2, 5, 8], [4, 2, 2, 2]) are assumed unless --config gives them. Encoder-only inputs
(with an ImageNet head) become an HF SegformerForImageClassification checkpoint (`classifier.*` at the
top level), like nvidia/mit-b0; segml loads those with fresh decode-head weights.
Output: model.safetensors (F32, num_batches_tracked I64, metadata format=pt) and config.json. The
converted state dict is checked against tools/segformer_ref.py's model key by key (names and shapes).
"""
import argparse
import json
import os
import re
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
from segformer_ref import VARIANTS, SegformerConfig, SegformerForSemanticSegmentation  # noqa: E402


class ConversionError(Exception):
    pass


# ---- reading --------------------------------------------------------------------------------------

def load_state_dict(path):
    obj = torch.load(path, map_location="cpu")
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ConversionError(f"{path}: expected a state dict of tensors (or a dict with 'state_dict')")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def detect_layout(sd):
    keys = list(sd)
    if any(k.startswith(("clip.text_model.", "clip.vision_model.", "decoder.film_mul.")) for k in keys):
        return "clipseg"
    if any(k.startswith(("segformer.", "encoder.patch_embeddings", "decode_head.linear_c.")) for k in keys):
        return "hf"
    if any(re.match(r"(backbone\.)?patch_embed\d+\.", k) for k in keys):
        return "nvlabs"
    if any(re.match(r"(backbone\.)?layers\.\d+\.0\.projection\.", k) for k in keys):
        return "mmseg"
    raise ConversionError("unrecognised checkpoint layout; first keys: " + ", ".join(keys[:5]))


# ---- renaming -------------------------------------------------------------------------------------

_NVLABS_BLOCK = [  # (original suffix inside block{i}.{j}., HF suffix inside block.{i-1}.{j}.)
    ("norm1.", "layer_norm_1."), ("norm2.", "layer_norm_2."),
    ("attn.q.", "attention.self.query."), ("attn.sr.", "attention.self.sr."),
    ("attn.norm.", "attention.self.layer_norm."), ("attn.proj.", "attention.output.dense."),
    ("mlp.fc1.", "mlp.dense1."), ("mlp.fc2.", "mlp.dense2."), ("mlp.dwconv.dwconv.", "mlp.dwconv.dwconv."),
]
_NVLABS_HEAD = [("linear_fuse.conv.", "linear_fuse."), ("linear_fuse.bn.", "batch_norm."), ("linear_pred.", "classifier.")]


def from_nvlabs(sd):
    """Returns (HF state dict, dropped keys)."""
    out, dropped = {}, []
    enc = "segformer.encoder."
    for k, v in sd.items():
        name = k[len("backbone."):] if k.startswith("backbone.") else k
        m = re.match(r"patch_embed(\d+)\.(proj|norm)\.(.+)$", name)
        if m:
            part = "proj" if m[2] == "proj" else "layer_norm"
            out[f"{enc}patch_embeddings.{int(m[1]) - 1}.{part}.{m[3]}"] = v
            continue
        m = re.match(r"block(\d+)\.(\d+)\.(.+)$", name)
        if m:
            prefix, rest = f"{enc}block.{int(m[1]) - 1}.{m[2]}.", m[3]
            if rest.startswith("attn.kv."):
                c = v.shape[0] // 2
                out[prefix + "attention.self.key." + rest[len("attn.kv."):]] = v[:c]
                out[prefix + "attention.self.value." + rest[len("attn.kv."):]] = v[c:]
                continue
            for old, new in _NVLABS_BLOCK:
                if rest.startswith(old):
                    out[prefix + new + rest[len(old):]] = v
                    break
            else:
                raise ConversionError(f"unknown NVlabs block key {k}")
            continue
        m = re.match(r"norm(\d+)\.(.+)$", name)
        if m:
            out[f"{enc}layer_norm.{int(m[1]) - 1}.{m[2]}"] = v
            continue
        if name.startswith("head."):  # the ImageNet classifier of mit_b*.pth
            out["classifier." + name[len("head."):]] = v
            continue
        m = re.match(r"decode_head\.linear_c(\d+)\.proj\.(.+)$", name)
        if m:
            out[f"decode_head.linear_c.{int(m[1]) - 1}.proj.{m[2]}"] = v
            continue
        if name.startswith("decode_head."):
            rest = name[len("decode_head."):]
            for old, new in _NVLABS_HEAD:
                if rest.startswith(old):
                    out["decode_head." + new + rest[len(old):]] = v
                    break
            else:
                dropped.append(k)  # conv_seg (unused by SegFormer) and anything else
            continue
        dropped.append(k)
    return out, dropped


def from_mmseg(sd):
    out, dropped = {}, []
    enc = "segformer.encoder."
    for k, v in sd.items():
        name = k[len("backbone."):] if k.startswith("backbone.") else k
        m = re.match(r"layers\.(\d+)\.0\.(projection|norm)\.(.+)$", name)
        if m:
            part = "proj" if m[2] == "projection" else "layer_norm"
            out[f"{enc}patch_embeddings.{m[1]}.{part}.{m[3]}"] = v
            continue
        m = re.match(r"layers\.(\d+)\.2\.(.+)$", name)
        if m:
            out[f"{enc}layer_norm.{m[1]}.{m[2]}"] = v
            continue
        m = re.match(r"layers\.(\d+)\.1\.(\d+)\.(.+)$", name)
        if m:
            prefix, rest = f"{enc}block.{m[1]}.{m[2]}.", m[3]
            if rest.startswith("attn.attn.in_proj_"):
                kind = rest[len("attn.attn.in_proj_"):]  # weight | bias
                c = v.shape[0] // 3
                for i, part in enumerate(("query", "key", "value")):
                    out[f"{prefix}attention.self.{part}.{kind}"] = v[i * c:(i + 1) * c]
                continue
            simple = {"norm1.": "layer_norm_1.", "norm2.": "layer_norm_2.", "attn.attn.out_proj.": "attention.output.dense.",
                      "attn.sr.": "attention.self.sr.", "attn.norm.": "attention.self.layer_norm.",
                      "ffn.layers.1.": "mlp.dwconv.dwconv."}
            for old, new in simple.items():
                if rest.startswith(old):
                    out[prefix + new + rest[len(old):]] = v
                    break
            else:
                m2 = re.match(r"ffn\.layers\.(0|4)\.(weight|bias)$", rest)
                if not m2:
                    raise ConversionError(f"unknown mmseg block key {k}")
                dense = "dense1" if m2[1] == "0" else "dense2"
                out[f"{prefix}mlp.{dense}.{m2[2]}"] = v.flatten(1) if m2[2] == "weight" else v  # 1x1 conv -> Linear
            continue
        dropped.append(k)  # decode_head.* (not HF-compatible, see the file comment), auxiliary heads
    return out, dropped


def from_hf(sd):
    return dict(sd), []


# ---- config ---------------------------------------------------------------------------------------

def infer_config(sd, args, base=None):
    """SegformerConfig for the converted state dict; `base` (a config dict) and the flags take precedence."""
    enc = "segformer.encoder."
    stages = 0
    while f"{enc}patch_embeddings.{stages}.proj.weight" in sd:
        stages += 1
    if stages == 0:
        raise ConversionError("no patch embeddings found (segformer.encoder.patch_embeddings.0.proj.weight)")
    w = [sd[f"{enc}patch_embeddings.{i}.proj.weight"] for i in range(stages)]
    depths = [len({int(m[1]) for k in sd for m in [re.match(rf"{enc}block\.{i}\.(\d+)\.", k)] if m}) for i in range(stages)]
    sr = [sd[f"{enc}block.{i}.0.attention.self.sr.weight"].shape[-1] if f"{enc}block.{i}.0.attention.self.sr.weight" in sd else 1
          for i in range(stages)]
    mlp = [sd[f"{enc}block.{i}.0.mlp.dense1.weight"].shape[0] // w[i].shape[0] for i in range(stages)]
    inferred = dict(num_encoder_blocks=stages, num_channels=w[0].shape[1], hidden_sizes=[t.shape[0] for t in w],
                    patch_sizes=[t.shape[-1] for t in w], depths=depths, sr_ratios=sr, mlp_ratios=mlp)
    cfg = dict(base or {})
    variant = args.variant
    if variant is None and base is None:
        for name, v in VARIANTS.items():
            if v["hidden_sizes"] == inferred["hidden_sizes"] and v["depths"] == inferred["depths"]:
                variant = name
    if variant:
        cfg = {**VARIANTS[variant], **cfg}
    cfg.update(inferred)
    if "decode_head.linear_c.0.proj.weight" in sd:
        cfg["decoder_hidden_size"] = sd["decode_head.linear_c.0.proj.weight"].shape[0]
    heads = cfg.get("num_attention_heads", [1, 2, 5, 8][:stages])
    for c, h in zip(cfg["hidden_sizes"], heads):
        if c % h:
            raise ConversionError(f"hidden size {c} is not divisible by {h} heads: pass --config with num_attention_heads")
    classifier = sd.get("decode_head.classifier.weight", sd.get("classifier.weight"))
    num_labels = args.num_labels or (classifier.shape[0] if classifier is not None else cfg.get("num_labels", 2))
    if args.id2label:
        with open(args.id2label) as f:
            cfg["id2label"] = {int(k): v for k, v in json.load(f).items()}
    elif "id2label" in cfg and len(cfg["id2label"]) == num_labels:
        cfg["id2label"] = {int(k): v for k, v in cfg["id2label"].items()}
    else:
        cfg["id2label"] = {i: f"LABEL_{i}" for i in range(num_labels)}
    if classifier is not None and len(cfg["id2label"]) != classifier.shape[0]:
        raise ConversionError(f"the checkpoint's classifier has {classifier.shape[0]} classes but "
                              f"{len(cfg['id2label'])} labels were given")
    return SegformerConfig.from_dict(cfg)


# ---- checking and writing -------------------------------------------------------------------------

def check_against_reference(sd, config):
    """Every converted tensor must be a reference-model tensor of the same shape; returns missing keys."""
    want = SegformerForSemanticSegmentation(config).state_dict()
    extra = [k for k in sd if k not in want and not k.startswith("classifier.")]
    bad = [f"{k}: {tuple(sd[k].shape)} vs {tuple(want[k].shape)}" for k in sd if k in want and sd[k].shape != want[k].shape]
    if extra or bad:
        raise ConversionError("converted state dict does not fit the HF model:\n  " + "\n  ".join(extra + bad))
    return [k for k in want if k not in sd]


CLIPSEG_SIDE_FILES = ("preprocessor_config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                      "special_tokens_map.json", "tokenizer.json")


def convert_clipseg(sd, input_path, output_dir, args):
    """HF CLIPSeg .bin -> model.safetensors + the given config.json (copied) + the side files next to INPUT."""
    from clipseg_ref import CLIPSegConfig, CLIPSegForImageSegmentation
    src_dir = os.path.dirname(os.path.abspath(input_path))
    config_path = args.config or os.path.join(src_dir, "config.json")
    if not os.path.exists(config_path):
        raise ConversionError(f"{input_path} is a CLIPSeg checkpoint: it needs its config.json (none at "
                              f"{config_path}; pass --config)")
    with open(config_path) as f:
        text = f.read()
    try:
        config = CLIPSegConfig.from_json(text)
    except (ValueError, TypeError) as e:
        raise ConversionError(f"{config_path}: not a usable CLIPSeg config: {e}")
    dropped = sorted(k for k in sd if k.endswith("embeddings.position_ids"))
    out = {k: v for k, v in sd.items() if k not in dropped}
    want = CLIPSegForImageSegmentation(config).state_dict()
    problems = [f"missing {k} {tuple(want[k].shape)}" for k in want if k not in out]
    problems += [f"unexpected {k} {tuple(out[k].shape)}" for k in out if k not in want]
    problems += [f"{k}: {tuple(out[k].shape)} in the checkpoint, {tuple(want[k].shape)} from {config_path}"
                 for k in out if k in want and out[k].shape != want[k].shape]
    if problems:
        raise ConversionError(f"{input_path} does not fit the CLIPSeg model of {config_path}:\n  " + "\n  ".join(problems))
    out = {k: v.to(torch.float32).contiguous() for k, v in out.items()}
    os.makedirs(output_dir, exist_ok=True)
    st.save(os.path.join(output_dir, "model.safetensors"), out, {"format": "pt"})
    with open(os.path.join(output_dir, "config.json"), "w") as f:
        f.write(text)
    copied = []
    for name in CLIPSEG_SIDE_FILES:
        src, dst = os.path.join(src_dir, name), os.path.join(output_dir, name)
        if os.path.exists(src) and os.path.abspath(src) != os.path.abspath(dst):
            shutil.copyfile(src, dst)
            copied.append(name)
    return dict(layout="clipseg", tensors=len(out), dropped=dropped, missing=[], config=config,
                encoder_only=False, copied=copied)


def convert(input_path, output_dir, args):
    sd = load_state_dict(input_path)
    layout = detect_layout(sd) if args.layout == "auto" else args.layout
    if layout == "clipseg":
        return convert_clipseg(sd, input_path, output_dir, args)
    out, dropped = {"hf": from_hf, "nvlabs": from_nvlabs, "mmseg": from_mmseg}[layout](sd)
    if any(k.startswith("encoder.") for k in out):  # a bare SegformerModel
        out = {("segformer." + k if k.startswith("encoder.") else k): v for k, v in out.items()}
    base = None
    if args.config:
        with open(args.config) as f:
            base = json.load(f)
    elif layout == "hf" and os.path.exists(os.path.join(os.path.dirname(os.path.abspath(input_path)), "config.json")):
        with open(os.path.join(os.path.dirname(os.path.abspath(input_path)), "config.json")) as f:
            base = json.load(f)
    config = infer_config(out, args, base)
    missing = check_against_reference(out, config)
    out = {k: (v.to(torch.int64) if k.endswith("num_batches_tracked") else v.to(torch.float32)).contiguous()
           for k, v in out.items()}
    encoder_only = not any(k.startswith("decode_head.") for k in out)
    doc = config.to_dict()
    if base is not None:  # keep the given config's other fields (transformers_version, architectures, ...)
        doc = {**base, **doc, "architectures": base.get("architectures", doc["architectures"])}
        doc.pop("num_labels", None)
    elif encoder_only:
        doc["architectures"] = ["SegformerForImageClassification" if "classifier.weight" in out else "SegformerModel"]
    os.makedirs(output_dir, exist_ok=True)
    st.save(os.path.join(output_dir, "model.safetensors"), out, {"format": "pt"})
    with open(os.path.join(output_dir, "config.json"), "w") as f:
        f.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return dict(layout=layout, tensors=len(out), dropped=dropped, missing=missing, config=config, encoder_only=encoder_only)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Convert SegFormer (HF .bin, NVlabs, mmseg 1.x) and HF CLIPSeg "
                                             "checkpoints for segml.")
    ap.add_argument("input")
    ap.add_argument("--output", required=True, help="output folder (config.json, model.safetensors)")
    ap.add_argument("--layout", default="auto", choices=["auto", "hf", "nvlabs", "mmseg", "clipseg"])
    ap.add_argument("--variant", choices=sorted(VARIANTS), help="MiT variant whose heads / decoder size to assume")
    ap.add_argument("--config", help="config.json to start from (for architectures that are not b0..b5)")
    ap.add_argument("--num-labels", type=int, help="number of classes (default: from the head)")
    ap.add_argument("--id2label", help='JSON file {"0": "name", ...}')
    args = ap.parse_args(argv)
    try:
        r = convert(args.input, args.output, args)
    except ConversionError as e:
        raise SystemExit(f"convert_weights: {e}")
    c = r["config"]
    if r["layout"] == "clipseg":
        print(f"{args.input}: clipseg layout -> {args.output}: {r['tensors']} tensors, vision "
              f"{c.vision_config.num_hidden_layers}x{c.vision_config.hidden_size}, text "
              f"{c.text_config.num_hidden_layers}x{c.text_config.hidden_size}, reduce_dim {c.reduce_dim}"
              + (f"; copied {', '.join(r['copied'])}" if r["copied"] else ""))
        if r["dropped"]:
            print(f"  dropped {len(r['dropped'])} keys: " + ", ".join(r["dropped"]))
        return
    print(f"{args.input}: {r['layout']} layout -> {args.output}: {r['tensors']} tensors, hidden sizes {c.hidden_sizes}, "
          f"depths {c.depths}, {c.num_labels} labels" + (" (encoder only)" if r["encoder_only"] else ""))
    if r["dropped"]:
        print(f"  dropped {len(r['dropped'])} keys: " + ", ".join(r["dropped"][:8]) + (" ..." if len(r["dropped"]) > 8 else ""))
    if r["missing"]:
        print(f"  {len(r['missing'])} model keys not in the checkpoint (initialised afresh on load), e.g. {r['missing'][0]}")


if __name__ == "__main__":
    main()
