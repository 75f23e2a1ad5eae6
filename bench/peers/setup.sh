#!/bin/sh
# One-time setup of bench/peers (as root): PyTorch's BLAS = OpenBLAS OpenMP build, tcmalloc for
# PyTorch, and onnxruntime-node 1.30.0 (the .npmrc next to package.json skips its GPU download).
set -eu
apt-get install -y libopenblas0-openmp libtcmalloc-minimal4
for lib in libblas.so.3 liblapack.so.3; do
  update-alternatives --set "$lib-x86_64-linux-gnu" "/usr/lib/x86_64-linux-gnu/openblas-openmp/$lib"
done
cd "$(dirname "$0")" && npm install --no-audit --no-fund
