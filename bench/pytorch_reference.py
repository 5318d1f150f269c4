#!/usr/bin/env python3
"""PyTorch reference for `rps bench`: the same model, batch, and SGD step, on one CPU thread.

Started by `rps bench --pytorch` (or by hand with any python3). On first use it creates a
virtual environment (--venv, default target/bench-venv), installs `torch` from PyPI into
it, and re-runs itself there; later runs reuse it. Prints one machine-readable line per
batch size:

    pytorch batch=B median_ms=… p25_ms=… p75_ms=… min_ms=… max_ms=… peak_rss_bytes=…

The model matches rps's reference CNN exactly: conv5x5(32, pad 2)-ReLU-maxpool2,
conv5x5(64, pad 2)-ReLU-maxpool2, flatten, linear(64*H/4*W/4 -> 512)-ReLU,
linear(512 -> classes), mean softmax cross-entropy; SGD lr 0.01, momentum 0.9,
weight decay 5e-4. A timed step is zero_grad, forward, loss, backward, optimizer step.
--model resnet20 builds the CIFAR ResNet-20 of rps (He et al. 2016, option-A shortcuts:
subsample and zero-pad channels; bias-free convolutions, batch norm).
"""

import argparse
import os
import subprocess
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", default=os.path.join(os.path.dirname(__file__), "..", "target", "bench-venv"))
    p.add_argument("--model", choices=["cnn", "resnet20"], default="cnn")
    p.add_argument("--batch-sizes", default="32,128")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--image", default="1,28,28", help="C,H,W")
    p.add_argument("--classes", type=int, default=10)
    return p.parse_args()


def ensure_venv(venv):
    """Re-executes this script inside `venv` with torch installed; returns only there."""
    venv = os.path.abspath(venv)
    python = os.path.join(venv, "bin", "python")
    if os.path.abspath(sys.prefix) == venv:
        return
    if not os.path.exists(python):
        print(f"creating virtual environment {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    probe = subprocess.run([python, "-c", "import torch, numpy"], capture_output=True)
    if probe.returncode != 0:
        print(f"installing torch from PyPI into {venv} (once; large download)", file=sys.stderr)
        pip = subprocess.run([python, "-m", "pip", "install", "--disable-pip-version-check", "torch", "numpy"])
        if pip.returncode != 0:
            sys.exit(f"error: pip could not install torch into {venv} (is PyPI reachable?)")
    os.execv(python, [python] + sys.argv)


def peak_rss_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def quantiles(ms):
    s = sorted(ms)
    n = len(s)
    q = lambda f: s[round((n - 1) * f)]
    median = (s[n // 2 - 1] + s[n // 2]) / 2 if n % 2 == 0 else s[n // 2]
    return median, q(0.25), q(0.75), s[0], s[-1]


def build(name, c, h, w, k):
    from torch import nn
    import torch.nn.functional as F

    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), 512), nn.ReLU(),
            nn.Linear(512, k),
        )

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.pad = (cout - cin) // 2 if stride != 1 else None

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            short = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
            return F.relu(out + short)

    layers, cin = [nn.Conv2d(c, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
    for s, cout in enumerate([16, 32, 64]):
        for b in range(3):
            layers.append(Block(cin, cout, 2 if s > 0 and b == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, k)]
    return nn.Sequential(*layers)


def main():
    args = parse_args()
    ensure_venv(args.venv)
    import torch
    from torch import nn

    torch.set_num_threads(1)
    c, h, w = (int(v) for v in args.image.split(","))
    k = args.classes
    print(f"pytorch version={torch.__version__} threads={torch.get_num_threads()}", flush=True)
    for batch in sorted({int(b) for b in args.batch_sizes.split(",")}):
        reset_peak_rss()
        torch.manual_seed(1)
        model = build(args.model, c, h, w, k)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        loss_fn = nn.CrossEntropyLoss()
        x = torch.rand(batch, c, h, w) * 2 - 1
        y = torch.randint(0, k, (batch,))

        def step():
            opt.zero_grad(set_to_none=False)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()

        for _ in range(args.warmup):
            step()
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)
        med, p25, p75, lo, hi = quantiles(times)
        print(
            f"pytorch batch={batch} median_ms={med:.3f} p25_ms={p25:.3f} p75_ms={p75:.3f} "
            f"min_ms={lo:.3f} max_ms={hi:.3f} peak_rss_bytes={peak_rss_bytes()}",
            flush=True,
        )


if __name__ == "__main__":
    main()
