#!/usr/bin/env bash
# Which loss hurts more at the same mean rate? Fashion-MNIST, co-located mode (the
# paper's setting) with 4 ranks, batch 32, one epoch, seed 1: no loss; i.i.d. loss of
# whole blocks at 10 %; bursty Gilbert–Elliott loss at the same 10 % mean (mean burst of
# 10 steps); i.i.d. loss of 1,500-byte packets at 10 %. Seeds from $SEEDS (default 1).
# Usage: SEEDS="1 2 3" jobs/drop-models.sh [OUTDIR]   (default runs/drop-models); then
#        target/release/rps report OUTDIR/*.h5   (results: docs/results/drop-models.md)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
DATA=data/fashion-mnist.h5
datasets/fashion-mnist.sh "$DATA"
OUT=${1:-runs/drop-models}
mkdir -p "$OUT"
train() {
  local name=$1; shift
  mpirun -n 4 target/release/rps train --dataset "$DATA" --metrics "$OUT/$name-s$seed.h5" \
    --colocated --epochs 1 --eval-every 117 --seed "$seed" --force "$@"
}
for seed in ${SEEDS:-1}; do
  train none
  train iid --drop-rate 0.1
  # Mean loss p/(p+r) = 0.0111/0.1111 = 0.1, mean bad-state sojourn 1/r = 10 slots.
  train bursty --drop-model gilbert-elliott --ge-p 0.011111 --ge-r 0.1
  train packets --drop-rate 0.1 --packet-bytes 1500
done
