#!/usr/bin/env bash
# PyTorch models trained under rps's exchange from Python (examples/pytorch_rps.py):
# Fashion-MNIST, 4 co-located ranks, batch 32, one epoch of each worker's shard, for
# the reference CNN and a row-by-row LSTM, each under RPS at p = 0 and p = 0.1 and under
# the all-reduce baseline (the same call, --algorithm allreduce), seeds from $SEEDS
# (default "1 2 3"), models from $MODELS (default "cnn lstm"). Every configuration of a seed starts from the same model and sees
# the same minibatches: RPS at p = 0.1 is paired with its lossless twin.
#
# Installs CPU-capable PyTorch (PyPI's torch, a large download once), NumPy and h5py into
# its own environment, target/python-torch, and the rps package from this checkout.
# Usage: SEEDS="1 2 3" MODELS="cnn lstm" jobs/python-pytorch.sh [OUTDIR]   (default runs/python-pytorch);
#        target/release/rps report OUTDIR/*.h5   (results: docs/results/python.md)
# Runs already completed in OUTDIR are kept, not rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
DATA=data/fashion-mnist.h5
datasets/fashion-mnist.sh "$DATA"
VENV=target/python-torch
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check numpy h5py torch
# Always rebuilt and reinstalled (same version number, new code).
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall ./crates/py
OUT=${1:-runs/python-pytorch}
mkdir -p "$OUT"
# A run whose metrics file says `completed` is kept (delete it to rerun it).
done_already() {
  "$VENV/bin/python" -c 'import h5py, sys; sys.exit(h5py.File(sys.argv[1], "r").attrs.get("status") != "completed")' "$1" 2>/dev/null
}
run() {
  local name=$1; shift
  if done_already "$OUT/$model-$name-s$seed.h5"; then
    echo "== $name (seed $seed): completed, kept" >&2
    return
  fi
  echo "== $name (seed $seed)" >&2
  mpirun -n 4 "$VENV/bin/python" examples/pytorch_rps.py --data "$DATA" --model "$model" \
    --seed "$seed" --eval-every 117 --metrics "$OUT/$model-$name-s$seed.h5" --force "$@" >&2
}
for seed in ${SEEDS:-1 2 3}; do
  for model in ${MODELS:-cnn lstm}; do
    run allreduce --algorithm allreduce
    run rps-p0 --drop-rate 0
    run rps-p0.1 --drop-rate 0.1
  done
done
