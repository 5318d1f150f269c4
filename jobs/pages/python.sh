#!/usr/bin/env bash
# docs/results/python.md: the Python face of rps (crates/py).
# 1. What the exchange costs from Python: `rps.Exchange.step` (bench/python_step.py)
#    against the native exchange (`rps bench-exchange`) on the reference CNN's buffer,
#    4 co-located ranks, p = 0 and 0.1, 5 interleaved rounds.
# 2. PyTorch models trained under RPS from Python (jobs/python-pytorch.sh): the CNN and
#    a row-by-row LSTM, RPS at p = 0 and 0.1 against the all-reduce baseline, paired
#    seeds (5 for the CNN, 8 for the LSTM).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=runs/pages/python
mkdir -p "$OUT"
scripts/python.sh >&2
source scripts/env.sh
# 5 paired seeds of the CNN (80 s a run here), 8 of the LSTM (20 s a run).
SEEDS="1 2 3 4 5" MODELS=cnn jobs/python-pytorch.sh "$OUT" >&2
SEEDS="1 2 3 4 5 6 7 8" MODELS=lstm jobs/python-pytorch.sh "$OUT" >&2
PY=target/python-torch/bin/python

# The buffer of the CNN as the runs above trained it (4 bytes per parameter).
params=$("$PY" -c 'import h5py, sys; print(int(h5py.File(sys.argv[1], "r").attrs["num_params"]))' "$OUT/cnn-rps-p0-s1.h5")
bytes=$((4 * params))
for round in 1 2 3 4 5; do
  mpirun -n 4 target/release/rps bench-exchange --sizes "$bytes" --modes colocated \
    --drop-rates 0,0.1 --repeats 20 >"$OUT/native-r$round.txt"
  mpirun -n 4 target/python/bin/python bench/python_step.py --bytes "$bytes" \
    --drop-rates 0,0.1 --repeats 20 >"$OUT/python-r$round.txt"
  echo "step-cost round $round done" >&2
done
echo "## The exchange's cost from Python"
echo
echo "The reference CNN's buffer ($params parameters, $bytes bytes), 4 co-located ranks under \`mpirun -n 4\`: one step of \`rps.Exchange.step\` from Python (\`bench/python_step.py --bytes $bytes --drop-rates 0,0.1 --repeats 20\`) against the native exchange (\`rps bench-exchange --sizes $bytes --modes colocated --drop-rates 0,0.1 --repeats 20\`), alternated over 5 rounds. Each time is the median over 20 repeats of the slowest rank's time after a barrier; cells are the median over rounds [min–max]. *inside* is the native exchange's own time within the Python step (the \`comm_s\` it returns, slowest rank); the rest is the Python face (the call, the buffer, the ranks' check of their buffers). Python / native compares two programs (\`rps bench-exchange\` times all-reduces between its exchanges, which leaves other data in the caches); Python / inside compares the same steps of one run."
echo
echo "| p | native ms | Python ms | of which inside ms | Python / native | Python / inside |"
echo "|---|---|---|---|---|---|"
python3 - "$OUT" <<'PY'
import re, statistics, sys
out = sys.argv[1]
def cell(v, f="{:.3f}"):
    return f"{f.format(statistics.median(v))} [{f.format(min(v))}–{f.format(max(v))}]"
native, python, inside, ratio, face = {}, {}, {}, {}, {}
for r in range(1, 6):
    n = open(f"{out}/native-r{r}.txt").read()
    p = open(f"{out}/python-r{r}.txt").read()
    nat = {float(a): float(b) for a, b in re.findall(r"^bench-exchange op=rps mode=colocated n=4 bytes=\d+ p=([\d.]+) median_ms=([\d.]+)", n, re.M)}
    for a, b, c in re.findall(r"^python-step n=4 bytes=\d+ p=([\d.]+) median_ms=([\d.]+) .*exchange_median_ms=([\d.]+)", p, re.M):
        a = float(a)
        native.setdefault(a, []).append(nat[a])
        python.setdefault(a, []).append(float(b))
        inside.setdefault(a, []).append(float(c))
        ratio.setdefault(a, []).append(float(b) / nat[a])
        face.setdefault(a, []).append(float(b) / float(c))
for a in sorted(ratio):
    print(f"| {a:g} | {cell(native[a])} | {cell(python[a])} | {cell(inside[a])} | {cell(ratio[a])} | {cell(face[a])} |")
PY
echo
echo "## PyTorch models trained under RPS from Python"
echo
echo "\`SEEDS=\"1 2 3 4 5\" MODELS=cnn jobs/python-pytorch.sh\` and \`SEEDS=\"1 2 3 4 5 6 7 8\" MODELS=lstm jobs/python-pytorch.sh\`: Fashion-MNIST, \`mpirun -n 4\`, co-located, batch 32 per worker, SGD (lr 0.05, momentum 0.9), one epoch of each worker's shard (468 steps), evaluated every 117 steps on the averaged model (\`examples/pytorch_rps.py\`). Per seed every configuration starts from the same model and draws the same minibatches. Final test accuracy, mean ± standard deviation over the seeds, and the paired differences per seed (mean ± standard error of the mean difference; a t statistic is mean/SE):"
echo
"$PY" - "$OUT" <<'PY'
import statistics, sys
import h5py
out = sys.argv[1]
SEEDS = {"cnn": [1, 2, 3, 4, 5], "lstm": [1, 2, 3, 4, 5, 6, 7, 8]}
def acc(model, name, s):
    with h5py.File(f"{out}/{model}-{name}-s{s}.h5", "r") as f:
        assert f.attrs["status"] == "completed", (model, name, s)
        return float(f.attrs["final_test_accuracy"]), float(f.attrs["wall_time_s"])
def ms(v):
    return f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}"
def se(v):
    return f"{statistics.mean(v):+.4f} ± {statistics.stdev(v) / len(v) ** 0.5:.4f}"
print("| model | seeds | all-reduce | RPS p = 0 | RPS p = 0.1 | RPS p = 0 − all-reduce | RPS p = 0.1 − RPS p = 0 | wall s (all-reduce / p = 0 / p = 0.1) |")
print("|---|---|---|---|---|---|---|---|")
for model in ("cnn", "lstm"):
    seeds = SEEDS[model]
    a = {n: [acc(model, n, s) for s in seeds] for n in ("allreduce", "rps-p0", "rps-p0.1")}
    x = {n: [v[0] for v in a[n]] for n in a}
    w = {n: statistics.mean(v[1] for v in a[n]) for n in a}
    d0 = [p - q for p, q in zip(x["rps-p0"], x["allreduce"])]
    d1 = [p - q for p, q in zip(x["rps-p0.1"], x["rps-p0"])]
    print(f"| {model} | {len(seeds)} | {ms(x['allreduce'])} | {ms(x['rps-p0'])} | {ms(x['rps-p0.1'])} | {se(d0)} | {se(d1)} | "
          f"{w['allreduce']:.0f} / {w['rps-p0']:.0f} / {w['rps-p0.1']:.0f} |")
print()
print("Per seed (all-reduce, RPS p = 0, RPS p = 0.1):")
print()
for model in ("cnn", "lstm"):
    for s in SEEDS[model]:
        v = [acc(model, n, s)[0] for n in ("allreduce", "rps-p0", "rps-p0.1")]
        print(f"- {model}, seed {s}: {v[0]:.4f}, {v[1]:.4f}, {v[2]:.4f}")
PY
echo
echo "\`rps report\` of the same files:"
echo
target/release/rps report "$OUT"/*.h5
