"""Training batches per second of the patch loader: 0, 1 and 2 workers, augmentation in the loader's workers
vs on the training device (run by hand).

At the paper's settings by default: 128^3 patches, batch 2, a generated 4-channel brain data set (``scnas data
synth``'s generator, preprocessed to 1 mm), nnU-Net's default augmentation. "loader" is the CPU path (the
workers, or the main process without workers, crop and augment); "device" is the path of a GPU run (the
workers only crop; the main process moves each batch to the device, pinned on the way to a GPU, and augments
it there in one batch) — on a machine without a GPU the "device" is the CPU, in the main process, with torch's
threads; "none" only crops, which is what the workers do for a GPU run. Each configuration runs in a fresh
interpreter: one pass to start the workers and warm the page cache, then ``--batches`` batches timed (a GPU is
synchronised before the clock stops). Prints a Markdown table for docs/benchmarks.md.

    .venv/bin/python benchmarks/loader.py [--device cpu|cuda] [--workers 0 1 2] [--places loader device none]
        [--batches 8] [--repeat 1] [--data PREPROCESSED_FOLDER] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(args: argparse.Namespace) -> None:
    import torch

    from scnas_dsl.data.augment import AugmentConfig
    from scnas_dsl.data.loader import make_loader
    from scnas_dsl.data.preprocess import Preprocessed

    pre = Preprocessed(Path(args.data))
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    augment = None if args.augment_on == "none" else AugmentConfig()
    loader = make_loader(pre, pre.case_ids, patch_size=(args.patch,) * 3, batch_size=args.batch_size,
                         augment=augment, seed=0, workers=args.workers[0], num_batches=args.batches,
                         augment_in_loader=args.augment_on == "loader", device=device, pin_memory=cuda)

    def one_pass() -> float:
        start = time.perf_counter()
        for image, label in loader:
            image.sum(), label.sum()  # touch the batch, as a step would
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    first = one_pass()  # starts the workers, reads the cases into the page cache
    timed = one_pass()
    loader.close()
    print(json.dumps({"first": first, "seconds": timed, "samples": args.batches * args.batch_size,
                      "threads": torch.get_num_threads()}))


def _run(args: argparse.Namespace, data: Path, workers: int, augment_on: str) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", "--data", str(data), "--device", args.device,
               "--workers", str(workers), "--augment-on", augment_on, "--batches", str(args.batches),
               "--patch", str(args.patch), "--batch-size", str(args.batch_size)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _dataset(tmp: Path, cases: int) -> Path:
    from scnas_dsl.data.preprocess import preprocess_dataset
    from scnas_dsl.data.synth import synthesize

    # 1 x 1 x 1.5 mm, preprocessed to 1 mm: about 125 x 130 x 165 voxels after cropping, larger than the patch
    raw = synthesize(tmp / "brain", task="brain", cases=cases, shape=(160, 160, 112), seed=0)
    return preprocess_dataset(raw, out=tmp / "pre", spacing=(1.0, 1.0, 1.0), progress=False).root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--augment-on", default="loader", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--places", nargs="+", default=["loader", "device", "none"],
                        choices=["loader", "device", "none"], help="where to augment (none: crops only)")
    parser.add_argument("--batches", type=int, default=8, help="batches timed per configuration")
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--cases", type=int, default=3, help="generated cases (without --data)")
    parser.add_argument("--data", help="a preprocessed folder to use instead of generating one")
    parser.add_argument("--keep", help="generate the data set into this new folder and keep it (for --data)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (alternating order); the best is kept")
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; run it on a GPU machine (the CPU figures: --device cpu)")

    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            data = Path(args.data)
        else:
            start = time.perf_counter()
            data = _dataset(Path(args.keep) if args.keep else Path(tmp), args.cases)
            print(f"generated and preprocessed {args.cases} cases in {time.perf_counter() - start:.0f} s: {data}",
                  file=sys.stderr)
        # "none": crops only, what the workers do when the augmentation runs on a GPU
        configs = [(w, on) for w in args.workers for on in args.places]
        best: dict[tuple[int, str], dict[str, float]] = {}
        for round_ in range(args.repeat):
            for workers, on in configs if round_ % 2 == 0 else list(reversed(configs)):
                result = _run(args, data, workers, on)
                print(f"workers {workers}, augmentation on the {on}: {result}", file=sys.stderr)
                if (workers, on) not in best or result["seconds"] < best[(workers, on)]["seconds"]:
                    best[(workers, on)] = result

    base = best[configs[0]]["samples"] / best[configs[0]]["seconds"]
    print(f"\n{platform.machine()}, {os.cpu_count()} CPUs, device {args.device}, patch {args.patch}^3, batch "
          f"{args.batch_size}, {args.batches} batches timed, load average {os.getloadavg()[0]:.1f}\n")
    print(f"| workers | augmentation | samples per second | / {configs[0][0]} workers, {configs[0][1]} | first pass (s) |")
    print("| --- | --- | --- | --- | --- |")
    for key in configs:
        r = best[key]
        rate = r["samples"] / r["seconds"]
        where = {"loader": "in the loader", "device": f"on the device ({args.device})",
                 "none": "none (crops only)"}[key[1]]
        print(f"| {key[0]} | {where} | {rate:.2f} | {rate / base:.2f} | {r['first']:.1f} |")


if __name__ == "__main__":
    main()
