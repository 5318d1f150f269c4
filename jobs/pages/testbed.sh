#!/usr/bin/env bash
# docs/results/testbed.md: reliable transports against UDP under real packet loss on the
# namespace testbed (jobs/testbed.sh, as root), summarized by rps report --testbed.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=runs/pages/testbed
rm -rf "$OUT"
jobs/testbed.sh "$OUT" >&2
target/release/rps report --testbed "$OUT/index.csv"
target/release/rps plot --testbed "$OUT/index.csv" --output-dir "$OUT/figures" >&2
cp "$OUT/figures/testbed_step_time.png" docs/results/testbed-step-time.png
cp "$OUT/figures/testbed_accuracy.png" docs/results/testbed-accuracy.png
echo
echo "Figures: [testbed-step-time.png](testbed-step-time.png), [testbed-accuracy.png](testbed-accuracy.png)."
