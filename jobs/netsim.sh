#!/usr/bin/env bash
# What lossy learning traffic buys the datacenter, end to end (results:
# docs/results/netsim.md; how it works: docs/operations.md): a real training run (the
# quickstart configuration at p = 0: Fashion-MNIST, 1 server + 4 workers) gives the
# traffic pattern; the ns-3 simulation replays it at loads 0.3 and 0.6 under the reliable
# policy, the lossy policy under a loss budget (docs/concepts.md, "The loss budget") and,
# for reference, the lossy policy with fixed pacing; the drop trace of job 0 at load 0.6
# under the budget is replayed by `rps train --replay-trace` (the simulation's own loss
# timing), next to i.i.d. loss at the same mean rate and to no loss, for as many steps.
# Usage: jobs/netsim.sh [OUTDIR]   (default runs/netsim; run scripts/setup.sh first)
#   NETSIM_ARGS passes options to every simulation (default below), SEEDS the seeds of the
#   main grid ("1 2 3"), TARGET the loss budget (0.05), PARALLEL simulations at once (2).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
test -x target/release/rps || { echo "jobs/netsim.sh: run scripts/setup.sh first" >&2; exit 1; }
DATA=data/fashion-mnist.h5
datasets/fashion-mnist.sh "$DATA"
OUT=${1:-runs/netsim}
mkdir -p "$OUT"
TARGET=${TARGET:-0.05}
# The step rate of a GPU cluster, not of this 2-core machine (docs/results/netsim.md).
DEFAULT_ARGS="--step-rate 50 --warmup 0.1 --duration 0.3"
# The quickstart configuration (jobs/quickstart.toml) for a number of steps.
TRAIN=(target/release/rps train --dataset "$DATA" --servers 1 --batch-size 32 --seed 1 --force)
set -x
# The traffic pattern: roles, block sizes (the step rate is --step-rate's).
mpirun -n 5 "${TRAIN[@]}" --drop-rate 0 --steps 40 --eval-every 0 --metrics "$OUT/train-p0.h5"
# shellcheck disable=SC2086
SEEDS=${SEEDS:-1 2 3} POLICIES="lossy-target-$TARGET reliable" PARALLEL=${PARALLEL:-2} \
  TRACE_DIR="$OUT/traces" netsim/run.sh "$OUT/train-p0.h5" "$OUT/results.csv" \
  ${NETSIM_ARGS:-$DEFAULT_ARGS}
target/release/rps report "$OUT/results.csv"
target/release/rps plot "$OUT/results.csv" --output-dir "$OUT/figures"
# Training at the simulated loss: job 0's trace at load 0.6 under the budget (seed 1),
# replayed; i.i.d. loss per 1,396-byte packet at the same mean rate; no loss.
TRACE="$OUT/traces/lossy-target-$TARGET-0.6-1.h5"
STEPS=$(h5dump -a steps_completed "$TRACE" | awk '/\(0\)/ { print $2 }')
P=$(awk -F, -v p="lossy-target-$TARGET" '$1 == p && $2 == 0.6 && $3 == 1 && $4 == "learning_unusable_rate" { printf "%.4f", $6 }' "$OUT/results.csv")
SHORT=(--steps "$STEPS" --eval-every 0 --packet-bytes 1396)
mpirun -n 5 "${TRAIN[@]}" "${SHORT[@]}" --drop-rate 0 --metrics "$OUT/train-short-p0.h5"
mpirun -n 5 "${TRAIN[@]}" "${SHORT[@]}" --drop-rate 0 --replay-trace "$TRACE" --metrics "$OUT/train-replay.h5"
mpirun -n 5 "${TRAIN[@]}" "${SHORT[@]}" --drop-rate "$P" --metrics "$OUT/train-iid.h5"
target/release/rps report "$OUT/train-short-p0.h5" "$OUT/train-replay.h5" "$OUT/train-iid.h5"
# The lossy policy with fixed pacing (--udp-share 1), one seed, for reference.
# shellcheck disable=SC2086
SEEDS=1 POLICIES=lossy PARALLEL=${PARALLEL:-2} \
  netsim/run.sh "$OUT/train-p0.h5" "$OUT/results-fixed.csv" ${NETSIM_ARGS:-$DEFAULT_ARGS}
target/release/rps report "$OUT/results.csv" "$OUT/results-fixed.csv"
target/release/rps plot "$OUT/results.csv" "$OUT/results-fixed.csv" --output-dir "$OUT/figures"
# One seed for a whole second of traffic (the budget and the reliable policy), and the
# trace of that run at load 0.6 replayed for its steps.
# shellcheck disable=SC2086
SEEDS=1 POLICIES="lossy-target-$TARGET reliable" PARALLEL=${PARALLEL:-2} TRACE_DIR="$OUT/traces-1s" \
  netsim/run.sh "$OUT/train-p0.h5" "$OUT/results-1s.csv" --step-rate 50 --warmup 0.1 --duration 1
target/release/rps report "$OUT/results-1s.csv"
TRACE="$OUT/traces-1s/lossy-target-$TARGET-0.6-1.h5"
STEPS=$(h5dump -a steps_completed "$TRACE" | awk '/\(0\)/ { print $2 }')
P=$(awk -F, -v p="lossy-target-$TARGET" '$1 == p && $2 == 0.6 && $4 == "learning_unusable_rate" { printf "%.4f", $6 }' "$OUT/results-1s.csv")
SHORT=(--steps "$STEPS" --eval-every 0 --packet-bytes 1396)
mpirun -n 5 "${TRAIN[@]}" "${SHORT[@]}" --drop-rate 0 --metrics "$OUT/train-1s-p0.h5"
mpirun -n 5 "${TRAIN[@]}" "${SHORT[@]}" --drop-rate 0 --replay-trace "$TRACE" --metrics "$OUT/train-1s-replay.h5"
mpirun -n 5 "${TRAIN[@]}" "${SHORT[@]}" --drop-rate "$P" --metrics "$OUT/train-1s-iid.h5"
target/release/rps report "$OUT/train-1s-p0.h5" "$OUT/train-1s-replay.h5" "$OUT/train-1s-iid.h5"
