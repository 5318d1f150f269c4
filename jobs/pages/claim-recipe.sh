#!/usr/bin/env bash
# docs/results/claim-recipe.md: experiment 3 of issue 23, the practitioner's recipe (CNN,
# Fashion-MNIST, momentum, weight decay, warm-up and a step schedule, 2 epochs;
# jobs/claim/recipe-cnn.toml) and its label-skewed key cells (jobs/claim/recipe-cnn-skew.toml),
# each lossy run paired with its lossless twin. The full grid is about 2 h 40 min on two
# cores: with RECIPE_PART=1 this runs only what is already there (the sweeps are run in
# parts by hand, `rps sweep --index I`; they skip completed runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=0.88
if [ -z "${RECIPE_PART:-}" ]; then
  target/release/rps sweep jobs/claim/recipe-cnn.toml >&2
  target/release/rps sweep jobs/claim/recipe-cnn-skew.toml >&2
fi
done_runs=$(ls runs/claim/recipe-cnn/*.h5 | wc -l)
echo "Runs: \`target/release/rps sweep jobs/claim/recipe-cnn.toml\` ($done_runs of its $(target/release/rps sweep jobs/claim/recipe-cnn.toml --list | wc -l) runs present) and \`jobs/claim/recipe-cnn-skew.toml\`. Tables: \`target/release/rps report --claim --target-accuracy $TARGET runs/claim/recipe-cnn*/*.h5\` (the target was fixed before the runs)."
echo
echo "Spot check (\`jobs/claim/spot-check.sh\`: n = 2, p = 0, seed 1, rerun):"
echo
jobs/claim/spot-check.sh jobs/claim/recipe-cnn.toml 0
echo
files=(runs/claim/recipe-cnn/*.h5)
[ -d runs/claim/recipe-cnn-skew ] && files+=(runs/claim/recipe-cnn-skew/*.h5)
target/release/rps report --claim --target-accuracy "$TARGET" "${files[@]}"
target/release/rps plot --claim "${files[@]}" --output-dir runs/claim/figures-recipe >&2
cp runs/claim/figures-recipe/claim_accuracy.png docs/results/claim-recipe-accuracy.png
echo
echo "Figure: [claim-recipe-accuracy.png](claim-recipe-accuracy.png) (Δ test accuracy against n, mean ± 1 SE, dashed: the fit)."
