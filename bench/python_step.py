#!/usr/bin/env python3
"""The cost of the exchange from Python: `rps.Exchange.step` timed the way
`rps bench-exchange` times the native exchange (every repeat starts after a barrier and
counts as long as its slowest rank took), on a buffer of the same size.

    mpirun -n 4 python bench/python_step.py --bytes 6653480 --drop-rates 0,0.1

Prints one line per drop rate:

    python-step n=N bytes=B p=P median_ms=… min_ms=… max_ms=… exchange_median_ms=…

`exchange_median_ms` is the median over repeats of the slowest rank's time inside the
native exchange alone (the `comm_s` the step returns): the rest of the step is the
Python face (the call, the buffer's memory, the ranks' check of their buffers).
jobs/pages/python.sh alternates it with `rps bench-exchange` (docs/results/python.md).
"""
import argparse
import statistics
import time

import numpy as np

import rps


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--drop-rates", default="0,0.1")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    buf = np.ones(args.bytes // 4, dtype=np.float32)
    for rate in [float(x) for x in args.drop_rates.split(",")]:
        ex = rps.Exchange(colocated=True, drop_rate=rate, seed=args.seed)
        wall, inside = [], []
        for i in range(args.warmup + args.repeats):
            ex.barrier()
            t0 = time.perf_counter()
            counts = ex.step(buf)
            dt = time.perf_counter() - t0
            slowest = max(ex.gather(dt))
            slowest_inside = max(ex.gather(counts["comm_s"]))
            if i >= args.warmup:
                wall.append(slowest * 1e3)
                inside.append(slowest_inside * 1e3)
        if ex.rank == 0:
            print(f"python-step n={ex.size} bytes={args.bytes} p={rate:.3f} "
                  f"median_ms={statistics.median(wall):.6f} min_ms={min(wall):.6f} "
                  f"max_ms={max(wall):.6f} exchange_median_ms={statistics.median(inside):.6f}",
                  flush=True)
        ex.close()


main()
