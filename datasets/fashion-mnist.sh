#!/usr/bin/env bash
# Converts Fashion-MNIST from Debian's dataset-fashion-mnist package (IDX files in
# /usr/share/datasets/fashion-mnist) into rps's HDF5 layout, unless the output exists.
# Usage: datasets/fashion-mnist.sh [OUTPUT]   (default data/fashion-mnist.h5)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-data/fashion-mnist.h5}
SRC=/usr/share/datasets/fashion-mnist
if [ -f "$OUT" ]; then
  exit 0
fi
if [ ! -d "$SRC" ]; then
  echo "datasets: $SRC not found; install Debian's dataset-fashion-mnist (scripts/setup.sh does)" >&2
  exit 1
fi
target/release/rps convert fashion-mnist --input "$SRC" --output "$OUT"
