"""One search step of scnas' pair supernet against one of MONAI's DiNTS, side by side (run by hand).

One search step = a weight step (forward, backward and optimiser update of the weights on a training batch)
then an architecture step (the same for the architecture parameters on an architecture batch).

* **scnas**: ``build_supernet`` of ``specs/unet4cell.scn`` (the paper's 12 cells, ``node_width split``) at
  stem width 8 (widths 8, 16, 32, 64 on levels 0-3), pair sampling (Algorithm 1), the search's own update
  (``scnas_dsl.training.search.update``: gradients only for the group that steps) with the search's default Adam
  settings (weights lr 0.025 betas (0.9, 0.999), logits lr 0.003 betas (0.5, 0.999)).
* **DiNTS**: MONAI's ``TopologySearch(channel_mul=0.25, num_blocks=4, num_depths=3, use_downsample=True)``
  inside ``DiNTS`` (widths 8, 16, 32, 64: the 8-wide stems at full resolution, the search space at 1/2, 1/4
  and 1/8), stepped as MONAI's DiNTS tutorial (``search_dints.py``) does: the groups switched by
  ``requires_grad``, SGD (lr 0.025, momentum 0.9, weight decay 4e-5) on the weights, Adam (lr 0.003, betas
  (0.5, 0.999)) on ``log_alpha_a`` and on ``log_alpha_c``; the architecture loss adds the tutorial's
  regularisers (path and operation entropies, the RAM-cost loss towards 0.8 and 0.001 x topology entropy,
  at full weight; ``--no-dints-reg`` leaves them out). ``--dints-full-res`` builds DiNTS with
  ``use_downsample=False``: its cells then run at full resolution as scnas' level-0 cells do (widths 8, 16,
  32 at 1, 1/2, 1/4), where the default runs them at 1/2 to 1/8.

Both use the same loss (scnas' soft Jaccard, ``scnas_dsl.training.losses.soft_jaccard_loss``), patch, batch,
4 input channels and 4 classes. Every run is a fresh interpreter; scnas and DiNTS alternate for ``--rounds``
rounds. Time is the mean wall time of ``--steps`` steps after one warm-up step (each scnas process draws the
same pairs, its supernet being seeded), also their CPU time (all threads: on a shared machine the less
disturbed figure; with more threads than free cores, OpenMP's waiting inflates both); peak memory is the child's maximum resident set size minus that of an
interpreter that only imported the same modules (``MALLOC_MMAP_THRESHOLD_=131072``, as
``benchmarks/search_step.py``); ``--tensor-peak`` adds the peak of live tensors over one more step from the
profiler's allocation events; ``--checkpoint-cells`` adds a third process per round, scnas with per-cell
checkpointing (``net.checkpoint_cells = True``), reported against the same DiNTS processes.

    .venv/bin/python benchmarks/vs_dints.py --patch 64 --rounds 3 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "unet4cell.scn"


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _imports() -> None:
    import monai.networks.nets.dints  # noqa: F401
    import torch  # noqa: F401

    import scnas_dsl.loader  # noqa: F401
    import scnas_dsl.nn  # noqa: F401
    import scnas_dsl.training.losses  # noqa: F401
    import scnas_dsl.training.search  # noqa: F401


def scnas_model(args: argparse.Namespace):  # noqa: ANN201
    """The pair supernet of ``specs/unet4cell.scn`` at stem width ``args.width``."""
    from scnas_dsl.loader import load
    from scnas_dsl.nn import build_supernet

    space = load(SPEC).space("unet4cell")
    return build_supernet(space, in_channels=args.in_channels, num_classes=args.classes,
                          stem_width=args.width, sampling="pair", seed=0)


def dints_model(args: argparse.Namespace):  # noqa: ANN201
    """MONAI's DiNTS search space and network at ``channel_mul = width / 32``."""
    import contextlib
    import io

    from monai.networks.nets import DiNTS, TopologySearch

    with contextlib.redirect_stdout(io.StringIO()):  # TopologySearch prints a recommendation
        space = TopologySearch(channel_mul=args.width / 32, num_blocks=args.dints_blocks,
                               num_depths=args.dints_depths, use_downsample=not args.dints_full_res,
                               spatial_dims=3)
    net = DiNTS(dints_space=space, in_channels=args.in_channels, num_classes=args.classes,
                use_downsample=not args.dints_full_res)
    return net, space


def _scnas_step(args: argparse.Namespace):  # noqa: ANN202
    import torch

    from scnas_dsl.training.device import Runtime
    from scnas_dsl.training.losses import soft_jaccard_loss
    from scnas_dsl.training.search import update

    net = scnas_model(args)
    net.train()
    net.checkpoint_cells = args.net == "scnas_ckpt"
    runtime = Runtime(device=torch.device("cpu"))
    weights, logits = net.weight_parameters(), net.arch_parameters()
    w_opt = torch.optim.Adam(weights, lr=0.025, betas=(0.9, 0.999))
    a_opt = torch.optim.Adam(logits, lr=0.003, betas=(0.5, 0.999))
    w_scaler, a_scaler = runtime.grad_scaler(), runtime.grad_scaler()

    def weight_step(x, y) -> None:  # noqa: ANN001
        # as the search's step: the weight step's draw is detached from the logits (arch_grad=False)
        update(weights, w_opt, w_scaler, soft_jaccard_loss(net(x, arch_grad=False), y), runtime)

    def arch_step(x, y) -> None:  # noqa: ANN001
        update(logits, a_opt, a_scaler, soft_jaccard_loss(net(x), y), runtime)

    return net, weight_step, arch_step


def _dints_step(args: argparse.Namespace):  # noqa: ANN202
    import torch
    import torch.nn.functional as F

    from scnas_dsl.training.losses import soft_jaccard_loss

    net, space = dints_model(args)
    net.train()
    weights = net.weight_parameters()
    # DiNTS.weight_parameters() lists every parameter, the logits too (the tutorial's SGD holds them but
    # never moves them: requires_grad is off during the weight step); leave them out here
    arch_ids = {id(space.log_alpha_a), id(space.log_alpha_c)}
    weights = [p for p in weights if id(p) not in arch_ids]
    w_opt = torch.optim.SGD(weights, lr=0.025, momentum=0.9, weight_decay=4e-5)
    a_opt_a = torch.optim.Adam([space.log_alpha_a], lr=0.003, betas=(0.5, 0.999), weight_decay=0.0)
    a_opt_c = torch.optim.Adam([space.log_alpha_c], lr=0.003, betas=(0.5, 0.999), weight_decay=0.0)

    def switch(train_weights: bool) -> None:
        for p in weights:
            p.requires_grad = train_weights
        space.log_alpha_a.requires_grad = not train_weights
        space.log_alpha_c.requires_grad = not train_weights

    def weight_step(x, y) -> None:  # noqa: ANN001
        switch(True)
        w_opt.zero_grad()
        soft_jaccard_loss(net(x), y).backward()
        w_opt.step()

    def arch_step(x, y) -> None:  # noqa: ANN001
        switch(False)
        loss = 0.0
        if args.dints_reg:
            probs_a, _ = space.get_prob_a(child=True)
            entropy_a = -(probs_a * torch.log(probs_a + 1e-5)).mean()
            entropy_c = -(F.softmax(space.log_alpha_c, dim=-1) * F.log_softmax(space.log_alpha_c, dim=-1)).mean()
            topology = space.get_topology_entropy(probs_a)
            ram_full = space.get_ram_cost_usage(x.shape, full=True)
            ram = space.get_ram_cost_usage(x.shape)
            loss = (entropy_a + entropy_c) + torch.abs(0.8 - ram / ram_full) + 0.001 * topology
        a_opt_a.zero_grad()
        a_opt_c.zero_grad()
        (soft_jaccard_loss(net(x), y) + loss).backward()
        a_opt_a.step()
        a_opt_c.step()

    return net, weight_step, arch_step


def child(args: argparse.Namespace) -> None:
    """One network: build, warm up, time ``--steps`` search steps, print JSON."""
    _imports()
    import torch

    if args.imports_only:
        print(json.dumps({"peak": _peak_bytes()}))
        return
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    net, weight_step, arch_step = (_dints_step if args.net == "dints" else _scnas_step)(args)
    patch = (args.patch,) * 3
    gen = torch.Generator().manual_seed(1)
    xw, xa = (torch.randn(args.batch, args.in_channels, *patch, generator=gen) for _ in range(2))
    yw, ya = (torch.randint(0, args.classes, (args.batch, *patch), generator=gen) for _ in range(2))

    def step() -> tuple[float, float, float]:
        cpu, start = time.process_time(), time.perf_counter()
        weight_step(xw, yw)
        middle = time.perf_counter()
        arch_step(xa, ya)
        return middle - start, time.perf_counter() - middle, time.process_time() - cpu

    times = [step() for _ in range(args.steps + 1)][1:]  # the first step allocates optimiser state
    peak = _peak_bytes()  # before the profiled step, whose bookkeeping must not count
    out = {"weight": statistics.mean(t[0] for t in times), "arch": statistics.mean(t[1] for t in times),
           "cpu": statistics.mean(t[2] for t in times), "peak": peak,
           "params": sum(p.numel() for p in net.parameters())}
    out["time"] = out["weight"] + out["arch"]
    if args.tensor_peak:
        out["tensor_peak"] = _tensor_peak(step)
    print(json.dumps(out))


def _tensor_peak(step) -> int:  # noqa: ANN001
    """Peak bytes of live tensors during one more step, from the profiler's allocation events."""
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline  # no public API for CPU yet

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        step()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    return int(np.array(sizes).sum(axis=1).max())


def run(args: argparse.Namespace, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--width", str(args.width), "--patch", str(args.patch),
           "--batch", str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads),
           "--in-channels", str(args.in_channels), "--classes", str(args.classes),
           "--dints-blocks", str(args.dints_blocks), "--dints-depths", str(args.dints_depths), *extra]
    if not args.dints_reg:
        cmd.append("--no-dints-reg")
    if args.dints_full_res:
        cmd.append("--dints-full-res")
    if args.tensor_peak:
        cmd.append("--tensor-peak")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")  # freed activations go back (search_step.py)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def flops(args: argparse.Namespace) -> dict[str, float]:
    """Multiply-accumulates of one forward pass (``torch.utils.flop_counter``, no gradient): DiNTS (every
    path and operation runs), scnas with one pair draw (what a step runs) and with every candidate (``full``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, args.in_channels, *(args.patch,) * 3)
    out = {}
    for name in ("scnas", "scnas_full", "dints"):
        net = dints_model(args)[0] if name == "dints" else scnas_model(args)
        if name == "scnas_full":
            net.sampling = "full"
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x)
        out[name] = counter.get_total_flops() / 2
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=8, help="scnas stem width; DiNTS channel_mul = width / 32")
    parser.add_argument("--patch", type=int, default=64, help="patch size per dimension")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--in-channels", type=int, default=4)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--dints-blocks", type=int, default=4)
    parser.add_argument("--dints-depths", type=int, default=3)
    parser.add_argument("--dints-full-res", action="store_true",
                        help="DiNTS with use_downsample=False: its cells at full resolution, as scnas' level 0")
    parser.add_argument("--no-dints-reg", dest="dints_reg", action="store_false",
                        help="DiNTS' architecture step without the tutorial's entropy/RAM/topology losses")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per process (after one warm-up step)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per network, alternated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tensor-peak", action="store_true", help="also the profiler's peak of live tensors")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--imports-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint-cells", action="store_true",
                        help="also scnas with per-cell checkpointing (net.checkpoint_cells = True), a third process "
                             "per round; reported below the table against the same DiNTS runs")
    parser.add_argument("--net", choices=("scnas", "dints", "scnas_ckpt"), default="scnas", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    base = run(args, "--imports-only")["peak"]
    nets = ("scnas", "dints", "scnas_ckpt") if args.checkpoint_cells else ("scnas", "dints")
    results: dict[str, list[dict]] = {name: [] for name in nets}
    for r in range(args.rounds):
        for name in nets if r % 2 == 0 else nets[::-1]:
            res = run(args, "--net", name)
            res["memory"] = res["peak"] - base
            results[name].append(res)
            print(f"round {r + 1} {name:>10}: {res['time']:.2f} s/step (weight {res['weight']:.2f} + arch "
                  f"{res['arch']:.2f}), {res['memory'] / 2**20:.0f} MiB above imports", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    macs = flops(args)
    print(f"\npatch {args.patch}^3, batch {args.batch}, {args.in_channels} channels in, {args.classes} classes, "
          f"width {args.width}; DiNTS {args.dints_blocks} blocks, {args.dints_depths} depths, "
          f"use_downsample={not args.dints_full_res}, regularisers {'on' if args.dints_reg else 'off'}; "
          f"{args.threads} threads; {args.rounds} alternated rounds x {args.steps} steps; "
          f"load average {load:.1f} at the end\n")
    print("| | scnas (pair) | DiNTS | scnas / DiNTS |")
    print("| --- | --- | --- | --- |")

    def row(label: str, key: str, reduce, fmt: str, scale: float = 1.0) -> None:  # noqa: ANN001
        s = reduce([r[key] for r in results["scnas"]]) * scale
        d = reduce([r[key] for r in results["dints"]]) * scale
        print(f"| {label} | {s:{fmt}} | {d:{fmt}} | **{s / d:.2f}** |" if key in ("time", "memory")
              else f"| {label} | {s:{fmt}} | {d:{fmt}} | {s / d:.2f} |")

    row("step time, best of rounds (s)", "time", min, ".2f")
    row("step time, median of rounds (s)", "time", statistics.median, ".2f")
    row("CPU time of the step (all threads), median (s)", "cpu", statistics.median, ".2f")
    row("weight step, best (s)", "weight", min, ".2f")
    row("architecture step, best (s)", "arch", min, ".2f")
    row("peak RSS above imports, median (MiB)", "memory", statistics.median, ".0f", 2**-20)
    if args.tensor_peak:
        row("tensor peak, median (MiB)", "tensor_peak", statistics.median, ".0f", 2**-20)
    row("parameters (millions)", "params", min, ".3f", 1e-6)
    print(f"| forward GMACs (scnas: one pair draw) | {macs['scnas'] / 1e9:.2f} | {macs['dints'] / 1e9:.2f} | "
          f"{macs['scnas'] / macs['dints']:.2f} |")
    print(f"| forward GMACs, every candidate | {macs['scnas_full'] / 1e9:.2f} | {macs['dints'] / 1e9:.2f} | "
          f"{macs['scnas_full'] / macs['dints']:.2f} |")
    if args.checkpoint_cells:
        c, d = results["scnas_ckpt"], results["dints"]
        for label, key, scale, fmt in (("step time, median (s)", "time", 1.0, ".2f"),
                                       ("CPU time, median (s)", "cpu", 1.0, ".2f"),
                                       ("peak RSS above imports, median (MiB)", "memory", 2**-20, ".0f")):
            cv, dv = (statistics.median(r[key] for r in runs) for runs in (c, d))
            print(f"| scnas checkpointed: {label} | {cv * scale:{fmt}} | {dv * scale:{fmt}} | **{cv / dv:.2f}** |")


if __name__ == "__main__":
    main()
