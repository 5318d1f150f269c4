#!/usr/bin/env bash
# The main job: installs what is missing, builds, converts Fashion-MNIST, and trains the
# reference CNN with RPS on 1 server + 4 workers at a 10 % drop rate for one epoch.
# Extra arguments are passed to `rps train` (e.g. --epochs 2 --drop-rate 0).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh

DATA=data/fashion-mnist.h5
datasets/fashion-mnist.sh "$DATA"
RUN=runs/quickstart-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN"
mpirun -n 5 target/release/rps train --dataset "$DATA" --metrics "$RUN/metrics.h5" \
  --servers 1 --drop-rate 0.1 --epochs 1 "$@"
echo "metrics file: $RUN/metrics.h5 (its layout: docs/formats.md and docs/metrics.md; e.g. h5dump -H $RUN/metrics.h5)"
