"""PyTorch peer of bench/peers: prepares the shared weights, inputs and ONNX export, and times
SegFormer inference and training steps with tools/segformer_ref.py (HF's module tree and names).

  torch_peer.py prepare WORK [--seed 0]                    -> WORK/model/{config.json, model.safetensors},
                                                              WORK/model.onnx, WORK/{infer,train}_input.safetensors
  torch_peer.py infer WORK --threads 2 --warmup W --repeats R --json OUT [--save-logits F]
  torch_peer.py train WORK --threads 2 --warmup W --repeats R --json OUT

Run with Debian's interpreter (/usr/bin/python3, torch 1.13). bench/peers/run.py sets the
environment (OpenBLAS OpenMP build, LD_PRELOAD tcmalloc, ATEN_CPU_CAPABILITY) and reads the JSON.
The weights are random but non-trivial (segformer_ref.randomize_nontrivial: every tensor distinct
and O(1) activations, BatchNorm running statistics included), so the cross-engine logits check
catches a skipped or swapped tensor. The training step is forward + HF's loss + backward +
torch.optim.AdamW + zero_grad(set_to_none=True), in train mode (dropout and drop-path active).
"""
import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
import segformer_ref as ref  # noqa: E402
import st  # noqa: E402

SIZE, LABELS, TRAIN_BATCH = 512, 150, 2


def load_model(work):
    folder = os.path.join(work, "model")
    with open(os.path.join(folder, "config.json")) as f:
        model = ref.SegformerForSemanticSegmentation(ref.SegformerConfig.from_json(f.read()))
    tensors, _ = st.load(os.path.join(folder, "model.safetensors"))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
    return model


class LogitsOnly(torch.nn.Module):
    """The model with one tensor output, for torch.onnx.export."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values).logits


def prepare(work, seed):
    folder = os.path.join(work, "model")
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    config = ref.SegformerConfig.variant("b0", num_labels=LABELS)
    model = ref.SegformerForSemanticSegmentation(config)
    ref.randomize_nontrivial(model, seed)
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(config.to_json())
    st.save(os.path.join(folder, "model.safetensors"), model.state_dict(), {"format": "pt"})

    g = torch.Generator().manual_seed(seed + 1)
    pixels = torch.randn(1, 3, SIZE, SIZE, generator=g)
    st.save(os.path.join(work, "infer_input.safetensors"), {"pixel_values": pixels})
    st.save(os.path.join(work, "train_input.safetensors"),
            {"pixel_values": torch.randn(TRAIN_BATCH, 3, SIZE, SIZE, generator=g),
             "labels": torch.randint(0, LABELS, (TRAIN_BATCH, SIZE, SIZE), generator=g)})

    # The export reloads the saved weights, so ONNX sees exactly what the other engines load.
    model = load_model(work).eval()
    with torch.no_grad():
        torch.onnx.export(LogitsOnly(model), (pixels,), os.path.join(work, "model.onnx"), opset_version=17,
                          input_names=["pixel_values"], output_names=["logits"], do_constant_folding=True)
    print(f"prepared {work}: B0 with {LABELS} labels (seed {seed}), inputs, ONNX opset 17")


def cpu_capability():
    """The SIMD level ATen dispatches to (torch 1.13 reports it only in its build summary)."""
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


def run(mode, work, threads, warmup, repeats, json_out, save_logits):
    torch.set_num_threads(threads)
    model = load_model(work)
    if mode == "infer":
        pixels = torch.from_numpy(st.load(os.path.join(work, "infer_input.safetensors"))[0]["pixel_values"])
        model.eval()
        with torch.inference_mode():
            logits = model(pixels).logits
            if save_logits:
                st.save(save_logits, {"logits": logits})
            times = timed(lambda: model(pixels), warmup, repeats)
    else:
        data = st.load(os.path.join(work, "train_input.safetensors"))[0]
        pixels, labels = torch.from_numpy(data["pixel_values"]), torch.from_numpy(data["labels"])
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5, weight_decay=0.01)

        def step():
            model(pixels, labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times = timed(step, warmup, repeats)
    config = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu_capability": cpu_capability(),
              "mkldnn": torch.backends.mkldnn.is_available(),
              "LD_PRELOAD": os.environ.get("LD_PRELOAD", ""),
              "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY", ""),
              "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", ""),
              "blas": os.path.realpath("/usr/lib/x86_64-linux-gnu/libblas.so.3")}
    with open(json_out, "w") as f:
        json.dump({"times_ms": times, "config": config}, f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["prepare", "infer", "train"])
    p.add_argument("work")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    p.add_argument("--save-logits")
    a = p.parse_args()
    if a.mode == "prepare":
        prepare(a.work, a.seed)
    else:
        run(a.mode, a.work, a.threads, a.warmup, a.repeats, a.json, a.save_logits)


if __name__ == "__main__":
    main()
