#!/usr/bin/env python3
"""Prints a Markdown table of rps metrics files: final test accuracy, mean consensus
distance over the evaluations, drops and misses. Needs h5py (pip install h5py).

Usage: jobs/summarize.py runs/drop-models/*.h5
       jobs/summarize.py --by-prefix runs/drop-models/*.h5   (mean ± std over seeds,
       grouping files by their name up to "-s<seed>.h5")
"""
import os
import re
import statistics
import sys

import h5py


def row(path):
    with h5py.File(path, "r") as f:
        a = f.attrs
        ev = f["eval"]
        comm = f["comm"]
        consensus = ev["consensus_distance"][:]
        dropped = int(comm["packets_dropped_up"][:].sum() + comm["packets_dropped_down"][:].sum())
        attempted = int(comm["packets_up"][:].sum() + comm["packets_down"][:].sum())
        missed = int(comm["missed_up"][:].sum() + comm["missed_down"][:].sum())
        return [
            path,
            str(a["drop_model_description"]),
            f"{a['final_test_accuracy']:.4f}",
            f"{consensus.mean():.3e}",
            f"{consensus.max():.3e}",
            f"{dropped}/{attempted} ({dropped / max(attempted, 1):.3f})",
            str(missed),
            f"{a['wall_time_s']:.1f}",
        ]


def grouped(paths):
    groups = {}
    for p in paths:
        name = re.sub(r"-s\d+\.h5$", "", os.path.basename(p))
        groups.setdefault(name, []).append(p)
    print("| run | seeds | final test accuracy | mean consensus distance | dropped fraction |")
    print("|---|---|---|---|---|")
    for name, files in groups.items():
        acc, cons, frac = [], [], []
        for p in files:
            with h5py.File(p, "r") as f:
                acc.append(float(f.attrs["final_test_accuracy"]))
                cons.append(float(f["eval/consensus_distance"][:].mean()))
                c = f["comm"]
                d = c["packets_dropped_up"][:].sum() + c["packets_dropped_down"][:].sum()
                a = c["packets_up"][:].sum() + c["packets_down"][:].sum()
                frac.append(d / max(a, 1))
        sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0
        print(f"| {name} | {len(files)} | {statistics.mean(acc):.4f} ± {sd(acc):.4f} | "
              f"{statistics.mean(cons):.2e} ± {sd(cons):.1e} | {statistics.mean(frac):.3f} |")


def main(paths):
    if paths and paths[0] == "--by-prefix":
        grouped(paths[1:])
        return
    head = ["file", "drop model", "final test acc", "mean consensus", "max consensus",
            "dropped/attempted", "missed", "wall s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for p in paths:
        print("| " + " | ".join(row(p)) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
