#!/usr/bin/env bash
# docs/results/winograd.md: Winograd against im2col on the current engine. Per layer, the
# thread CPU time of each algorithm (the ignored test `time_layers`); the numerical error
# of each algorithm against an f64 direct convolution (the tests that assert it); whole
# training steps with every convolution on im2col (RPS_CONV=im2col) against the default
# choice, the two alternated over 5 rounds (bench/engines.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "### Per layer, batch 32 (\`REPS=11 cargo test -p rps-nn --release time_layers -- --ignored --nocapture\`)"
echo
echo "Thread CPU time, medians of 11 repetitions, the algorithms interleaved; dX is full"
echo "backward minus backward without the input gradient; step is forward + dW + dX."
echo
echo '```'
REPS=11 cargo test -p rps-nn --release --locked time_layers -- --ignored --nocapture 2>&1 >/dev/null |
  grep -E ': fwd '
echo '```'
echo
echo "### Numerical error (\`cargo test -p rps-nn --release winograd -- --nocapture\`)"
echo
echo "Worst max|err| / max|ref| against a direct convolution in f64, over the geometries of"
echo "each test:"
echo
echo '```'
cargo test -p rps-nn --release --locked winograd -- --nocapture --test-threads 1 2>&1 >/dev/null |
  grep -E 'max\|err\||^im2col [0-9]x[0-9]:'
echo '```'
echo
# RPS_CONV is read once per process: two wrappers of the same binary, alternated.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for v in im2col auto; do
  printf '#!/bin/sh\nRPS_CONV=%s exec %s "$@"\n' "$v" "$PWD/target/release/rps" >"$tmp/rps-$v"
  chmod +x "$tmp/rps-$v"
done
echo "### Whole training steps (\`bench/engines.sh\`: baseline RPS_CONV=im2col, candidate the default choice)"
echo
bench/engines.sh "$tmp/rps-im2col" "$tmp/rps-auto" 5
