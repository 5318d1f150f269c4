#!/usr/bin/env bash
# Converts the CIFAR-10 binary version into rps's HDF5 layout, unless the output exists.
# Get cifar-10-binary.tar.gz from the dataset's authors (Krizhevsky, Nair and Hinton), then
#   tar xzf cifar-10-binary.tar.gz          # creates cifar-10-batches-bin/
#   datasets/cifar10.sh cifar-10-batches-bin [OUTPUT]   (default data/cifar10.h5)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:?usage: datasets/cifar10.sh DIR [OUTPUT] (DIR: the extracted cifar-10-batches-bin/)}
OUT=${2:-data/cifar10.h5}
if [ -f "$OUT" ]; then
  exit 0
fi
target/release/rps convert cifar10 --input "$SRC" --output "$OUT"
