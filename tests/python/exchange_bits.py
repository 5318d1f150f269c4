"""Steps the rps exchange on known buffers and writes what came out, for tests/python.rs
to compare with the native exchange bit for bit.

    mpirun -n N python exchange_bits.py OUT LEN STEPS FLAG...      (MPI ranks)
    python exchange_bits.py --local N OUT LEN STEPS FLAG...        (in-process ranks)

Rank r's buffer starts at ((i*7 + r*13) % 29) * 0.25 - 3 and gains 0.5 before every
step (both exact in float32, as in the Rust side). Writes OUT/rank{r}.f32 (the final
buffer, little-endian float32) and OUT/rank{r}.counts (per step, the counters but the
times, as `name value` lines separated by blank lines).
"""
import os
import sys
import threading

import numpy as np

import rps

TIMES = ("compute_s", "comm_s", "wall_s")


def options(flags):
    """`--name value` / `--name` flags back into keyword options."""
    out, i = {}, 0
    while i < len(flags):
        name = flags[i][2:].replace("-", "_")
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            out[name] = flags[i + 1]
            i += 2
        else:
            out[name] = True
            i += 1
    return out


def run(ex, out, length, steps):
    r = ex.rank
    i = np.arange(length, dtype=np.int64)
    b = (((i * 7 + r * 13) % 29).astype(np.float32) * np.float32(0.25)) - np.float32(3.0)
    lines = []
    for _ in range(steps):
        b += np.float32(0.5)
        counts = ex.step(b)
        lines += [f"{k} {v}" for k, v in counts.items() if k not in TIMES] + [""]
    b.astype("<f4").tofile(os.path.join(out, f"rank{r}.f32"))
    with open(os.path.join(out, f"rank{r}.counts"), "w") as f:
        f.write("\n".join(lines))
    ex.close()


def main(argv):
    if argv[0] == "--local":
        n, out, length, steps, flags = int(argv[1]), argv[2], int(argv[3]), int(argv[4]), argv[5:]
        exchanges = rps.local_exchanges(n, **options(flags))
        threads = [threading.Thread(target=run, args=(ex, out, length, steps)) for ex in exchanges]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        out, length, steps, flags = argv[0], int(argv[1]), int(argv[2]), argv[3:]
        run(rps.Exchange(**options(flags)), out, length, steps)


main(sys.argv[1:])
