#!/usr/bin/env bash
# The loss budget (--loss-target) under incast on the namespace testbed: 1 server + 4
# workers (5 hosts, one rank each), every host's port limited to $RATE (tbf, a queue
# of 100 packets), MTU 1,500, no imposed loss: what is lost is congestion. The MLP
# (50,890 parameters, 139 datagrams per copy), $STEPS steps, seed 1, deadline 1 s:
#   blast         no budget: every worker sends its copy at once, as fast as it can
#   budget-T      --loss-target T --udp-link-rate $LINK (each link starts at a quarter of
#                 it, the share of 5 ranks, docs/concepts.md)
# Usage: jobs/testbed-budget.sh [OUTDIR]   (default runs/testbed-budget; needs root)
#        then: rps report --testbed OUTDIR/index.csv
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
DATA=$PWD/data/fashion-mnist.h5
datasets/fashion-mnist.sh "$DATA"
OUT=${1:-runs/testbed-budget}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
STEPS=${STEPS:-40}
RATE=${RATE:-20mbit}
LINK=${LINK:-20M}
TARGETS=${TARGETS:-0.02 0.05 0.1}
export TESTBED_NAME=rpsbudget TESTBED_NET=10.94.0
cp target/release/rps "$OUT/rps"
INDEX=$OUT/index.csv
[ -e "$INDEX" ] || echo "variant,loss,file" > "$INDEX"
trap 'testbed/testbed.sh down' EXIT
testbed/testbed.sh down >/dev/null 2>&1 || true
testbed/testbed.sh up 5 --rate "$RATE"

run() {
  local variant=$1; shift
  local file=$OUT/$variant.h5
  if grep -q ",$file$" "$INDEX" 2>/dev/null; then
    echo "== $variant: done before, skipped"
    return
  fi
  echo "== $variant"
  testbed/testbed.sh mpirun "$OUT/rps" train --dataset "$DATA" --metrics "$file" --force \
    --model mlp --servers 1 --steps "$STEPS" --eval-every 0 --seed 1 \
    --transport udp --detect deadline --recv-timeout-ms 1000 \
    --udp-subnet "$TESTBED_NET.0/24" "$@"
  echo "$variant,0,$file" >> "$INDEX"
}

run blast
for t in $TARGETS; do
  run "budget-$t" --loss-target "$t" --udp-link-rate "$LINK"
done
echo "index of the runs: $INDEX"
