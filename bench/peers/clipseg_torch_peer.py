"""PyTorch peer of bench/peers for CLIPSeg: prepares the shared checkpoint, inputs and ONNX export, and
times CIDAS/clipseg-rd64-refined-sized inference with tools/clipseg_ref.py (HF's module tree and names).

  clipseg_torch_peer.py prepare WORK [--seed 0]
      -> WORK/clipseg/model/{config.json, preprocessor_config.json, model.safetensors} (full rd64-refined
         sizes, random well-scaled weights), WORK/clipseg/model.onnx, WORK/clipseg/input.safetensors
  clipseg_torch_peer.py infer WORK --prompts P --way hf|batched --threads 2 --warmup W --repeats R
                        --json OUT [--save-logits F]

input.safetensors: pixel_values F32 (1, 3, 352, 352); input_ids I64 (8, 77) and attention_mask I64 (8, 77):
8 prompts of 4 to 9 tokens (<|startoftext|> 49406 ... <|endoftext|> 49407), padded to 77 with 49407 as
HF's processor does with padding="max_length" (HF's zero-shot blog). The first P prompts are used.
Ways (one timed run = all P prompts):
  hf       HF's usage: P calls of the whole model on one (image, prompt) pair each, the vision tower
           rerun for every prompt (clipseg_ref.hf_way);
  batched  one call on the image repeated P times with the P prompts (HF's processor output fed at once;
           the vision tower still runs P times, batched). For information.
Run with Debian's interpreter (/usr/bin/python3, torch 1.13); bench/peers/clipseg_run.py sets the
environment (OpenBLAS OpenMP build, LD_PRELOAD tcmalloc, ATEN_CPU_CAPABILITY) and reads the JSON.
"""
import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
import clipseg_ref as ref  # noqa: E402
import make_clipseg_checkpoint as mk  # noqa: E402
import st  # noqa: E402

SIZE, MAX_PROMPTS, CONTEXT = 352, 8, 77
BOS, EOS = 49406, 49407


def folder(work):
    return os.path.join(work, "clipseg")


def load_model(work):
    model_dir = os.path.join(folder(work), "model")
    with open(os.path.join(model_dir, "config.json")) as f:
        model = ref.CLIPSegForImageSegmentation(ref.CLIPSegConfig.from_json(f.read()))
    tensors, _ = st.load(os.path.join(model_dir, "model.safetensors"))
    ref.load_hf_state_dict(model, {k: torch.from_numpy(v) for k, v in tensors.items()})
    return model.eval()


def load_inputs(work, prompts):
    t, _ = st.load(os.path.join(folder(work), "input.safetensors"))
    return (torch.from_numpy(t["pixel_values"]), torch.from_numpy(t["input_ids"][:prompts]),
            torch.from_numpy(t["attention_mask"][:prompts]))


class LogitsOnly(torch.nn.Module):
    """The model with tensor inputs and one tensor output, for torch.onnx.export."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, attention_mask):
        return self.model.logits(pixel_values, input_ids, attention_mask)


def prepare(work, seed):
    out = folder(work)
    os.makedirs(out, exist_ok=True)
    mk.write(mk.build("full", seed), os.path.join(out, "model"))
    g = torch.Generator().manual_seed(seed + 1)
    pixels = torch.randn(1, 3, SIZE, SIZE, generator=g)
    ids = torch.full((MAX_PROMPTS, CONTEXT), EOS, dtype=torch.int64)
    mask = torch.zeros((MAX_PROMPTS, CONTEXT), dtype=torch.int64)
    for i in range(MAX_PROMPTS):
        words = 2 + i % 6  # 2..7 word tokens between the specials
        ids[i, 0] = BOS
        ids[i, 1:1 + words] = torch.randint(256, 49000, (words,), generator=g)
        mask[i, :words + 2] = 1
    st.save(os.path.join(out, "input.safetensors"), {"pixel_values": pixels, "input_ids": ids,
                                                     "attention_mask": mask})
    # The export reloads the saved weights, so ONNX sees exactly what the other engines load.
    model = load_model(work)
    with torch.no_grad():
        torch.onnx.export(LogitsOnly(model), (pixels, ids[:1], mask[:1]), os.path.join(out, "model.onnx"),
                          opset_version=17, input_names=["pixel_values", "input_ids", "attention_mask"],
                          output_names=["logits"], do_constant_folding=True,
                          dynamic_axes={"pixel_values": {0: "batch"}, "input_ids": {0: "batch"},
                                        "attention_mask": {0: "batch"}, "logits": {0: "batch"}})
    print(f"prepared {out}: CLIPSeg rd64-refined sizes (seed {seed}), inputs, ONNX opset 17 (dynamic batch)")


def cpu_capability():
    for line in torch.__config__.show().splitlines():
        if "CPU capability usage" in line:
            return line.split(":", 1)[1].strip()
    return "unknown"


def timed(step, warmup, repeats):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def run(work, prompts, way, threads, warmup, repeats, json_out, save_logits):
    torch.set_num_threads(threads)
    model = load_model(work)
    pixels, ids, mask = load_inputs(work, prompts)
    fn = {"hf": ref.hf_way, "batched": ref.batched}[way]
    with torch.inference_mode():
        logits = fn(model, pixels, ids, mask)
        if save_logits:
            st.save(save_logits, {"logits": logits})
        times = timed(lambda: fn(model, pixels, ids, mask), warmup, repeats)
    config = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_capability": cpu_capability(),
              "mkldnn": torch.backends.mkldnn.is_available(), "LD_PRELOAD": os.environ.get("LD_PRELOAD", ""),
              "LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH", ""),
              "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY", ""),
              "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", ""), "prompts": prompts, "way": way}
    with open(json_out, "w") as f:
        json.dump({"times_ms": times, "config": config}, f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["prepare", "infer"])
    p.add_argument("work")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompts", type=int, default=1, choices=range(1, MAX_PROMPTS + 1), metavar="1..8")
    p.add_argument("--way", default="hf", choices=["hf", "batched"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    p.add_argument("--save-logits")
    a = p.parse_args()
    if a.mode == "prepare":
        prepare(a.work, a.seed)
    else:
        run(a.work, a.prompts, a.way, a.threads, a.warmup, a.repeats, a.json, a.save_logits)


if __name__ == "__main__":
    main()
