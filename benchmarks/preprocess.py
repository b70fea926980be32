"""Preprocessing speed with 1 and 2 worker processes, and the cost of a cached second run.

Run by hand: ``.venv/bin/python benchmarks/preprocess.py [--cases 8] [--shape 48 48 48] [--spacing 0.7 0.7 0.7]``.
Generates a brain data set in a temporary folder, preprocesses it from scratch with each worker count, then
once more with everything cached, and prints a Markdown table for docs/benchmarks.md (ratios from one run).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from scnas_dsl.data.preprocess import preprocess_dataset
from scnas_dsl.data.synth import synthesize


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=[48, 48, 48])
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.7, 0.7, 0.7])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2, help="rounds (alternating order); the best is kept")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = synthesize(Path(tmp) / "brain", task="brain", cases=args.cases, shape=args.shape, seed=0)
        best: dict[int, tuple[float, float]] = {}
        for round_ in range(args.repeat):
            # alternate the order so that neither count always runs first (warm caches, other load)
            order = args.workers if round_ % 2 == 0 else list(reversed(args.workers))
            for workers in order:
                out = Path(tmp) / f"pre{workers}-{round_}"
                start, cpu_start = time.perf_counter(), _cpu()
                pre = preprocess_dataset(root, out=out, spacing=args.spacing, workers=workers, progress=False)
                seconds = time.perf_counter() - start
                if seconds < best.get(workers, (float("inf"), 0.0))[0]:
                    best[workers] = (seconds, _cpu() - cpu_start)
        rows = [(w, *best[w]) for w in args.workers]
        start = time.perf_counter()
        cached = preprocess_dataset(
            root, out=Path(tmp) / f"pre{args.workers[0]}-0", spacing=args.spacing, progress=False
        )
        cached_time = time.perf_counter() - start
        assert cached.redone == []
        shape = np.load(pre.root / "cases" / f"{pre.case_ids[0]}.image.npy", mmap_mode="r").shape

    base = rows[0][1]
    base_cpu = rows[0][2]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end; best of {args.repeat}; "
        f"{args.cases} brain cases of {'x'.join(map(str, args.shape))} voxels (4 channels) at "
        f"1 x 1 x 1.5 mm -> {' x '.join(f'{s:g}' for s in args.spacing)} mm (first case {shape})"
    )
    print()
    print(
        "| run | wall time / 1-worker wall time | CPU time (all processes) / 1-worker CPU time | cases per second |"
    )
    print("| --- | --- | --- | --- |")
    for workers, seconds, cpu in rows:
        print(
            f"| {workers} worker(s), from scratch | {seconds / base:.2f} | {cpu / base_cpu:.2f} | "
            f"{args.cases / seconds:.2f} |"
        )
    print(f"| second run, all cached | {cached_time / base:.4f} | - | - |")


if __name__ == "__main__":
    main()
