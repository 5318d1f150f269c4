#!/usr/bin/env bash
# docs/results/gemm.md: the fixed-order matrix product against the gemm crate it
# replaced: one product at a time on the models' shapes (bench/gemm), and whole steps of
# both builds alternated (bench/engines.sh against commit 238586b, the last on gemm).
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=238586b
base_dir=target/baseline-$BASE
if [ ! -x "$base_dir/target/release/rps" ]; then
  rm -rf "$base_dir"
  git worktree prune
  git worktree add --detach "$base_dir" "$BASE" >&2
  (cd "$base_dir" && cargo build --release --locked >&2)
fi
echo "### One product at a time (\`bench/gemm.sh 15\`)"
echo
bench/gemm.sh 15
echo
echo "### Whole training steps, alternated (\`bench/engines.sh\`, baseline: $BASE on gemm; candidate: this commit)"
echo
bench/engines.sh "$base_dir/target/release/rps" target/release/rps 5
