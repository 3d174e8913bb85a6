"""Benchmark: wm.train.fit against a plain fp32 DataLoader loop, same model, data and batch size.

    .venv/bin/python benchmarks/train_vs_dataloader.py [--epochs 5] [--width 32] [--json out.json]

Trains the small CNN on all of Fashion-MNIST twice, side by side in one run: once with
`wm.train.fit` (data on the device, index-slice batches, no per-step host sync) and once with the
textbook loop (`TensorDataset` + `DataLoader(shuffle=True)`, `.item()` per step, fp32). Both use
the same initial weights, optimizer, learning-rate schedule and epochs, so the test accuracies
are comparable and the difference in seconds is the loop's. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from wm import data
from wm.models import SmallCNN
from wm.results import device_name
from wm.train import TrainConfig, default_device, evaluate, fit, make_optimizer, make_schedule, seed_everything


def plain_loop(model, x, y, cfg: TrainConfig, device) -> float:
    """The loop most PyTorch tutorials write; returns the training seconds."""
    loader = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=cfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    opt = make_optimizer(model.parameters(), cfg)
    sched = make_schedule(opt, math.ceil(cfg.epochs * len(loader)), cfg)
    model.train()
    start = time.perf_counter()
    for _ in range(int(cfg.epochs)):
        total = 0.0
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the measurements to this file")
    args = ap.parse_args()

    device = default_device()
    ds = data.load_classification("fashion_mnist", device=device)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=0.05, seed=args.seed)
    seed_everything(args.seed)
    init = SmallCNN(in_channels=1, num_classes=10, width=args.width).to(device)
    n = len(ds.x_train) * args.epochs

    rows = []
    plain = copy.deepcopy(init)
    secs = plain_loop(plain, ds.x_train, ds.y_train, cfg, device)
    rows.append(("plain DataLoader loop (fp32)", secs, evaluate(plain, ds.x_test, ds.y_test)))

    ours = copy.deepcopy(init)
    hist = fit(ours, ds.x_train, ds.y_train, cfg)
    rows.append(("wm.train.fit", hist.seconds, evaluate(ours, ds.x_test, ds.y_test)))

    print(f"SmallCNN width {args.width}, Fashion-MNIST 60 000 images, {args.epochs} epochs, batch {args.batch_size}")
    print(f"device: {device_name()}; torch {torch.__version__}, python {platform.python_version()}\n")
    print("| loop | seconds / epoch | images / s | test accuracy |")
    print("|---|---|---|---|")
    for name, secs, acc in rows:
        print(f"| {name} | {secs / args.epochs:.1f} | {n / secs:.0f} | {acc:.4f} |")
    print(f"\nspeed-up of wm.train over the plain loop: {rows[0][1] / rows[1][1]:.2f}×")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device_name(), "torch": torch.__version__, "epochs": args.epochs,
                       "width": args.width, "batch_size": args.batch_size,
                       "rows": [dict(loop=r[0], seconds=r[1], images_per_second=n / r[1], test_acc=r[2])
                                for r in rows]}, fh, indent=2)


if __name__ == "__main__":
    main()
