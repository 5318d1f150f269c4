#!/usr/bin/env bash
# What a reliable transport costs when the network really loses packets. On the
# namespace testbed (testbed/testbed.sh: 3 hosts, jumbo frames, TCP CUBIC, real i.i.d.
# packet loss on the bridge), Fashion-MNIST, co-located mode, one rank per host, batch
# 32, $STEPS steps, seed 1, for each loss rate in $LOSSES:
#   allreduce-tcp   all-reduce SGD over MPI/TCP (the reliable baseline)
#   rps-tcp         RPS over MPI/TCP (reliable, retransmits what the network loses)
#   rps-udp         RPS over UDP datagrams, deadline 200 ms (what is lost stays lost)
# and, with TCP's minimum retransmission timeout lowered to 5 ms on every route (what a
# careful operator tries first), allreduce-tcp-rto5 and rps-tcp-rto5.
# Usage: jobs/testbed.sh [OUTDIR]   (default runs/testbed; needs root)
#        then: rps report --testbed OUTDIR/index.csv ; rps plot --testbed OUTDIR/index.csv
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
DATA=$PWD/data/fashion-mnist.h5
datasets/fashion-mnist.sh "$DATA"
OUT=${1:-runs/testbed}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
STEPS=${STEPS:-150}
LOSSES=${LOSSES:-0 0.001 0.01 0.05}
export TESTBED_NAME=rpsjob
# The runs use a copy of the binary, so rebuilding rps meanwhile cannot change them.
cp target/release/rps "$OUT/rps"
INDEX=$OUT/index.csv
[ -e "$INDEX" ] || echo "variant,loss,file" > "$INDEX"
trap 'testbed/testbed.sh down' EXIT

run() {
  local variant=$1 loss=$2; shift 2
  local file=$OUT/$variant-loss$loss.h5
  if grep -q ",$file$" "$INDEX" 2>/dev/null; then
    echo "== $variant at loss $loss: done before, skipped"
    return
  fi
  echo "== $variant at loss $loss"
  testbed/testbed.sh mpirun "$OUT/rps" train --dataset "$DATA" --metrics "$file" --force \
    --colocated --steps "$STEPS" --eval-every 0 --seed 1 "$@"
  echo "$variant,$loss,$file" >> "$INDEX"
}

for loss in $LOSSES; do
  testbed/testbed.sh up 3 --loss "$loss" --mtu 9000
  run allreduce-tcp "$loss" --algorithm allreduce
  run rps-tcp "$loss"
  run rps-udp "$loss" --transport udp --detect deadline --recv-timeout-ms 200 \
    --udp-subnet 10.99.0.0/24 --udp-mtu 9000
  testbed/testbed.sh down
  testbed/testbed.sh up 3 --loss "$loss" --mtu 9000 --rto-min 5
  run allreduce-tcp-rto5 "$loss" --algorithm allreduce
  run rps-tcp-rto5 "$loss"
  testbed/testbed.sh down
done
echo "index of the runs: $INDEX"
