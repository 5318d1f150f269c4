#!/usr/bin/env bash
# docs/results/sweep-colocated.md: p × n co-located, 3 seeds (jobs/sweep-colocated.toml),
# summarized by rps report; the accuracy figure.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf runs/sweep-colocated
target/release/rps sweep jobs/sweep-colocated.toml >&2
echo "54 runs: co-located n ∈ {2, 4, 8} × p ∈ {0, 0.01, 0.05, 0.1, 0.2, 0.3} × seeds 1–3, batch 32, 150 steps (\`rps sweep jobs/sweep-colocated.toml\`); mean ± std over seeds:"
echo
target/release/rps report runs/sweep-colocated/*.h5
target/release/rps plot runs/sweep-colocated/*.h5 --output-dir runs/sweep-colocated/figures --link-maps 0 >&2
cp runs/sweep-colocated/figures/accuracy_vs_drop.png docs/results/sweep-colocated-accuracy.png
echo
echo "Figure: [sweep-colocated-accuracy.png](sweep-colocated-accuracy.png)."
