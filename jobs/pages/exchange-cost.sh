#!/usr/bin/env bash
# docs/results/exchange-cost.md: one RPS exchange against MPI_Allreduce and against the
# fixed-order all-reduce of the same buffer, n = 2, 4, 8 (rps bench-exchange); then the
# pipelined exchange's chunk size, three sizes in interleaved rounds at 10^6 and 10^7 bytes.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=runs/pages/exchange-cost
mkdir -p "$OUT"
# 3 rounds, n = 2, 4, 8 interleaved; the figure draws the first round's CSV.
for round in 1 2 3; do
  for n in 2 4 8; do
    csv=()
    [ "$round" = 1 ] && csv=(--csv "$OUT/exchange-n$n.csv")
    mpirun -n $n target/release/rps bench-exchange --repeats 20 --chunk-bytes 1048576 "${csv[@]}" >"$OUT/n$n-r$round.txt"
    cat "$OUT/n$n-r$round.txt" >&2
  done
done
target/release/rps plot "$OUT"/exchange-n*.csv --output-dir "$OUT/figures" >&2
cp "$OUT/figures/exchange_cost.png" docs/results/exchange-cost.png
echo "Median of 3 interleaved rounds [min–max]; each round's time a median of 20 repeats (each the slowest rank's time, after a barrier); \`mpirun -n N rps bench-exchange --repeats 20 --chunk-bytes 1048576\` for N = 2, 4, 8: RPS messages pipelined in chunks of 1 MiB (not the default; the table after this one compares them with whole messages)."
echo
echo "| n | mode | bytes | RPS / MPI_Allreduce (p = 0) | fixed-order all-reduce / MPI_Allreduce |"
echo "|---|---|---|---|---|"
python3 - "$OUT" <<'PY'
import re, statistics, sys
out = sys.argv[1]
def cell(v):
    return f"{statistics.median(v):.3f} [{min(v):.3f}–{max(v):.3f}]"
for n in (2, 4, 8):
    rps, fixed = {}, {}
    for r in (1, 2, 3):
        text = open(f"{out}/n{n}-r{r}.txt").read()
        for m, b, x in re.findall(r"^ratio rps/allreduce mode=(\w+) bytes=(\d+) n=\d+: ([\d.]+)", text, re.M):
            rps.setdefault((m, int(b)), []).append(float(x))
        med = {}
        for op, m, b, ms in re.findall(r"^bench-exchange op=([\w-]+) mode=(\w+) n=\d+ bytes=(\d+) p=- median_ms=([\d.]+)", text, re.M):
            med[(op, m, int(b))] = float(ms)
        for (m, b) in rps:
            if ("allreduce", m, b) in med:
                fixed.setdefault((m, b), []).append(med[("allreduce-fixed", m, b)] / med[("allreduce", m, b)])
    for (m, b) in sorted(rps, key=lambda k: (k[1], k[0] != "dedicated")):
        print(f"| {n} | {m} | {b:,} | {cell(rps[(m, b)])} | {cell(fixed[(m, b)])} |")
PY
echo
echo "Figure: [exchange-cost.png](exchange-cost.png)."
# The chunk size (--chunk-bytes): 64 KiB, 1 MiB, and one chunk per message (1 GiB, more
# than any block here: what the default does), in 3 interleaved rounds so that a change in the
# machine's load touches all three alike.
CHUNKS="65536 1048576 1073741824"
for round in 1 2 3; do
  for n in 2 4 8; do
    for c in $CHUNKS; do
      mpirun -n $n target/release/rps bench-exchange --sizes 1e6,1e7 --drop-rates 0 \
        --repeats 20 --chunk-bytes "$c" >"$OUT/chunk-n$n-c$c-r$round.txt"
    done
  done
done
echo
echo "RPS / MPI_Allreduce at p = 0 by chunk size: median of 3 interleaved rounds [min–max], each round's ratio a median of 20 repeats; \`mpirun -n N rps bench-exchange --sizes 1e6,1e7 --drop-rates 0 --repeats 20 --chunk-bytes C\`."
echo
echo "| n | mode | bytes | 64 KiB chunks | 1 MiB chunks | one chunk (the default: not pipelined) |"
echo "|---|---|---|---|---|---|"
python3 - "$OUT" $CHUNKS <<'PY'
import re, statistics, sys
out, chunks = sys.argv[1], sys.argv[2:]
cells = {}
for n in (2, 4, 8):
    for c in chunks:
        for r in (1, 2, 3):
            text = open(f"{out}/chunk-n{n}-c{c}-r{r}.txt").read()
            for m, b, x in re.findall(r"^ratio rps/allreduce mode=(\w+) bytes=(\d+) n=\d+: ([\d.]+)", text, re.M):
                cells.setdefault((n, m, int(b)), {}).setdefault(c, []).append(float(x))
for (n, m, b), per in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
    row = [f"{statistics.median(v):.2f} [{min(v):.2f}–{max(v):.2f}]" for v in (per[c] for c in chunks)]
    print(f"| {n} | {m} | {b:,} | " + " | ".join(row) + " |")
PY
