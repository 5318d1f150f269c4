#!/usr/bin/env python3
"""Train a PyTorch model under RPS: rps's exchange, drop models and metrics file around
a model rps cannot build itself. Copy it and put your model in `build_model`.

    mpirun -n 4 python examples/pytorch_rps.py --data data/fashion-mnist.h5 \\
        --model lstm --drop-rate 0.1 --metrics runs/lstm-p0.1.h5
    target/release/rps report runs/lstm-p0.1.h5

Every rank is a worker and the server of one block (the paper's co-located mode; pass
`--servers S` for S dedicated servers). Each worker reads only its shard of the HDF5
dataset (rps's layout: /train/images N×C×H×W u8, /train/labels), trains its replica
with SGD (learning rate, momentum and batch as `rps train`'s defaults), and after every
local step hands the replica, one flat float32 tensor that every parameter views, to
`ex.step`, which averages each block on its server and brings it back, unless the drop
model discards it. `--algorithm allreduce` is the reliable baseline through the same
call. At the end (and every `--eval-every` steps) the workers' replicas are averaged and
rank 0 evaluates the average on the test set, as `rps train` does.

Models: `cnn` is rps's reference CNN (the same layers as `rps train --model cnn`);
`lstm` reads each image row by row (28 steps of 28 pixels, one LSTM layer of 128 units,
a linear classifier on the last state): a recurrent model, the paper's second kind of
network, which rps's own engine does not have.

Needs torch, numpy and h5py beside the `rps` package: jobs/python-pytorch.sh installs
them into target/python-torch and runs the experiment of docs/results/python.md.
"""

import argparse
import time

import h5py
import numpy as np
import torch
from torch import nn

import rps


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dataset in rps's HDF5 layout")
    p.add_argument("--model", choices=["cnn", "lstm"], default="cnn")
    p.add_argument("--algorithm", choices=["rps", "allreduce"], default="rps")
    p.add_argument("--drop-rate", type=float, default=0.0)
    p.add_argument("--servers", type=int, default=None,
                   help="dedicated servers (default: co-located, every rank serves a block)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=0, help="steps (default: one epoch of a shard)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--eval-every", type=int, default=0, help="0: only at the end")
    p.add_argument("--metrics", default=None, help="rps metrics file (rank 0 writes it)")
    p.add_argument("--force", action="store_true", help="replace an existing metrics file")
    return p.parse_args()


def build_model(name, channels, height, width, classes):
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (height // 4) * (width // 4), 512), nn.ReLU(),
            nn.Linear(512, classes),
        )

    class RowLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(channels * width, 128, batch_first=True)
            self.out = nn.Linear(128, classes)

        def forward(self, x):
            n, c, h, w = x.shape
            rows = x.permute(0, 2, 1, 3).reshape(n, h, c * w)  # one row per time step
            _, (last, _) = self.lstm(rows)
            return self.out(last[-1])

    return RowLSTM()


def flatten_parameters(model):
    """One contiguous float32 tensor that every parameter of `model` views: the buffer
    the exchange averages in place, and that the optimiser updates in place."""
    params = list(model.parameters())
    flat = torch.zeros(sum(p.numel() for p in params), dtype=torch.float32)
    offset = 0
    for p in params:
        n = p.numel()
        flat[offset:offset + n].copy_(p.data.reshape(-1))
        p.data = flat[offset:offset + n].view_as(p)
        offset += n
    return flat


def shard(f, split, part, parts):
    """Rows [part·N/parts, (part+1)·N/parts) of a split: all this worker reads."""
    n = f[f"{split}/labels"].shape[0]
    lo, hi = part * n // parts, (part + 1) * n // parts
    images = f[f"{split}/images"][lo:hi]
    labels = f[f"{split}/labels"][lo:hi]
    return standardise(f, images), torch.from_numpy(labels.astype(np.int64))


def standardise(f, images):
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    if "mean" in f.attrs and "std" in f.attrs:
        mean = torch.tensor(f.attrs["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(f.attrs["std"], dtype=torch.float32).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x


def evaluate(model, images, labels):
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(labels), 500):
            out = model(images[i:i + 500])
            loss += loss_fn(out, labels[i:i + 500]).item()
            correct += (out.argmax(1) == labels[i:i + 500]).sum().item()
    return loss / len(labels), correct / len(labels)


def main():
    args = parse_args()
    torch.set_num_threads(1)  # ranks share the machine's cores
    options = dict(algorithm=args.algorithm, seed=args.seed, metrics=args.metrics,
                   force=args.force)
    if args.servers is None:
        options["colocated"] = True
    else:
        options["servers"] = args.servers
    if args.algorithm == "rps":
        options["drop_rate"] = args.drop_rate
    ex = rps.Exchange(**options)

    f = h5py.File(args.data, "r")
    _, c, h, w = f["train/images"].shape
    classes = int(max(f["train/labels"][:].max(), f["test/labels"][:].max())) + 1
    # The same initial model on every rank (rps train does the same from --seed).
    torch.manual_seed(args.seed)
    model = build_model(args.model, c, h, w, classes)
    flat = flatten_parameters(model)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    loss_fn = nn.CrossEntropyLoss()

    x = y = order = None  # a pure server trains nothing
    if ex.is_worker:
        x, y = shard(f, "train", ex.worker_index, ex.workers)
    # The global number of steps is fixed by the smallest shard, identical on all ranks.
    n_train = f["train/labels"].shape[0]
    per_epoch = (n_train // ex.workers) // args.batch_size
    steps = args.steps or per_epoch
    test = None
    if ex.rank == 0:
        test = standardise(f, f["test/images"][:]), torch.from_numpy(
            f["test/labels"][:].astype(np.int64))

    gen = torch.Generator().manual_seed(args.seed * 1000 + (ex.worker_index or 0))
    if ex.is_worker:
        order = torch.randperm(len(x), generator=gen)
    average = torch.empty_like(flat)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        if ex.is_worker:
            j = (step - 1) % per_epoch
            if j == 0 and step > 1:
                order = torch.randperm(len(x), generator=gen)
            idx = order[j * args.batch_size:(j + 1) * args.batch_size]
            opt.zero_grad()
            out = model(x[idx])
            loss = loss_fn(out, y[idx])
            loss.backward()
            opt.step()
            accuracy = (out.argmax(1) == y[idx]).float().mean().item()
            ex.log(step, loss=loss.item(), accuracy=accuracy, samples=len(idx))
        ex.step(flat)
        if step == steps or (args.eval_every and step % args.eval_every == 0):
            average.copy_(flat)
            ex.average(average)
            if ex.rank == 0:
                saved = flat.clone()
                flat.copy_(average)  # the model now holds the average
                test_loss, test_acc = evaluate(model, *test)
                flat.copy_(saved)
                ex.log(step, test_loss=test_loss, test_accuracy=test_acc)
                print(f"step {step}/{steps}: test accuracy {test_acc:.4f}, loss {test_loss:.4f}, "
                      f"{time.perf_counter() - t0:.1f} s", flush=True)
    if ex.rank == 0:
        ex.set_attrs(model=f"pytorch-{args.model}", batch_size=args.batch_size, lr=args.lr,
                     momentum=args.momentum)
    ex.close()


if __name__ == "__main__":
    main()
