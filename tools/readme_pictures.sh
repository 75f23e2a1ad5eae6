#!/usr/bin/env bash
# tools/readme_pictures.sh [BUILD]: makes the pictures of README.md and docs/ (docs/images/) from one
# documented run on segml's built-in procedural street scenes (no downloads; CamVid images are never
# committed). Run it from the repository root after building (BUILD defaults to build) and, for the
# demo screenshot, `(cd tests/browser && npm ci)` and Debian's chromium.
#
#   1. finetune_sidewalk with its defaults (B0 from scratch, 1000 steps on runs/synthetic-scenes,
#      seed 0) into runs/readme: docs/images/training_curves.svg (loss, mean IoU, learning rate).
#   2. evaluate on the scenes' test split: docs/images/confusion_matrix.svg (% of each
#      ground-truth row) and docs/images/prediction_vs_truth.png (prediction beside ground truth).
#   3. segment on a test scene: docs/images/overlay.png (the overlay with its legend).
#   4. demo_server with the run's model, an example scene clicked in chromium: docs/images/demo.jpg.
# The figures of a run are in runs/readme/README.md (its model card) and runs/readme/eval.json.
set -euo pipefail
build=${1:-build}
out=docs/images
run=runs/readme
data=runs/synthetic-scenes
mkdir -p "$out"

echo "== 1. fine-tune (finetune_sidewalk's defaults, seed 0) into $run"
rm -rf "$run"
"$build/examples/finetune_sidewalk" --output_dir "$run" --seed 0
cp "$run/training_curves.svg" "$out/training_curves.svg"

echo "== 2. evaluate on the test split"
rm -rf "$run/predictions"
"$build/examples/evaluate" --model "$run" --data "$data" --split test --json "$run/eval.json" \
  --confusion "$out/confusion_matrix.svg" --predictions "$run/predictions"
first=$(ls "$run/predictions" | sort | head -1)
cp "$run/predictions/$first" "$out/prediction_vs_truth.png"

echo "== 3. segment one test scene"
image=$(ls "$data/test/images" | sort | sed -n 2p)
"$build/examples/segment" --model "$run" --image "$data/test/images/$image" --output "$out/overlay.png"

echo "== 4. the demo page"
port=18765
"$build/examples/demo_server" --model "$run" --host 127.0.0.1 --port "$port" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$port/healthz" > /dev/null 2>&1 && break
  sleep 0.2
done
node tools/demo_screenshot.mjs "http://127.0.0.1:$port" "$out/demo.jpg" 2
kill $server
wait $server 2>/dev/null || true
trap - EXIT
ls -la "$out"
