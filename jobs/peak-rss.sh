#!/usr/bin/env bash
# Peak resident memory per rank of short training runs (1 server + 2 workers, 5 steps):
# the CNN on Fashion-MNIST and ResNet-20 on a CIFAR-10-format file, at batch 32 and 128.
# Prints the metrics attribute peak_rss_bytes_max (the largest VmHWM over ranks).
# Usage: jobs/peak-rss.sh FASHION.h5 CIFAR.h5 [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
FASHION=${1:?usage: jobs/peak-rss.sh FASHION.h5 CIFAR.h5 [OUTDIR]}
CIFAR=${2:?usage: jobs/peak-rss.sh FASHION.h5 CIFAR.h5 [OUTDIR]}
OUT=${3:-runs/peak-rss}
mkdir -p "$OUT"
for spec in "cnn $FASHION" "resnet20 $CIFAR"; do
  set -- $spec
  for b in 32 128; do
    m="$OUT/$1-b$b.h5"
    mpirun -n 3 target/release/rps train --model "$1" --dataset "$2" --metrics "$m" \
      --servers 1 --steps 5 --eval-every 0 --batch-size "$b" --force > /dev/null 2>&1
    rss=$(h5dump -a /peak_rss_bytes_max "$m" | awk '/\(0\)/ {print $2}')
    echo "peak RSS per rank: model $1 batch $b dataset $2: $rss bytes ($((rss / 1048576)) MiB)"
  done
done
