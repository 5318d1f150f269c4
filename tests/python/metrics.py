"""A run through the Python face that writes a metrics file (tests/python.rs reads it).

    mpirun -n 3 python metrics.py METRICS

One server and two workers, 20 steps: each worker logs loss 1/step; rank 0 logs an
evaluation and the model's attributes.
"""
import sys

import numpy as np

import rps

with rps.Exchange(servers=1, drop_rate=0.2, seed=4, metrics=sys.argv[1]) as ex:
    b = np.full(50, float(ex.rank), dtype=np.float32)
    for step in range(1, 21):
        if ex.is_worker:
            b -= np.float32(0.01)
            ex.log(step, loss=1.0 / step, accuracy=0.5, samples=16)
        ex.step(b)
    if ex.rank == 0:
        ex.set_attrs(model="mlp", batch_size=16)
        ex.log(test_loss=0.6, test_accuracy=0.75)
