#!/usr/bin/env bash
# Runs the datacenter simulation for each policy at each load and seed, same configuration,
# and writes one combined CSV.
# Usage: netsim/run.sh METRICS.h5 OUT.csv [rps-netsim options...]
#   LOADS="0.3 0.6" (default) sets the web-flow loads;
#   SEEDS="1" (default) the seeds, e.g. SEEDS="1 2 3";
#   POLICIES="reliable lossy" (default) the policies: reliable, lossy, or lossy-target-T
#     (--policy lossy --loss-target T);
#   PARALLEL=1 (default) how many simulations run at once;
#   TRACE_DIR=DIR writes each lossy run's drop trace to DIR/POLICY-LOAD-SEED.h5.
# Example: SEEDS="1 2 3" POLICIES="reliable lossy-target-0.05" netsim/run.sh runs/netsim/p0.h5 \
#   runs/netsim/results.csv --duration 1 --warmup 0.25
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: netsim/run.sh METRICS.h5 OUT.csv [rps-netsim options...]" >&2
  exit 2
fi
METRICS=$1
OUT=$2
shift 2
BIN=$("$(dirname "$0")/build.sh")
# ns-3 spends about a quarter of its time in malloc: tcmalloc (Debian's
# libtcmalloc-minimal4), where installed, makes a run about 25 % faster.
for lib in /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/*/libtcmalloc_minimal.so.4; do
  if [ -e "$lib" ]; then
    export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
    break
  fi
done
mkdir -p "$(dirname "$OUT")"
[ -z "${TRACE_DIR:-}" ] || mkdir -p "$TRACE_DIR"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
run_one() { # INDEX LOAD POLICY SEED [options...]
  local i=$1 load=$2 policy=$3 seed=$4
  shift 4
  local args=(--policy "$policy")
  case $policy in
    reliable | lossy) ;;
    lossy-target-*) args=(--policy lossy --loss-target "${policy#lossy-target-}") ;;
    *)
      echo "netsim/run.sh: policy $policy: expected reliable, lossy or lossy-target-T" >&2
      return 2
      ;;
  esac
  if [ -n "${TRACE_DIR:-}" ] && [ "$policy" != reliable ]; then
    args+=(--trace-out "$TRACE_DIR/$policy-$load-$seed.h5")
  fi
  "$BIN" --metrics "$METRICS" "${args[@]}" --load "$load" --seed "$seed" "$@" \
    --output "$TMP/$i.csv.part"
  mv "$TMP/$i.csv.part" "$TMP/$i.csv"
}
i=0
for seed in ${SEEDS:-1}; do
  for load in ${LOADS:-0.3 0.6}; do
    for policy in ${POLICIES:-reliable lossy}; do
      run_one "$(printf %04d $i)" "$load" "$policy" "$seed" "$@" &
      i=$((i + 1))
      while [ "$(jobs -rp | wc -l)" -ge "${PARALLEL:-1}" ]; do
        wait -n || exit 1
      done
    done
  done
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do
  wait -n || exit 1
done
[ "$(find "$TMP" -name '*.csv' | wc -l)" -eq "$i" ] || {
  echo "netsim/run.sh: a simulation failed" >&2
  exit 1
}
# One header: keep every file's comment line, the column names once.
{
  grep -h '^#' "$TMP"/*.csv
  grep -m1 -h '^policy,' "$TMP/0000.csv"
  for f in "$TMP"/*.csv; do grep -v -e '^#' -e '^policy,' "$f"; done
} > "$OUT"
echo "wrote $OUT"
