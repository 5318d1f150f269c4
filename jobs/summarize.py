#!/usr/bin/env python3
"""Prints a Markdown table of rps metrics files: final test accuracy, mean consensus
distance over the evaluations, drops and misses. Needs h5py (pip install h5py).

Usage: jobs/summarize.py runs/drop-models/*.h5
"""
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


def main(paths):
    head = ["file", "drop model", "final test acc", "mean consensus", "max consensus",
            "dropped/attempted", "missed", "wall s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for p in paths:
        print("| " + " | ".join(row(p)) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
