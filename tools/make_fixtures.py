#!/usr/bin/python3
"""Writes the PyTorch reference fixtures that the C++ tests compare against.

Run with Debian's python3 and python3-torch (PyTorch is never needed to build or test segml):
    /usr/bin/python3 tools/make_fixtures.py            # all groups
    /usr/bin/python3 tools/make_fixtures.py ops_norm   # one group

Each module tools/fixtures/<group>.py defines make(out_dir) and writes
tests/fixtures/<group>.safetensors. Every file carries metadata {"fixture_version": VERSION}; the C++
tests refuse a file of another version with a hint to re-run this script.
Everything is computed in float64 from float32-representable inputs, then stored as float32 and
float64 as each test needs, so the reference itself adds no float32 rounding noise.
"""
import importlib
import os
import pkgutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
VERSION = "1"
OUT_DIR = os.path.join(os.path.dirname(HERE), "tests", "fixtures")


def main(argv):
    torch.use_deterministic_algorithms(True)
    import fixtures
    groups = argv or sorted(m.name for m in pkgutil.iter_modules(fixtures.__path__) if not m.name.startswith("_"))
    os.makedirs(OUT_DIR, exist_ok=True)
    for g in groups:
        mod = importlib.import_module("fixtures." + g)
        path = mod.make(OUT_DIR)
        print(f"wrote {os.path.relpath(path)}")


if __name__ == "__main__":
    main(sys.argv[1:])
