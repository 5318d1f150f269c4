#!/usr/bin/env bash
# RPS over UDP at the ordinary MTU (1,500) against jumbo frames (9,000) on the namespace
# testbed (testbed/testbed.sh; TCP CUBIC, real i.i.d. packet loss on the bridge), with
# the transport's segmentation and receive offloads (UDP GSO/GRO) and without them
# (RPS_UDP_OFFLOAD=off). Fashion-MNIST, the reference CNN, batch 32, $STEPS steps, seed
# 1, deadline 200 ms, for each loss rate in $LOSSES, in two setups:
#   d-…  dedicated: 1 server + 4 workers, one rank per host (5 hosts)
#   c-…  co-located: 3 ranks, one per host (3 hosts; jobs/testbed.sh's setup)
# Usage: jobs/testbed-mtu.sh [OUTDIR]   (default runs/testbed-mtu; needs root)
#        then: rps report --testbed OUTDIR/index.csv
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
DATA=$PWD/data/fashion-mnist.h5
datasets/fashion-mnist.sh "$DATA"
OUT=${1:-runs/testbed-mtu}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
STEPS=${STEPS:-60}
LOSSES=${LOSSES:-0 0.05}
export TESTBED_NAME=rpsmtu TESTBED_NET=10.95.0
# The runs use a copy of the binary, so rebuilding rps meanwhile cannot change them.
cp target/release/rps "$OUT/rps"
INDEX=$OUT/index.csv
[ -e "$INDEX" ] || echo "variant,loss,file" > "$INDEX"
trap 'testbed/testbed.sh down' EXIT

run() {
  local variant=$1 loss=$2 mtu=$3 offload=$4; shift 4
  local file=$OUT/$variant-loss$loss.h5
  if grep -q ",$file$" "$INDEX" 2>/dev/null; then
    echo "== $variant at loss $loss: done before, skipped"
    return
  fi
  echo "== $variant at loss $loss"
  RPS_UDP_OFFLOAD=$offload testbed/testbed.sh mpirun -x RPS_UDP_OFFLOAD "$OUT/rps" train \
    --dataset "$DATA" --metrics "$file" --force --steps "$STEPS" --eval-every 0 --seed 1 \
    --transport udp --detect deadline --recv-timeout-ms 200 \
    --udp-subnet "$TESTBED_NET.0/24" --udp-mtu "$mtu" "$@"
  echo "$variant,$loss,$file" >> "$INDEX"
}

for loss in $LOSSES; do
  for mtu in 9000 1500; do
    testbed/testbed.sh up 5 --loss "$loss" --mtu "$mtu"
    run "d-mtu$mtu" "$loss" "$mtu" on --servers 1
    [ "$mtu" = 9000 ] || run "d-mtu$mtu-no-offload" "$loss" "$mtu" off --servers 1
    testbed/testbed.sh down
    testbed/testbed.sh up 3 --loss "$loss" --mtu "$mtu"
    run "c-mtu$mtu" "$loss" "$mtu" on --colocated
    [ "$mtu" = 9000 ] || run "c-mtu$mtu-no-offload" "$loss" "$mtu" off --colocated
    testbed/testbed.sh down
  done
done
echo "index of the runs: $INDEX"
