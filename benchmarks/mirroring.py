"""What test-time mirroring costs: sliding-window inference with and without the 8 flips of a 3D volume.

Run by hand: ``.venv/bin/python benchmarks/mirroring.py [--shape 40 40 40] [--patch 32 32 32] [--stem-width 16]``.
The network is the hand-designed 3D U-Net of ``specs/baselines/unet3d.scn`` (fixed network, eval mode, CPU,
one thread unless ``OMP_NUM_THREADS`` says otherwise); the time is the best of ``--repeat`` calls of
``sliding_window_inference`` on a random one-channel volume, 50% overlap, Gaussian blending, batches of 2
windows. The defaults are the size of a demo case (docs/training.md). Prints one Markdown row.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from scnas_dsl.inference.sliding_window import sliding_window_inference, window_starts
from scnas_dsl.loader import load
from scnas_dsl.nn import build_network

SPEC = Path(__file__).resolve().parents[1] / "specs" / "baselines" / "unet3d.scn"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[40, 40, 40])
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 32, 32])
    parser.add_argument("--stem-width", type=int, default=16)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    space, genotype = load(SPEC).genotype()
    net = build_network(space, genotype, in_channels=1, num_classes=args.classes, stem_width=args.stem_width).eval()
    image = torch.randn(1, *args.shape)
    best = {}
    for mirror in (False, True, False, True):  # alternating, so that a slow spell hits both
        for _ in range(args.repeat):
            t = time.perf_counter()
            sliding_window_inference(net, image, args.patch, mirror=mirror, batch_size=2)
            best[mirror] = min(best.get(mirror, float("inf")), time.perf_counter() - t)
    windows = 1
    for s, p in zip(args.shape, args.patch, strict=True):
        windows *= len(window_starts(s, p, 0.5))
    print("| volume | patch | windows | stem | no mirroring | mirroring (8 flips) | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {'x'.join(map(str, args.shape))} | {'x'.join(map(str, args.patch))} | {windows} | {args.stem_width} | "
          f"{best[False]:.2f} s | {best[True]:.2f} s | {best[True] / best[False]:.2f} |")


if __name__ == "__main__":
    main()
