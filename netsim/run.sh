#!/usr/bin/env bash
# Runs the datacenter simulation for both policies (reliable, lossy) at each load, same
# seed and configuration, and writes one combined CSV.
# Usage: netsim/run.sh METRICS.h5 OUT.csv [rps-netsim options...]
#   LOADS="0.3 0.6" (default) sets the web-flow loads.
# Example: netsim/run.sh runs/netsim/p0.h5 runs/netsim/results.csv --duration 0.05
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: netsim/run.sh METRICS.h5 OUT.csv [rps-netsim options...]" >&2
  exit 2
fi
METRICS=$1
OUT=$2
shift 2
BIN=$("$(dirname "$0")/build.sh")
mkdir -p "$(dirname "$OUT")"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
i=0
for load in ${LOADS:-0.3 0.6}; do
  for policy in reliable lossy; do
    "$BIN" --metrics "$METRICS" --policy "$policy" --load "$load" "$@" --output "$TMP/$i.csv"
    i=$((i + 1))
  done
done
# One header: keep every file's comment line, the column names once.
{
  grep -h '^#' "$TMP"/*.csv
  grep -m1 -h '^policy,' "$TMP/0.csv"
  for f in "$TMP"/*.csv; do grep -v -e '^#' -e '^policy,' "$f"; done
} > "$OUT"
echo "wrote $OUT"
