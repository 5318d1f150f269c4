"""Bad input under mpirun: every rank must raise the same rps.Error, none may hang.

    mpirun -n 3 python errors.py CASE

Prints `rank R: agreed=A: MESSAGE` for every error caught, then `rank R: done`. CASE:
  buffers   bad buffers on one rank each (float64, not contiguous, read-only, a Python
            list, lengths that differ), each caught, then a good step
  options   an option that is not the exchange's, then ranks with other options
  collected an exchange dropped without close (the job must still end cleanly)
  uncaught  rank 1 alone raises ValueError after a step (the job must be aborted)
  agreed    every rank gets an rps.Error it does not catch (all exit with status 1)
"""
import os
import sys

import numpy as np

import rps

RANK = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))


def caught(what, f):
    try:
        f()
    except rps.Error as e:
        print(f"rank {RANK}: {what}: agreed={e.agreed}: {e}", flush=True)
    else:
        print(f"rank {RANK}: {what}: no error", flush=True)


def buffers():
    ex = rps.Exchange(colocated=True, drop_rate=0.1)
    good = np.ones(12, dtype=np.float32)
    bad = {
        "float64": lambda: np.ones(12, dtype=np.float64),
        "strided": lambda: np.ones(24, dtype=np.float32)[::2],
        "readonly": lambda: np.frombuffer(bytes(48), dtype=np.float32),
        "list": lambda: [1.0] * 12,
    }
    for case, (who, make) in zip(bad, enumerate(bad.values())):
        rank_bad = who % 3
        caught(case, lambda: ex.step(make() if RANK == rank_bad else good))
    caught("length", lambda: ex.step(np.ones(12 + RANK, dtype=np.float32)))
    caught("good", lambda: ex.step(good))
    caught("changed", lambda: ex.step(np.ones(13, dtype=np.float32) if RANK == 2 else good))
    ex.close()


def options():
    caught("unknown", lambda: rps.Exchange(colocated=True, lr=0.1))
    caught("value", lambda: rps.Exchange(colocated=True, drop_rate=2))
    caught("differ", lambda: rps.Exchange(colocated=True, drop_rate=0.2 if RANK == 1 else 0.1))
    ex = rps.Exchange(colocated=True)
    caught("after", lambda: ex.step(np.ones(4, dtype=np.float32)))
    ex.close()


def collected():
    ex = rps.Exchange(colocated=True)
    ex.step(np.ones(8, dtype=np.float32))
    del ex  # never closed: MPI must still be finalised at exit
    import gc
    gc.collect()


def uncaught():
    ex = rps.Exchange(colocated=True)
    b = np.ones(8, dtype=np.float32)
    ex.step(b)
    if RANK == 1:
        raise ValueError("a bug in rank 1's script")
    ex.step(b)  # would wait for rank 1 forever


def agreed():
    ex = rps.Exchange(colocated=True, metrics=sys.argv[2], force=True)
    b = np.ones(8, dtype=np.float32)
    ex.step(b)
    ex.step(np.ones(8, dtype=np.float64) if RANK == 0 else b)


globals()[sys.argv[1]]()
print(f"rank {RANK}: done", flush=True)
