#!/usr/bin/env bash
# The measured example of docs/results/interrupt-resume.md: a run stopped by a signal in
# the middle, resumed from its checkpoint, ends with exactly the parameters and metrics
# of the same run left alone. Fashion-MNIST, 1 server + 4 workers, p = 0.1, 300 steps,
# checkpoints every 50 steps; SIGUSR1 (what slurm/train.sbatch forwards on the
# time-limit warning) is sent to mpirun after STOP_AFTER seconds (default 15).
# Usage: jobs/interrupt-resume.sh [OUTDIR]   (default runs/interrupt-resume)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
DATA=data/fashion-mnist.h5
datasets/fashion-mnist.sh "$DATA"
OUT=${1:-runs/interrupt-resume}
rm -rf "$OUT"
mkdir -p "$OUT"
args=(--dataset "$DATA" --servers 1 --drop-rate 0.1 --steps 300 --eval-every 50 --seed 7)

echo "== uninterrupted run"
mpirun -n 5 target/release/rps train "${args[@]}" --metrics "$OUT/full.h5" --save-model "$OUT/full-model.h5"

echo "== the same run, stopped after ${STOP_AFTER:-15} s"
mpirun -n 5 target/release/rps train "${args[@]}" --metrics "$OUT/part.h5" --save-model "$OUT/part-model.h5" \
  --checkpoint-dir "$OUT/checkpoints" --checkpoint-every 50 &
pid=$!
sleep "${STOP_AFTER:-15}"
kill -USR1 "$pid"
status=0
wait "$pid" || status=$?
echo "exit status $status (75: stopped cleanly)"
ls "$OUT/checkpoints"

echo "== resumed"
mpirun -n 5 target/release/rps train "${args[@]}" --metrics "$OUT/part.h5" --save-model "$OUT/part-model.h5" \
  --checkpoint-dir "$OUT/checkpoints" --checkpoint-every 50 --resume "$OUT/checkpoints" --force

echo "== comparison (h5diff: no output and exit 0 means identical)"
h5diff "$OUT/full-model.h5" "$OUT/part-model.h5" /params /params && echo "final parameters: identical"
for d in /train/loss /eval/test_accuracy /comm/dropped_up /comm/dropped_down; do
  h5diff "$OUT/full.h5" "$OUT/part.h5" "$d" "$d" && echo "$d: identical"
done
