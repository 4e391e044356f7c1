"""Wall and CPU seconds per epoch of a tagger-sized MLP (1280 -> 1024 -> 300, batch 32, 540 images, Adam) under
each torch thread count, interleaved over rounds (each run in its own process, so the thread pool is fresh):
why scripts/demo.sh trains with 1 torch thread on a shared 2-core machine.

    .venv/bin/python scripts/torch_threads_bench.py --threads 1,2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def one(threads: int, epochs: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x, y = torch.randn(540, 1280), (torch.rand(540, 300) < 0.02).float()
    net = nn.Sequential(nn.Linear(1280, 1024), nn.ReLU(), nn.Dropout(0.5), nn.Linear(1024, 300))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for start in range(0, len(x), 32):
            i = perm[start : start + 32]
            loss = F.binary_cross_entropy_with_logits(net(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {
        "wall": (time.perf_counter() - wall) / epochs,
        "cpu": (time.process_time() - cpu) / epochs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.epochs)))
        return
    counts = [int(t) for t in args.threads.split(",")]
    runs: dict[int, list[dict[str, float]]] = {t: [] for t in counts}
    for _ in range(args.rounds):
        for t in counts:
            cmd = [sys.executable, __file__, "--one", str(t), "--epochs", str(args.epochs)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs[t].append(json.loads(out))
    print(f"load average before the last round: {os.getloadavg()[0]:.1f} (1 min)")
    print("| torch threads | wall s / epoch (median) | CPU s / epoch (median) | rounds |")
    print("|---|---|---|---|")
    for t in counts:
        wall = statistics.median(r["wall"] for r in runs[t])
        cpu = statistics.median(r["cpu"] for r in runs[t])
        print(f"| {t} | {wall:.2f} | {cpu:.2f} | {len(runs[t])} |")


if __name__ == "__main__":
    main()
