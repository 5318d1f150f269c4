#!/usr/bin/env bash
# The acceptance experiment of the first issue, as it is reported in
# docs/results/fashion-mnist-2epochs.md:
# Fashion-MNIST, 1 server + 4 workers, batch 32 per worker, two epochs, default
# learning rate and momentum; p = 0 and p = 0.1 with RPS, and the all-reduce baseline.
# Usage: jobs/fashion-mnist-2epochs.sh [OUTDIR]   (default runs/fashion-mnist-2epochs)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
DATA=data/fashion-mnist.h5
datasets/fashion-mnist.sh "$DATA"
OUT=${1:-runs/fashion-mnist-2epochs}
mkdir -p "$OUT"
for p in 0 0.1; do
  time mpirun -n 5 target/release/rps train --dataset "$DATA" \
    --metrics "$OUT/rps-p$p.h5" --servers 1 --drop-rate "$p" --epochs 2 --eval-every 200 --force
done
time mpirun -n 5 target/release/rps train --dataset "$DATA" \
  --metrics "$OUT/allreduce.h5" --servers 1 --algorithm allreduce --epochs 2 --eval-every 200 --force
