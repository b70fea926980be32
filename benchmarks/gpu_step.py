"""One search step at the paper's settings on a GPU: time, peak memory, and scnas' estimate of it (run by hand).

The paper searched at 128^3 with stem width 48. For each batch size (1 and 4), sampling (pair, single, full),
mixed precision (on, off) and per-cell checkpointing (on, off) a fresh interpreter builds the supernet of
``--spec`` (default ``specs/unet4cell.scn``; 4 channels in, 4 classes, as BraTS), warms up (every operation of
every edge once, then one step), times
``--steps`` steps, and reports ``torch.cuda.max_memory_allocated`` and the estimate the search's memory check
uses (``scnas_dsl.training.device.training_memory`` of ``scnas_dsl.nn.cost.estimate`` plus ``step_extras``: the loss's
tensors). One search step is the
trainer's: the weight step (forward with detached logits, backward, Adam) on one batch, then the
architecture step (forward, backward, Adam on the logits) on another, with the trainer's own ``update``.
A configuration that does not fit prints ``OOM``.

    .venv/bin/python benchmarks/gpu_step.py                       # the table for docs/benchmarks.md
    .venv/bin/python benchmarks/gpu_step.py --batch 1 --modes pair --amp on --checkpoint off --patch 64

Without a GPU it refuses (``--device cpu`` runs the same code at a small patch, to check the script).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    """One configuration: build, warm up, time the steps, print one JSON line."""
    import torch

    from scnas_dsl.loader import load
    from scnas_dsl.nn import build_supernet
    from scnas_dsl.nn.cost import estimate
    from scnas_dsl.training.device import setup_runtime, step_extras, training_memory
    from scnas_dsl.training.losses import soft_jaccard_loss
    from scnas_dsl.training.search import update

    runtime = setup_runtime(args.device, amp=args.amp == "on")
    dev = runtime.device
    space = load(ROOT / args.spec).space(None)
    torch.manual_seed(0)
    net = build_supernet(space, in_channels=4, num_classes=4, stem_width=args.width, sampling=args.mode, seed=0)
    net.checkpoint_cells = args.checkpoint == "on"
    patch = (args.patch,) * 3
    report = estimate(net, patch=patch, batch_size=args.batch)
    need = training_memory(report, runtime, args.mode, checkpoint=net.checkpoint_cells) + step_extras(report, runtime, 4)
    net.to(dev).train()
    weights, logits = net.weight_parameters(), net.arch_parameters()
    w_opt = torch.optim.Adam(weights, lr=0.025, betas=(0.1, 0.001))
    a_opt = torch.optim.Adam(logits, lr=0.025, betas=(0.1, 0.001))
    w_scaler, a_scaler = runtime.grad_scaler(), runtime.grad_scaler()
    gen = torch.Generator(device=dev).manual_seed(0)
    x = [torch.randn(args.batch, 4, *patch, device=dev, generator=gen) for _ in range(2)]
    y = [torch.randint(0, 4, (args.batch, *patch), device=dev, generator=gen) for _ in range(2)]

    def step() -> None:
        with runtime.autocast():
            loss_w = soft_jaccard_loss(net(x[0], arch_grad=False), y[0])
        update(weights, w_opt, w_scaler, loss_w, runtime)
        with runtime.autocast():
            loss_a = soft_jaccard_loss(net(x[1]), y[1])
        update(logits, a_opt, a_scaler, loss_a, runtime)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def warm_up() -> None:
        """Every candidate of every edge once (cuDNN autotunes each convolution shape, every weight gets its
        Adam state), then one step of the search (the logits' Adam state): nothing of it is left to happen
        inside the timed, peak-measured steps."""
        for samples in net.every_operation_samples():
            with runtime.autocast():
                loss = soft_jaccard_loss(net(x[0], samples=samples), y[0])
            update(weights, w_opt, w_scaler, loss, runtime)
        step()

    result: dict[str, object] = {"estimate": need, "amp_dtype": str(runtime.amp_dtype)}
    try:
        warm_up()
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        result["time"] = sorted(times)[len(times) // 2]  # the median step: each step draws other operations
        result["peak"] = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
        if dev.type == "cuda":
            result["gpu"] = torch.cuda.get_device_name(dev)
    except torch.OutOfMemoryError:
        result["oom"] = True
    print(json.dumps(result))


def run_one(args: argparse.Namespace, batch: int, mode: str, amp: str, checkpoint: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--spec", args.spec, "--patch", str(args.patch), "--width",
           str(args.width), "--steps", str(args.steps), "--device", args.device, "--batch", str(batch),
           "--mode", mode, "--amp", amp, "--checkpoint", checkpoint]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["?"]
        return {"error": tail[0][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="specs/unet4cell.scn")
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--width", type=int, default=48, help="stem width (the paper's search: 48)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--modes", nargs="+", default=["pair", "single", "full"])
    parser.add_argument("--amp", nargs="+", default=["on", "off"], choices=("on", "off"))
    parser.add_argument("--checkpoint", nargs="+", default=["off", "on"], choices=("on", "off"))
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the warm-up (every operation once, then one step)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="pair", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.batch, args.amp, args.checkpoint = args.batch[0], args.amp[0], args.checkpoint[0]
        child(args)
        return
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: run it on a GPU machine (or --device cpu --patch 32 to try the script)")
    print(f"{args.spec}, patch {args.patch}^3, stem width {args.width}, median of {args.steps} steps "
          f"after a warm-up, each configuration in a fresh process\n")
    print("| batch | sampling | AMP | checkpointing | step time (s) | time / pair same settings | "
          "peak allocated (GiB) | estimate (GiB) | estimate / peak |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    gpu = None
    for batch, amp, checkpoint in itertools.product(args.batch, args.amp, args.checkpoint):
        pair_time = None
        for mode in args.modes:
            r = run_one(args, batch, mode, amp, checkpoint)
            gpu = gpu or r.get("gpu")
            if "error" in r or r.get("oom"):
                what = "OOM" if r.get("oom") else f"error: {r['error']}"
                print(f"| {batch} | {mode} | {amp} | {checkpoint} | {what} | | | {r.get('estimate', 0) / 2**30:.1f} | |")
                continue
            pair_time = r["time"] if mode == "pair" else pair_time
            ratio = f"{r['time'] / pair_time:.2f}" if pair_time else ""
            peak = r["peak"]
            peak_text = f"{peak / 2**30:.2f}" if peak else "n/a"
            est = f"{r['estimate'] / peak:.2f}" if peak else ""
            print(f"| {batch} | {mode} | {amp} | {checkpoint} | {r['time']:.3f} | {ratio} | {peak_text} | "
                  f"{r['estimate'] / 2**30:.2f} | {est} |", flush=True)
    print(f"\nGPU: {gpu or args.device}; torch {torch.__version__}")


if __name__ == "__main__":
    main()
