#!/usr/bin/env bash
# docs/results/claim-batch.md: experiment 1 of issue 23 (n against the global batch: three
# arms at matched samples) and experiment 4 on the MLP (label skew), each lossy run
# paired with its lossless twin (jobs/claim/*.toml). Sweeps skip completed runs, so this
# reruns only what is missing; one run per arm is rerun to show this build reproduces it.
set -euo pipefail
cd "$(dirname "$0")/../.."
ARMS="batch-per-worker global-batch lr-scaled global-batch-skew"
for arm in $ARMS; do
  target/release/rps sweep "jobs/claim/$arm.toml" >&2
done
echo "Runs: \`target/release/rps sweep jobs/claim/ARM.toml\` for ARM in $ARMS (MLP, co-located, in-process ranks, plain SGD, 192,000 samples per run; p = 0 is each seed's lossless twin). Tables: \`target/release/rps report --claim runs/claim/{batch-per-worker,global-batch,lr-scaled,global-batch-skew}/*.h5\`."
echo
echo "Spot checks (\`jobs/claim/spot-check.sh\`: the run at n = 8, p = 0.3, seed 1 of each arm, rerun):"
echo
for check in batch-per-worker:8 global-batch:8 lr-scaled:8 global-batch-skew:5; do
  jobs/claim/spot-check.sh "jobs/claim/${check%:*}.toml" "${check#*:}"
done
echo
files=()
for arm in $ARMS; do files+=(runs/claim/"$arm"/*.h5); done
target/release/rps report --claim "${files[@]}"
target/release/rps plot --claim "${files[@]}" --output-dir runs/claim/figures-batch >&2
cp runs/claim/figures-batch/claim_loss.png docs/results/claim-batch-loss.png
cp runs/claim/figures-batch/claim_accuracy.png docs/results/claim-batch-accuracy.png
echo
echo "How skewed the deal of \`--label-skew 0.1\` is at each n: the mean over workers of the share of a worker's samples in its most frequent class (10 % for i.i.d. shards), as the runs log it; mean over seeds 1–8 (min–max), from one-step runs of the same deal:"
echo
echo "| n | samples per worker | dominant share |"
echo "|---|---|---|"
tmp=$(mktemp -d)
for n in 2 4 8 16 32; do
  for seed in 1 2 3 4 5 6 7 8; do
    RUST_LOG=info target/release/rps train --dataset data/fashion-mnist.h5 --metrics "$tmp/n$n-s$seed.h5" \
      --model mlp --colocated --local-ranks "$n" --batch-size 4 --steps 1 --eval-every 0 \
      --label-skew 0.1 --seed "$seed" 2>&1 | grep -- "--label-skew 0.1:"
  done | sed -E 's/.*: ([0-9]+) samples per worker; on average ([0-9]+) %.*/\1 \2/' |
    awk -v n="$n" '{ s += $2; c++; if (c == 1 || $2 < lo) lo = $2; if ($2 > hi) hi = $2; per = $1 }
      END { printf "| %d | %d | %.1f %% (%d–%d %%) |\n", n, per, s / c, lo, hi }'
done
rm -rf "$tmp"
echo
echo "Figures: [claim-batch-loss.png](claim-batch-loss.png), [claim-batch-accuracy.png](claim-batch-accuracy.png) (Δ against n, mean ± 1 SE, dashed: the fit)."
