#!/usr/bin/env bash
# One rank's step time under two builds of rps, alternated so that a slow moment of the
# machine falls on both:
#   bench/engines.sh BASELINE_RPS CANDIDATE_RPS [ROUNDS]      (default 5 rounds)
# Each round runs `rps bench` (one round of 20 steps at batch 32 and 128) for the CNN and
# ResNet-20 with the baseline, then with the candidate. Prints a Markdown table: per
# model and batch, the median over rounds of each build's step time and of the ratio
# candidate/baseline, with its range; then the raw per-round lines.
set -euo pipefail
base=${1:?usage: bench/engines.sh BASELINE_RPS CANDIDATE_RPS [ROUNDS]}
cand=${2:?usage: bench/engines.sh BASELINE_RPS CANDIDATE_RPS [ROUNDS]}
rounds=${3:-5}
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT
for r in $(seq 1 "$rounds"); do
  for model in cnn resnet20; do
    for which in base cand; do
      bin=$base; [ "$which" = cand ] && bin=$cand
      # Old builds lack --rounds: one invocation is one round either way.
      rounds_flag=""; "$bin" bench --help | grep -q -- '--rounds' && rounds_flag="--rounds 1"
      "$bin" bench --model "$model" $rounds_flag 2>/dev/null |
        awk -v r="$r" -v m="$model" -v w="$which" '
          /^rps batch=/ { split($2, b, "="); sub(":", "", b[2]); print r, m, b[2], w, $4 }' >>"$raw"
    done
  done
  echo "round $r/$rounds done" >&2
done
echo "| model | batch | baseline ms | candidate ms | candidate/baseline (range over $rounds rounds) |"
echo "|---|---|---|---|---|"
python3 - "$raw" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
keys = sorted({(m, int(b)) for _, m, b, _, _ in rows}, key=lambda k: (k[0] != "cnn", k[1]))
for m, b in keys:
    per = {}
    for r, mm, bb, w, ms in rows:
        if mm == m and int(bb) == b:
            per.setdefault(r, {})[w] = float(ms)
    ratios = [v["cand"] / v["base"] for v in per.values() if len(v) == 2]
    base = statistics.median(v["base"] for v in per.values())
    cand = statistics.median(v["cand"] for v in per.values())
    print(f"| {m} | {b} | {base:.1f} | {cand:.1f} | **{statistics.median(ratios):.3f}** ({min(ratios):.3f}–{max(ratios):.3f}) |")
EOF
echo
echo '```'
cat "$raw"
echo '```'
