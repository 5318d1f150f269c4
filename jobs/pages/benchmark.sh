#!/usr/bin/env bash
# docs/results/benchmark.md: one rank's step against PyTorch on one thread, rps and
# PyTorch alternated over 5 rounds (rps bench --pytorch), both models.
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "| model | batch | rps step (median of 5 rounds, range) | PyTorch step | **ratio rps/PyTorch** (range) | peak RSS rps / PyTorch |"
echo "|---|---|---|---|---|---|"
logs=()
for model in cnn resnet20; do
  log=$(mktemp)
  target/release/rps bench --model "$model" --pytorch --rounds 5 >"$log"
  cat "$log" >&2
  python3 - "$model" "$log" <<'PY'
import re, sys
model, text = sys.argv[1], open(sys.argv[2]).read()
for b in ("32", "128"):
    rps = re.search(rf"^rps batch={b}: median ([\d.]+) \(range ([\d.]+)–([\d.]+)\) ms.*peak RSS ([\d.]+ MiB)", text, re.M)
    pt = re.search(rf"^pytorch batch={b}: median ([\d.]+) \(range ([\d.]+)–([\d.]+)\) ms.*peak RSS ([\d.]+ MiB)", text, re.M)
    ra = re.search(rf"^ratio rps/pytorch batch={b}: ([\d.]+) \(median of \d+ rounds, range ([\d.]+)–([\d.]+)\)", text, re.M)
    name = {"cnn": "CNN", "resnet20": "ResNet-20"}[model]
    print(f"| {name} | {b} | {rps[1]} ms ({rps[2]}–{rps[3]}) | {pt[1]} ms ({pt[2]}–{pt[3]}) | **{ra[1]}** ({ra[2]}–{ra[3]}) | {rps[4]} / {pt[4]} |")
PY
  logs+=("$log")
done
echo
echo "The two invocations' machine lines and last lines, verbatim:"
echo
echo '```'
for log in "${logs[@]}"; do
  grep -E '^(machine|build|reference|matrix-product peak|load average|ratio)' "$log"
  rm -f "$log"
done
echo '```'
