#!/usr/bin/python3
"""bench/peers for CLIPSeg: segml, PyTorch and ONNX Runtime on the same
CLIPSeg (CIDAS/clipseg-rd64-refined sizes, random well-scaled weights), same input, one run.

    /usr/bin/python3 bench/peers/clipseg_run.py [--rounds 2] [--warmup 1] [--repeats 3] [--threads 2]
                                                [--segml PATH] [--spin] [--json OUT]
    /usr/bin/python3 bench/peers/clipseg_run.py --fetch-private-libs   # see "Libraries" below

Cases: one 352x352 image with 1 and with 8 prompts (77 tokens each, padded as HF's processor does).
  PyTorch      tools/clipseg_ref.py through clipseg_torch_peer.py, way "hf": one (image, prompt) pair per
               call, the whole model per prompt (HF's usage); way "batched" (8 prompts, for information):
               one call on the image repeated 8 times.
  ONNX Runtime the reference exported by torch.onnx.export (opset 17, dynamic batch), run by
               clipseg_ort_peer.js the same two ways. The export only computes the logits, so it leaves
               out the last two vision layers (10 and 11), which only feed the pooled output; PyTorch
               runs them as HF does.
  segml        bench/segformer's CLIPSeg case (CLIPSegInference). With --segml PATH (e.g.
               build/bench/segformer) it runs
                 PATH --case clipseg_352 --model WORK/clipseg/model --input WORK/clipseg/input.safetensors
                      --prompts P --threads T --warmup W --repeats R --json OUT [--save-logits F]
               and expects the JSON {"times_ms": [one entry per timed run covering all P prompts],
               "config": {"isa": ..., "threads": ...}} and, with --save-logits, a safetensors file whose
               tensor `logits` holds the raw decoder logits (P, 352, 352) for the first P prompts of
               input.safetensors (pixel_values F32 (1, 3, 352, 352), input_ids / attention_mask I64 (8, 77)).
               segml runs its own way (vision tower once per image, prompts batched), so it is compared
               with the other engines' "hf" rows.
Each engine run is a fresh process (load, --warmup untimed runs, --repeats timed runs; peak RSS is its
ru_maxrss); engines take turns in a rotating order, --rounds times; medians over all rounds. The logits
of every engine and way are compared (max abs difference <= --tol) on the first round's outputs.

Libraries: PyTorch needs an optimised BLAS (Debian's default reference BLAS is ~20x slower). Either run
bench/peers/setup.sh (system-wide: OpenBLAS OpenMP build as libblas.so.3, tcmalloc), or
--fetch-private-libs, which downloads the same two Debian packages with apt-get download and unpacks
them into WORK/sysroot without installing anything; PyTorch then gets them through LD_LIBRARY_PATH and
LD_PRELOAD. onnxruntime-node comes from `npm install` in bench/peers.
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as peers  # noqa: E402  (bench/peers/run.py: process runner, CPU description)
from run import PYTHON, fail, slug, st  # noqa: E402

CASES = [(1, "hf"), (8, "hf"), (8, "batched")]  # (prompts, way)
SYSTEM_LIBDIR = "/usr/lib/x86_64-linux-gnu"


def libraries(work):
    """(LD_LIBRARY_PATH or None, tcmalloc path): the system's OpenBLAS OpenMP setup, else WORK/sysroot's."""
    system = os.path.realpath(f"{SYSTEM_LIBDIR}/libblas.so.3")
    if "openblas-openmp" in system and os.path.exists(peers.TCMALLOC):
        return None, peers.TCMALLOC
    private = os.path.join(work, "sysroot", SYSTEM_LIBDIR.lstrip("/"))
    blas = os.path.join(private, "openblas-openmp")
    tcmalloc = os.path.join(private, "libtcmalloc_minimal.so.4")
    if os.path.exists(os.path.join(blas, "libblas.so.3")) and os.path.exists(tcmalloc):
        return blas, tcmalloc
    fail(f"{SYSTEM_LIBDIR}/libblas.so.3 resolves to {system}, not the OpenBLAS OpenMP build, and {private} has "
         "no private copy: run bench/peers/setup.sh (system-wide) or bench/peers/clipseg_run.py --fetch-private-libs")


def fetch_private_libs(work):
    debs = os.path.join(work, "debs")
    os.makedirs(debs, exist_ok=True)
    subprocess.run(["apt-get", "download", "libopenblas0-openmp", "libtcmalloc-minimal4"], cwd=debs, check=True)
    for deb in sorted(glob.glob(os.path.join(debs, "*.deb"))):
        subprocess.run(["dpkg", "-x", deb, os.path.join(work, "sysroot")], check=True)
    print(f"unpacked {', '.join(os.path.basename(d) for d in glob.glob(os.path.join(debs, '*.deb')))} "
          f"into {os.path.join(work, 'sysroot')}")


def prepare(args, work, env):
    stamp = os.path.join(work, "clipseg", "prepared.json")
    want = {"seed": args.seed, "model": "rd64-refined", "size": 352, "prompts": 8, "context": 77}
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == want:
                return
    os.makedirs(os.path.join(work, "clipseg"), exist_ok=True)
    peers.run_process([PYTHON, os.path.join(HERE, "clipseg_torch_peer.py"), "prepare", work, "--seed", str(args.seed)],
                      dict(env, PYTHONWARNINGS="ignore"), os.path.join(work, "clipseg", "prepare.log"))
    with open(stamp, "w") as f:
        json.dump(want, f)


class Engine:
    def __init__(self, name, ways, command, env):
        self.name, self.ways, self.command, self.env = name, ways, command, env


def engines(args, work):
    threads = str(args.threads)
    base = dict(os.environ, OMP_NUM_THREADS=threads)
    if not args.spin:
        base["OMP_WAIT_POLICY"] = "PASSIVE"
    libpath, tcmalloc = libraries(work)
    torch_env = dict(base, LD_PRELOAD=tcmalloc, ATEN_CPU_CAPABILITY=args.aten_cpu_capability)
    if libpath:
        torch_env["LD_LIBRARY_PATH"] = libpath + (":" + os.environ["LD_LIBRARY_PATH"]
                                                  if os.environ.get("LD_LIBRARY_PATH") else "")

    def common(prompts, way, warmup, repeats, out, logits):
        cmd = ["--prompts", str(prompts), "--way", way, "--threads", threads, "--warmup", str(warmup),
               "--repeats", str(repeats), "--json", out]
        return cmd + (["--save-logits", logits] if logits else [])

    def torch(prompts, way, *rest):
        return [PYTHON, os.path.join(HERE, "clipseg_torch_peer.py"), "infer", work] + common(prompts, way, *rest)

    def ort(prompts, way, *rest):
        return (["node", os.path.join(HERE, "clipseg_ort_peer.js"), work] + common(prompts, way, *rest)
                + ["--spin", "1" if args.spin else "0"])

    def segml(prompts, way, warmup, repeats, out, logits):  # bench/segformer --case clipseg_352 (see the docstring)
        cmd = [args.segml, "--case", "clipseg_352", "--model", os.path.join(work, "clipseg", "model"),
               "--input", os.path.join(work, "clipseg", "input.safetensors"), "--prompts", str(prompts),
               "--threads", threads, "--warmup", str(warmup), "--repeats", str(repeats), "--json", out]
        return cmd + (["--save-logits", logits] if logits else [])

    out = [Engine("ONNX Runtime", ("hf", "batched"), ort, base), Engine("PyTorch", ("hf", "batched"), torch, torch_env)]
    if args.segml:
        if not os.access(args.segml, os.X_OK):
            fail(f"--segml {args.segml}: not an executable")
        out.insert(0, Engine("segml", ("hf",), segml, base))  # segml's own way; compared with the "hf" rows
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--segml", help="segml's benchmark binary with the clipseg_352 case (build/bench/segformer)")
    p.add_argument("--work", default=os.path.join(HERE, "work"), help="weights, ONNX file, inputs, logs")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine")
    p.add_argument("--rounds", type=int, default=2, help="times each engine runs each case, taking turns")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per engine process")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per engine process")
    p.add_argument("--tol", type=float, default=1e-3, help="max abs logits difference allowed between engines")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    p.add_argument("--aten-cpu-capability", default="avx512" if "avx512f" in peers.cpu_flags() else "avx2")
    p.add_argument("--spin", action="store_true", help="idle worker threads spin (see run.py --spin)")
    p.add_argument("--fetch-private-libs", action="store_true",
                   help="apt-get download + dpkg -x OpenBLAS (OpenMP) and tcmalloc into WORK/sysroot, then stop")
    p.add_argument("--json", help="write all measurements as JSON")
    args = p.parse_args()
    for name in ("threads", "rounds", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or not args.tol > 0:
        p.error("--warmup must be >= 0 and --tol > 0")
    work = os.path.abspath(args.work)
    if args.fetch_private_libs:
        fetch_private_libs(work)
        return
    if not os.path.isdir(os.path.join(HERE, "node_modules", "onnxruntime-node")):
        fail("onnxruntime-node is not installed: run `npm install` in bench/peers (or bench/peers/setup.sh)")
    all_engines = engines(args, work)
    prepare(args, work, [e for e in all_engines if e.name == "PyTorch"][0].env)
    cdir = os.path.join(work, "clipseg")
    log = os.path.join(cdir, "run.log")
    open(log, "w").close()

    results, agreement = {}, []
    started = time.time()
    for prompts, way in CASES:
        order = [e for e in all_engines if way in e.ways]
        for r in range(args.rounds):
            for e in order[r % len(order):] + order[:r % len(order)]:
                tag = f"{slug(e.name)}_{prompts}_{way}"
                out = os.path.join(cdir, f"times_{tag}.json")
                logits = os.path.join(cdir, f"logits_{tag}.safetensors") if r == 0 else None
                rss = peers.run_process(e.command(prompts, way, args.warmup, args.repeats, out, logits), e.env, log)
                with open(out) as f:
                    got = json.load(f)
                res = results.setdefault((e.name, prompts, way), {"times": [], "rss": [], "config": got.get("config", {})})
                res["times"] += got["times_ms"]
                res["rss"].append(rss)
                print(f"  round {r + 1}/{args.rounds} {prompts} prompt(s) {way:7s} {e.name:12s} median "
                      f"{statistics.median(got['times_ms']):9.1f} ms  peak RSS {rss:6.0f} MB", flush=True)

    # Logits agreement: every (engine, way) of a prompt count against PyTorch's hf way.
    for prompts in sorted({c[0] for c in CASES}):
        base = st.load(os.path.join(cdir, f"logits_pytorch_{prompts}_hf.safetensors"))[0]["logits"]
        for (name, n, way) in results:
            if n != prompts or (name, way) == ("PyTorch", "hf"):
                continue
            other = st.load(os.path.join(cdir, f"logits_{slug(name)}_{n}_{way}.safetensors"))[0]["logits"]
            if other.shape != base.shape:
                fail(f"logits shapes differ: PyTorch hf {base.shape} vs {name} {way} {other.shape}")
            d = float(np.abs(other.astype(np.float64) - base).max())
            agreement.append((f"{name} {way}", f"PyTorch hf", prompts, d))
            print(f"  {prompts} prompt(s): logits max abs diff {name} {way} vs PyTorch hf: {d:.3g} "
                  f"(max |logit| {float(np.abs(base).max()):.3g})")
    worst = max((a[3] for a in agreement), default=0.0)
    if worst > args.tol:
        fail(f"the engines disagree: max abs logits difference {worst:.3g} > {args.tol:g}")

    def stat(key):
        res = results[key]
        return {"median": statistics.median(res["times"]), "min": min(res["times"]), "rss": max(res["rss"]),
                "n": len(res["times"])}

    tcfg = results[("PyTorch", 1, "hf")]["config"]
    ocfg = results[("ONNX Runtime", 1, "hf")]["config"]
    print("\n## Configuration\n")
    print(f"- CPU: {peers.cpu_model()}, {os.cpu_count()} logical CPUs; AVX-512: "
          f"{'yes' if 'avx512f' in peers.cpu_flags() else 'no'}; load average at the end {os.getloadavg()[0]:.1f}")
    print(f"- threads: {args.threads} for every engine; {args.rounds} rounds in rotating order; per process "
          f"{args.warmup} warm-up + {args.repeats} timed runs; one timed run = all prompts of the case")
    print(f"- PyTorch {tcfg.get('torch')}: torch.set_num_threads({tcfg.get('threads')}), ATEN_CPU_CAPABILITY="
          f"{tcfg.get('ATEN_CPU_CAPABILITY')} ({tcfg.get('cpu_capability')}), mkldnn={tcfg.get('mkldnn')}, "
          f"OpenBLAS OpenMP ({'LD_LIBRARY_PATH ' + tcfg['LD_LIBRARY_PATH'] if tcfg.get('LD_LIBRARY_PATH') else 'system'}), "
          f"LD_PRELOAD={tcfg.get('LD_PRELOAD')}, torch.inference_mode()")
    print(f"- ONNX Runtime: onnxruntime-node {ocfg.get('onnxruntime_node')} (node {ocfg.get('node')}), "
          f"intraOpNumThreads {ocfg.get('intraOpNumThreads')}, graphOptimizationLevel "
          f"'{ocfg.get('graphOptimizationLevel')}', CPU provider; export opset 17, dynamic batch")
    print("- segml: " + (args.segml + " --case clipseg_352 (CLIPSegInference; text tower timed in every run)"
                         if args.segml else "not run (--segml build/bench/segformer adds it)"))
    print(f"- model: CLIPSeg rd64-refined sizes (150.7 M parameters), random well-scaled weights (seed {args.seed}); "
          "input 352x352, prompts of 77 tokens")

    print("\n## Results (medians over all rounds)\n")
    print("| case | engine | way | median ms | min ms | ms per prompt | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for prompts, way in CASES:
        for e in all_engines:
            if (e.name, prompts, way) not in results:
                continue
            s = stat((e.name, prompts, way))
            summary[f"{prompts}/{way}/{e.name}"] = s
            shown = "own (vision once)" if e.name == "segml" else way
            print(f"| {prompts} prompt{'s' if prompts > 1 else ''} | {e.name} | {shown} | {s['median']:.0f} | "
                  f"{s['min']:.0f} | {s['median'] / prompts:.0f} | {s['rss']:.0f} |")
    if args.segml:
        print("\n| case | segml / ONNX Runtime hf | segml / PyTorch hf |\n|---|---|---|")
        for prompts in sorted({c[0] for c in CASES}):
            ours = stat(("segml", prompts, "hf"))["median"]
            print(f"| {prompts} prompt(s) | {ours / stat(('ONNX Runtime', prompts, 'hf'))['median']:.2f}x | "
                  f"{ours / stat(('PyTorch', prompts, 'hf'))['median']:.2f}x |")
    print(f"\nTotal time {time.time() - started:.0f} s. Logits agreement (max abs diff vs PyTorch hf): "
          + ", ".join(f"{a} ({n} prompts) {d:.2g}" for a, _, n, d in agreement) + f" (tolerance {args.tol:g}).")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "agreement": agreement,
                       "raw": {f"{k[1]}/{k[2]}/{k[0]}": v for k, v in results.items()}, "args": vars(args)}, f,
                      indent=2)


if __name__ == "__main__":
    main()
