"""Loads a segml-saved checkpoint folder into the PyTorch reference model and runs it.

    /usr/bin/python3 tools/check_checkpoint.py DIR [--logits LOGITS.safetensors --pixel-values PV.safetensors]

Checks, and exits non-zero on failure:
  * DIR/config.json reads as a SegformerConfig (tools/segformer_ref.py, HF's field names);
  * DIR/model.safetensors has metadata {"format": "pt"} and loads into
    segformer_ref.SegformerForSemanticSegmentation with load_state_dict(strict=True): the same keys,
    shapes and dtypes as HF's model (num_batches_tracked int64, shape []);
  * an eval forward on a random batch gives finite logits of shape (B, num_labels, ceil(H/4), ceil(W/4));
  * with --logits and --pixel-values (float32 safetensors tensors `logits` and `pixel_values`, e.g.
    from examples/segment --logits), the reference's logits on those pixels match within --atol.
This is the Python half of tests/test_checkpoint.cpp, which cannot run torch in CI.
"""
import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
from segformer_ref import SegformerConfig, SegformerForSemanticSegmentation  # noqa: E402


def load_reference(folder):
    with open(os.path.join(folder, "config.json")) as f:
        config = SegformerConfig.from_dict(json.load(f))
    tensors, meta = st.load(os.path.join(folder, "model.safetensors"))
    if meta.get("format") != "pt":
        raise SystemExit(f"model.safetensors metadata is {meta}, expected format=pt")
    model = SegformerForSemanticSegmentation(config)
    state = {k: torch.from_numpy(v) for k, v in tensors.items()}
    for k, v in model.state_dict().items():
        if k in state and state[k].dtype != v.dtype:
            raise SystemExit(f"{k}: dtype {state[k].dtype} in the checkpoint, the reference holds {v.dtype}")
    model.load_state_dict(state, strict=True)  # raises listing missing / unexpected keys and shape mismatches
    return config, model, len(state)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--logits", help="safetensors file with `logits` computed by segml")
    ap.add_argument("--pixel-values", help="safetensors file with the `pixel_values` segml ran on")
    ap.add_argument("--atol", type=float, default=1e-4)
    args = ap.parse_args()

    torch.manual_seed(0)
    config, model, count = load_reference(args.folder)
    print(f"strict load OK: {count} tensors, {sum(p.numel() for p in model.parameters())} parameters, "
          f"{config.num_labels} labels")
    model.eval()
    height, width = 67, 93
    with torch.no_grad():
        logits = model(torch.randn(2, config.num_channels, height, width)).logits
    want = (2, config.num_labels, math.ceil(height / 4), math.ceil(width / 4))
    if tuple(logits.shape) != want or not torch.isfinite(logits).all():
        raise SystemExit(f"forward gave {tuple(logits.shape)} (finite: {bool(torch.isfinite(logits).all())}), expected {want}")
    print(f"forward OK: logits {tuple(logits.shape)}")

    if args.logits or args.pixel_values:
        if not (args.logits and args.pixel_values):
            raise SystemExit("--logits and --pixel-values go together")
        pixels = torch.from_numpy(st.load(args.pixel_values)[0]["pixel_values"])
        theirs = torch.from_numpy(st.load(args.logits)[0]["logits"])
        with torch.no_grad():
            ours = model(pixels).logits
        diff = (ours - theirs).abs().max().item()
        agree = (ours.argmax(1) == theirs.argmax(1)).double().mean().item()
        print(f"segml logits vs reference: max abs diff {diff:.3g} (atol {args.atol}), argmax agreement {agree:.6f}")
        if not diff <= args.atol:
            raise SystemExit("logits differ")
    print("OK")


if __name__ == "__main__":
    main()
