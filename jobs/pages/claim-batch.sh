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
echo "Figures: [claim-batch-loss.png](claim-batch-loss.png), [claim-batch-accuracy.png](claim-batch-accuracy.png) (Δ against n, mean ± 1 SE, dashed: the fit)."
