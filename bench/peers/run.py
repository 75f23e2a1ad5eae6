#!/usr/bin/python3
"""bench/peers: segml next to PyTorch and ONNX Runtime, same model, same weights, same input, one run.

    /usr/bin/python3 bench/peers/run.py [--segml build-bench/bench/segformer] [--rounds 3]
                                        [--repeats 5] [--train-repeats 3] [--warmup 2] [--threads 2]

One-time setup (root): bench/peers/setup.sh (OpenBLAS OpenMP build as libblas/liblapack,
tcmalloc, `npm install` of onnxruntime-node 1.30.0 here). This script checks that setup and stops
with the fix when something is missing.

What it does:
  1. bench/peers/work/ (git-ignored): a random, non-trivial SegFormer-B0 with 150 labels as an HF
     checkpoint folder, its ONNX export and the inputs (torch_peer.py prepare; made once, reused).
  2. B0 512x512 inference in all three engines, B0 512x512 batch-2 training step (forward, loss,
     backward, AdamW) in PyTorch and segml. Every engine run is a fresh process that loads the model,
     does --warmup untimed runs and --repeats timed runs; its peak RSS is that process's ru_maxrss.
     The engines take turns, --rounds times, in a rotating order, so that a drift of the machine
     hits all of them alike; medians and minima are over all rounds' timed runs.
  3. Checks that the three engines' logits agree (max abs difference of each pair <= --tol) on the
     first round's outputs, and stops with an error otherwise.
  4. Prints the configuration and a Markdown table with the ratios segml / ONNX Runtime and
     segml / PyTorch (below 1 means segml is faster or smaller). --json writes everything.
CLIPSeg (352x352, 1 and 8 prompts) has its own driver beside this one: bench/peers/clipseg_run.py.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import st  # noqa: E402

LIBDIR = "/usr/lib/x86_64-linux-gnu"
TCMALLOC = f"{LIBDIR}/libtcmalloc_minimal.so.4"
PYTHON = "/usr/bin/python3"


def fail(msg):
    sys.exit(f"bench/peers: {msg}")


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def check_setup(segml):
    for lib in ("libblas.so.3", "liblapack.so.3"):
        target = os.path.realpath(f"{LIBDIR}/{lib}")
        if "openblas-openmp" not in target:
            fail(f"{LIBDIR}/{lib} resolves to {target}, not the OpenBLAS OpenMP build: run bench/peers/setup.sh")
    if not os.path.exists(TCMALLOC):
        fail(f"{TCMALLOC} is missing: run bench/peers/setup.sh")
    if not os.path.isdir(os.path.join(HERE, "node_modules", "onnxruntime-node")):
        fail("onnxruntime-node is not installed: run bench/peers/setup.sh (or `npm install` in bench/peers)")
    if not os.access(segml, os.X_OK):
        fail(f"segml benchmark binary {segml} not found: build it with\n"
             "  cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release && "
             "cmake --build build-bench --target bench_segformer")


def run_process(cmd, env, log):
    """Runs cmd to completion; returns its peak RSS in MB (ru_maxrss of exactly this child)."""
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        fail(f"{' '.join(cmd)} failed (exit {proc.returncode}); log {log}:\n{tail}")
    return usage.ru_maxrss / 1024.0


class Engine:
    def __init__(self, name, tasks, command, env):
        self.name, self.tasks, self.command, self.env = name, tasks, command, env


def engines(args, work):
    threads = str(args.threads)
    base = dict(os.environ, OMP_NUM_THREADS=threads)
    if not args.spin:  # idle threads sleep instead of spinning: segml and PyTorch (libgomp), ORT (its pool)
        base["OMP_WAIT_POLICY"] = "PASSIVE"
    torch_env = dict(base, LD_PRELOAD=TCMALLOC, ATEN_CPU_CAPABILITY=args.aten_cpu_capability)
    model = os.path.join(work, "model")

    def segml(task, warmup, repeats, out, logits):
        case = "b0_512" if task == "infer" else "train_b0_512"
        inputs = os.path.join(work, "infer_input.safetensors" if task == "infer" else "train_input.safetensors")
        cmd = [args.segml, "--case", case, "--model", model, "--input", inputs, "--threads", threads,
               "--warmup", str(warmup), "--repeats", str(repeats), "--json", out]
        return cmd + (["--save-logits", logits] if logits else [])

    def torch(task, warmup, repeats, out, logits):
        cmd = [PYTHON, os.path.join(HERE, "torch_peer.py"), task, work, "--threads", threads,
               "--warmup", str(warmup), "--repeats", str(repeats), "--json", out]
        return cmd + (["--save-logits", logits] if logits else [])

    def ort(task, warmup, repeats, out, logits):
        cmd = ["node", os.path.join(HERE, "ort_peer.js"), work, "--threads", threads,
               "--warmup", str(warmup), "--repeats", str(repeats), "--json", out, "--spin", "1" if args.spin else "0"]
        return cmd + (["--save-logits", logits] if logits else [])

    return [Engine("segml", ("infer", "train"), segml, base),
            Engine("ONNX Runtime", ("infer",), ort, base),
            Engine("PyTorch", ("infer", "train"), torch, torch_env)]


def prepare(args, work):
    stamp = os.path.join(work, "prepared.json")
    want = {"seed": args.seed, "variant": "b0", "labels": 150, "size": 512}
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == want:
                return
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    run_process([PYTHON, os.path.join(HERE, "torch_peer.py"), "prepare", work, "--seed", str(args.seed)], env,
                os.path.join(work, "prepare.log"))
    with open(stamp, "w") as f:
        json.dump(want, f)


def agreement(work, names, tol):
    logits = {n: st.load(os.path.join(work, f"logits_{slug(n)}.safetensors"))[0]["logits"] for n in names}
    rows, worst = [], 0.0
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if logits[a].shape != logits[b].shape:
                fail(f"logits shapes differ: {a} {logits[a].shape} vs {b} {logits[b].shape}")
            d = float(np.abs(logits[a].astype(np.float64) - logits[b]).max())
            rows.append((a, b, d))
            worst = max(worst, d)
    scale = float(np.abs(logits[names[0]]).max())
    return rows, worst, scale


def slug(name):
    return name.lower().replace(" ", "_")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--segml", default=os.path.join(ROOT, "build-bench", "bench", "segformer"),
                   help="the bench/segformer binary (default: build-bench/bench/segformer)")
    p.add_argument("--work", default=os.path.join(HERE, "work"), help="weights, ONNX file, inputs, logs")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine")
    p.add_argument("--rounds", type=int, default=3, help="times each engine runs, taking turns")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per engine process")
    p.add_argument("--repeats", type=int, default=5, help="timed inference runs per engine process")
    p.add_argument("--train-repeats", type=int, default=3, help="timed training steps per engine process")
    p.add_argument("--tol", type=float, default=1e-3, help="max abs logits difference allowed between engines")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    p.add_argument("--aten-cpu-capability", default="avx512" if "avx512f" in cpu_flags() else "avx2",
                   help="ATEN_CPU_CAPABILITY for PyTorch (default: the best this CPU has)")
    p.add_argument("--spin", action="store_true",
                   help="let idle worker threads spin (each engine's default; best on an idle machine). Without it, "
                        "OMP_WAIT_POLICY=PASSIVE for segml and PyTorch and allow_spinning=0 for ONNX Runtime, "
                        "which is far faster for all three when other processes compete for the cores")
    p.add_argument("--json", help="write all measurements as JSON")
    args = p.parse_args()

    check_setup(args.segml)
    work = os.path.abspath(args.work)
    prepare(args, work)
    log = os.path.join(work, "run.log")
    open(log, "w").close()
    all_engines = engines(args, work)

    results = {}  # (engine, task) -> {"times": [...], "rss": [...], "config": {...}}
    started = time.time()
    for task, repeats in (("infer", args.repeats), ("train", args.train_repeats)):
        order = [e for e in all_engines if task in e.tasks]
        for r in range(args.rounds):
            for e in order[r % len(order):] + order[:r % len(order)]:  # rotate who goes first
                out = os.path.join(work, f"{task}_{slug(e.name)}.json")
                logits = os.path.join(work, f"logits_{slug(e.name)}.safetensors") if task == "infer" and r == 0 else None
                rss = run_process(e.command(task, args.warmup, repeats, out, logits), e.env, log)
                with open(out) as f:
                    got = json.load(f)
                config = got.get("config") or {k: v for k, v in got.items() if k != "times_ms"}
                res = results.setdefault((e.name, task), {"times": [], "rss": [], "config": config})
                res["times"] += got["times_ms"]
                res["rss"].append(rss)
                print(f"  round {r + 1}/{args.rounds} {task:5s} {e.name:12s} median {statistics.median(got['times_ms']):8.1f} ms"
                      f"  peak RSS {rss:6.0f} MB", flush=True)
            if r == 0 and task == "infer":
                rows, worst, scale = agreement(work, [e.name for e in order], args.tol)
                for a, b, d in rows:
                    print(f"  logits max abs diff {a} vs {b}: {d:.3g} (max |logit| {scale:.3g})")
                if worst > args.tol:
                    fail(f"the engines disagree: max abs logits difference {worst:.3g} > {args.tol:g}")

    def stat(engine, task):
        res = results.get((engine, task))
        if not res:
            return None
        return {"median": statistics.median(res["times"]), "min": min(res["times"]), "rss": max(res["rss"]),
                "n": len(res["times"])}

    torch_cfg = results[("PyTorch", "infer")]["config"]
    ort_cfg = results[("ONNX Runtime", "infer")]["config"]
    print("\n## Configuration\n")
    print(f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; AVX-512: {'yes' if 'avx512f' in cpu_flags() else 'no'}; "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print("- idle worker threads: " + ("spin (engine defaults)" if args.spin else
          "sleep (OMP_WAIT_POLICY=PASSIVE for segml and PyTorch, allow_spinning=0 for ONNX Runtime)"))
    print(f"- threads: {args.threads} for every engine; {args.rounds} rounds in rotating order; per process "
          f"{args.warmup} warm-up + {args.repeats} (inference) / {args.train_repeats} (training) timed runs")
    segml_cfg = results[("segml", "infer")]["config"]
    print(f"- segml: {args.segml}, SegformerInference / training step, kernels dispatched to {segml_cfg['isa']}, "
          f"segml::set_num_threads({segml_cfg['threads']})")
    print(f"- PyTorch {torch_cfg['torch']}: torch.set_num_threads({torch_cfg['threads']}), "
          f"ATEN_CPU_CAPABILITY={torch_cfg['ATEN_CPU_CAPABILITY']} ({torch_cfg['cpu_capability']}), "
          f"mkldnn={torch_cfg['mkldnn']}, BLAS {torch_cfg['blas']}, LD_PRELOAD={torch_cfg['LD_PRELOAD']}, "
          "inference under torch.inference_mode(); training: AdamW, zero_grad(set_to_none=True)")
    print(f"- ONNX Runtime: onnxruntime-node {ort_cfg['onnxruntime_node']} (node {ort_cfg['node']}), "
          f"intraOpNumThreads {ort_cfg['intraOpNumThreads']}, interOpNumThreads {ort_cfg['interOpNumThreads']}, "
          f"graphOptimizationLevel '{ort_cfg['graphOptimizationLevel']}', CPU provider, "
          f"allow_spinning={ort_cfg['extra']['session']['intra_op']['allow_spinning']}; model exported by "
          "torch.onnx.export (opset 17)")
    print("- model: SegFormer-B0, 150 labels, random non-trivial weights (seed "
          f"{args.seed}); input 512x512; training batch 2")

    def fmt_ratio(a, b):
        return f"{a / b:.2f}x" if a is not None and b else "-"

    print("\n## Results (medians over all rounds; ratio < 1: segml is faster / smaller)\n")
    print("| case | engine | median ms | min ms | peak RSS MB | segml / engine (median) | segml / engine (peak RSS) |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for task, label in (("infer", "B0 512x512 inference"), ("train", "B0 512x512 training step, batch 2")):
        ours = stat("segml", task)
        for e in all_engines:
            s = stat(e.name, task)
            if s is None:
                continue
            summary[f"{task}/{e.name}"] = s
            ratio_t = "-" if e.name == "segml" else fmt_ratio(ours["median"], s["median"])
            ratio_m = "-" if e.name == "segml" else fmt_ratio(ours["rss"], s["rss"])
            print(f"| {label} | {e.name} | {s['median']:.1f} | {s['min']:.1f} | {s['rss']:.0f} | {ratio_t} | {ratio_m} |")
    print(f"\nTotal time {time.time() - started:.0f} s. Logits agreement: max abs diff "
          + ", ".join(f"{a} vs {b} {d:.2g}" for a, b, d in rows) + f" (tolerance {args.tol:g}).")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "agreement": rows,
                       "raw": {f"{k[1]}/{k[0]}": v for k, v in results.items()},
                       "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
