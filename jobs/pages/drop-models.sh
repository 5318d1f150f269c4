#!/usr/bin/env bash
# docs/results/drop-models.md: four loss patterns at the same 10 % mean, 3 seeds
# (jobs/drop-models.sh), summarized by rps report; the consensus figure.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=runs/pages/drop-models
rm -rf "$OUT"
SEEDS="1 2 3" jobs/drop-models.sh "$OUT" >&2
echo "Co-located, 4 ranks, batch 32, one epoch, seeds 1–3 (\`SEEDS=\"1 2 3\" jobs/drop-models.sh\`); mean ± std over seeds:"
echo
target/release/rps report "$OUT"/*.h5
target/release/rps plot "$OUT"/*.h5 --output-dir "$OUT/figures" --link-maps 1 >&2
cp "$OUT/figures/consensus.png" docs/results/drop-models-consensus.png
echo
echo "Figure: [drop-models-consensus.png](drop-models-consensus.png) (consensus distance at each evaluation)."
