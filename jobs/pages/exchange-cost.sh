#!/usr/bin/env bash
# docs/results/exchange-cost.md: one RPS exchange against MPI_Allreduce and against the
# fixed-order all-reduce of the same buffer, n = 2, 4, 8 (rps bench-exchange).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=runs/pages/exchange-cost
mkdir -p "$OUT"
for n in 2 4 8; do
  mpirun -n $n target/release/rps bench-exchange --repeats 20 --csv "$OUT/exchange-n$n.csv" >"$OUT/n$n.txt"
  cat "$OUT/n$n.txt" >&2
done
target/release/rps plot "$OUT"/exchange-n*.csv --output-dir "$OUT/figures" >&2
cp "$OUT/figures/exchange_cost.png" docs/results/exchange-cost.png
echo "Medians of 20 repeats (each the slowest rank's time, after a barrier); \`mpirun -n N rps bench-exchange --repeats 20\` for N = 2, 4, 8."
echo
echo "| n | mode | bytes | RPS / MPI_Allreduce (p = 0) | fixed-order all-reduce / MPI_Allreduce |"
echo "|---|---|---|---|---|"
for n in 2 4 8; do
  python3 - "$n" "$OUT/n$n.txt" <<'PY'
import re, sys
n, text = sys.argv[1], open(sys.argv[2]).read()
rps = {(m, b): r for m, b, r in re.findall(r"^ratio rps/allreduce mode=(\w+) bytes=(\d+) n=\d+: ([\d.]+)", text, re.M)}
med = {}
for op, m, b, ms in re.findall(r"^bench-exchange op=([\w-]+) mode=(\w+) n=\d+ bytes=(\d+) p=- median_ms=([\d.]+)", text, re.M):
    med[(op, m, b)] = float(ms)
for (m, b), r in rps.items():
    fixed = med[("allreduce-fixed", m, b)] / med[("allreduce", m, b)]
    print(f"| {n} | {m} | {int(b):,} | {r} | {fixed:.3f} |")
PY
done
echo
echo "Figure: [exchange-cost.png](exchange-cost.png)."
