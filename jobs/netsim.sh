#!/usr/bin/env bash
# What lossy learning traffic buys the datacenter, end to end (results:
# docs/results/netsim.md; how it works: docs/operations.md): a real training run (the
# quickstart configuration at p = 0: Fashion-MNIST, 1 server + 4 workers, one epoch)
# gives the traffic pattern; the ns-3 simulation replays it under both policies at loads
# 0.3 and 0.6; the loss the lossy policy measured at the higher load is fed back into
# `rps train --drop-rate`.
# Usage: jobs/netsim.sh [OUTDIR]   (default runs/netsim; run scripts/setup.sh first)
#   NETSIM_ARGS="--duration 0.1" (default) passes options to rps-netsim.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
test -x target/release/rps || { echo "jobs/netsim.sh: run scripts/setup.sh first" >&2; exit 1; }
DATA=data/fashion-mnist.h5
datasets/fashion-mnist.sh "$DATA"
OUT=${1:-runs/netsim}
mkdir -p "$OUT"
TRAIN=(target/release/rps train --job jobs/quickstart.toml --eval-every 100 --force)
set -x
mpirun -n 5 "${TRAIN[@]}" --drop-rate 0 --metrics "$OUT/train-p0.h5"
# shellcheck disable=SC2086
netsim/run.sh "$OUT/train-p0.h5" "$OUT/results.csv" ${NETSIM_ARGS:---duration 0.1}
target/release/rps report "$OUT/results.csv"
target/release/rps plot "$OUT/results.csv" --output-dir "$OUT/figures"
P=$(awk -F, '$1 == "lossy" && $2 == 0.6 && $4 == "learning_loss_rate" { printf "%.4f", $6 }' "$OUT/results.csv")
mpirun -n 5 "${TRAIN[@]}" --drop-rate "$P" --metrics "$OUT/train-lossy.h5"
# The same loss at the simulator's granularity: 1,472-byte datagrams, each lost on its own.
mpirun -n 5 "${TRAIN[@]}" --drop-rate "$P" --packet-bytes 1472 --metrics "$OUT/train-lossy-packets.h5"
