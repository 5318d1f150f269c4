#!/usr/bin/env bash
# docs/results/fashion-mnist-2epochs.md: RPS at p = 0 and 0.1 against all-reduce, two
# epochs (jobs/fashion-mnist-2epochs.sh), summarized by rps report.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=runs/pages/fashion-mnist-2epochs
rm -rf "$OUT"
jobs/fashion-mnist-2epochs.sh "$OUT" >&2
echo "Fashion-MNIST, 1 server + 4 workers, batch 32 per worker, 2 epochs, seed 1 (\`jobs/fashion-mnist-2epochs.sh\`):"
echo
target/release/rps report "$OUT"/rps-p0.h5 "$OUT"/rps-p0.1.h5 "$OUT"/allreduce.h5
