#!/usr/bin/env bash
# docs/results/claim-servers.md: experiment 2 of issue 23, servers against workers in
# dedicated mode (jobs/claim/servers.toml: 8 workers, 1–8 servers; jobs/claim/workers.toml:
# 4 servers, 2–32 workers at a global batch of 128), each lossy run paired with its
# lossless twin. Sweeps skip completed runs; one run per arm is rerun as a spot check.
set -euo pipefail
cd "$(dirname "$0")/../.."
for arm in servers workers; do
  target/release/rps sweep "jobs/claim/$arm.toml" >&2
done
echo "Runs: \`target/release/rps sweep jobs/claim/servers.toml\` and \`jobs/claim/workers.toml\` (MLP, dedicated servers, in-process ranks, plain SGD at lr 0.1, 1,500 steps at a global batch of 128; p = 0 is each seed's lossless twin). Tables: \`target/release/rps report --claim runs/claim/{servers,workers}/*.h5\`."
echo
echo "Spot checks (\`jobs/claim/spot-check.sh\`: seed 1 at p = 0.3 with 4 servers and 8 workers, in each arm):"
echo
jobs/claim/spot-check.sh jobs/claim/servers.toml 8
jobs/claim/spot-check.sh jobs/claim/workers.toml 8
echo
files=(runs/claim/servers/*.h5 runs/claim/workers/*.h5)
target/release/rps report --claim "${files[@]}"
target/release/rps plot --claim "${files[@]}" --output-dir runs/claim/figures-servers >&2
cp runs/claim/figures-servers/claim_loss.png docs/results/claim-servers-loss.png
echo
echo "Figure: [claim-servers-loss.png](claim-servers-loss.png) (Δ training loss of x̄ against the count each arm varies, mean ± 1 SE, dashed: the fit)."
