#!/usr/bin/env python3
"""Uplink loss a run saw, in all and once the loss budget has converged (from step 11).

Usage: python3 jobs/steady-loss.py METRICS.h5...   (needs h5py: pip install h5py)
Used for docs/results/testbed-mtu.md with the runs of jobs/testbed-budget.sh.
"""
import sys

import h5py

for path in sys.argv[1:]:
    with h5py.File(path, "r") as h:
        col = lambda name: h["comm/" + name][:]
        sent = col("packets_up") - col("packets_dropped_up")
        missed = col("packets_missed_up")
        per_step = [round(float(m / s), 3) for m, s in zip(missed, sent)]
        print(
            f"{path.split('/')[-1]}: uplink lost {missed.sum() / sent.sum():.3f} in all, "
            f"{missed[10:].sum() / sent[10:].sum():.3f} from step 11; "
            f"steps 1-8: {per_step[:8]}"
        )
