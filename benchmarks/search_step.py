"""Time and peak memory of one search step for pair, single and full sampling (run by hand).

One search step = forward, backward and Adam update of the weights on a training batch, then forward,
backward and Adam update of the architecture logits on an architecture batch (the paper's alternation).
Operation sets of 8, 16 and 32 operations are the paper's eight repeated 1, 2 and 4 times, so an
operation's mean cost stays the same while the set grows.

Every (sampling, set size) runs in a fresh interpreter. Peak memory on the CPU is the child's maximum
resident set size minus that of an interpreter that has only imported the same modules (on CUDA:
``torch.cuda.max_memory_allocated``). The child also prints scnas' own estimate of the step's training
memory (``scnas_dsl.nn.cost.estimate``) so that the estimate can be checked against the measurement.

    .venv/bin/python benchmarks/search_step.py --width 16 --patch 32 --ops 8 16 32

``--compare`` measures the pair step's memory savings instead (issue 10): "before" with them switched off
(the weight step draws with alpha's graph, every operation activates its own input, both operations of
every pair run), "after" (the defaults), and "after" with per-cell checkpointing, alternating the three
``--repeats`` times, at each ``--temperatures`` (early in the annealing no pair is lopsided, late most are):

    .venv/bin/python benchmarks/search_step.py --compare --cells unet --width 8 --node-width full \\
        --patch 32 --temperatures 5 0.1 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _space(cells: str, copies: int, width: int, dims: int, node_width: str = "split"):  # noqa: ANN202
    from scnas_dsl.model import Block, CellRef, CellSpec, OpCall, OpSet, OpSpec, Param, SearchSpace, Topology

    paper = [("conv3", "conv", {"kernel": 3}), ("dil2", "sep_conv", {"kernel": 3, "dilation": 2}),
             ("dil3", "sep_conv", {"kernel": 3, "dilation": 3}), ("dil4", "sep_conv", {"kernel": 3, "dilation": 4}),
             ("maxpool", "max_pool", {"kernel": 3}), ("avgpool", "avg_pool", {"kernel": 3}),
             ("skip", "identity", {}), ("none", "zero", {})]
    ops = tuple(
        OpSpec(name=name if c == 0 else f"{name}_{c}",
               call=OpCall(kind=kind, params=tuple(Param(name=k, value=v) for k, v in params.items())))
        for c in range(copies) for name, kind, params in paper
    )
    roles = {"enc": "normal", "red": "reduction", "dec": "normal", "exp": "expansion"}
    specs = tuple(CellSpec(name=n, role=r, nodes=4, inputs=2, ops="ops") for n, r in roles.items())  # type: ignore[arg-type]
    if cells == "two":  # two normal cells of the paper's shape at full resolution
        encoder, bridge, decoder = ["enc"], [], ["dec"]
    else:  # the paper's 12-cell U-Net
        encoder, bridge, decoder = ["red", "enc", "red", "enc", "red"], ["enc"], ["exp", "dec"] * 3
    topo = Topology(dims=dims, stem=Block(call=OpCall(kind="conv_block"), width=width),
                    encoder=tuple(CellRef(name=n) for n in encoder), bridge=tuple(CellRef(name=n) for n in bridge),
                    decoder=tuple(CellRef(name=n) for n in decoder), head=Block(call=OpCall(kind="logits")),
                    node_width=node_width)  # type: ignore[arg-type]
    return SearchSpace(name="bench", opsets=(OpSet(name="ops", ops=ops),), cells=specs, unet=topo)


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(args: argparse.Namespace) -> None:
    """One configuration: build, warm up, time ``--steps`` search steps, print JSON."""
    import torch

    from scnas_dsl.nn import build_supernet

    if args.imports_only:
        print(json.dumps({"peak": _peak_bytes()}))
        return
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    space = _space(args.cells, args.copies, args.width, args.dims, args.node_width)
    patch = (args.patch,) * args.dims
    net = build_supernet(space, in_channels=1, num_classes=2, sampling=args.mode, seed=0)
    if args.temperature is not None:
        net.temperature = args.temperature
    if args.before:  # the pair step before issue 10's savings
        net.share_activations, net.dominant_threshold = False, 0.0
    net.checkpoint_cells = args.checkpoint
    weights, logits = net.weight_parameters(), net.arch_parameters()
    w_opt = torch.optim.Adam(weights, lr=0.025, betas=(0.1, 0.001))
    a_opt = torch.optim.Adam(logits, lr=0.003, betas=(0.5, 0.999))
    x = torch.randn(args.batch, 1, *patch)
    y = torch.randint(0, 2, (args.batch, *patch))
    loss_fn = torch.nn.CrossEntropyLoss()

    def update(params: list, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        # as the search does: gradients of this group only, released after its step
        for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True), strict=True):
            p.grad = g
        opt.step()
        opt.zero_grad(set_to_none=True)

    def step() -> None:
        update(weights, w_opt, loss_fn(net(x, arch_grad=args.before), y))  # the weight step
        update(logits, a_opt, loss_fn(net(x), y))  # the architecture step

    times = []
    for i in range(args.steps + 1):
        start = time.perf_counter()
        step()
        if i:  # the first step allocates Adam state and warms up the allocator
            times.append(time.perf_counter() - start)
    peak = _peak_bytes()  # read before the profiled step below, whose bookkeeping must not count
    # the fastest step: on a shared machine the other steps measure the neighbours as well
    print(json.dumps({"time": min(times), "peak": peak, "tensor_peak": _tensor_peak(step)}))


def _tensor_peak(step) -> int:  # noqa: ANN001
    """Peak bytes of live tensors during one more step, from the profiler's allocation events: the same
    peak without the C allocator's caching and fragmentation (CPU tensors only)."""
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline  # no public API for CPU yet

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        step()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    return int(np.array(sizes).sum(axis=1).max())


def run(args: argparse.Namespace, **extra: object) -> dict:
    cmd = [sys.executable, __file__, "--child", "--width", str(args.width), "--patch", str(args.patch),
           "--dims", str(args.dims), "--batch", str(args.batch), "--steps", str(args.steps),
           "--threads", str(args.threads), "--cells", args.cells, "--node-width", args.node_width]
    for key, value in extra.items():
        flag = "--" + key.replace("_", "-")
        if value is not False and value is not None:
            cmd += [flag] if value is True else [flag, str(value)]
    env = dict(os.environ)
    if not args.glibc_default:
        # glibc raises its mmap threshold after every large free, so freed activations stay in the heap and
        # the resident size keeps growing from step to step; a fixed threshold returns them, and the peak
        # RSS then measures what the step needs (as torch.cuda.max_memory_allocated does on a GPU)
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=16, help="stem width")
    parser.add_argument("--patch", type=int, default=32, help="patch size per dimension")
    parser.add_argument("--dims", type=int, default=3, choices=(2, 3))
    parser.add_argument("--node-width", choices=("split", "full"), default="split",
                        help="the space's node_width (full: the widths of runs before split existed)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cells", choices=("two", "unet"), default="two",
                        help="two normal cells at full resolution, or the paper's 12-cell U-Net")
    parser.add_argument("--ops", type=int, nargs="+", default=[8, 16, 32], help="operation set sizes")
    parser.add_argument("--modes", nargs="+", default=["pair", "single", "full"])
    parser.add_argument("--glibc-default", action="store_true",
                        help="keep glibc's adaptive mmap threshold (peaks then include its retained heap)")
    parser.add_argument("--compare", action="store_true",
                        help="pair step before / after issue 10's memory savings / after with checkpointing")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[5.0, 0.1],
                        help="with --compare: the temperatures to measure at (default: start and end)")
    parser.add_argument("--repeats", type=int, default=2, help="with --compare: rounds of the three")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--temperature", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--before", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--imports-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="pair", help=argparse.SUPPRESS)
    parser.add_argument("--copies", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.compare:
        compare(args)
        return
    for n in args.ops:
        if n % 8:
            parser.error(f"--ops {n}: operation sets grow by copies of the paper's eight")
    from scnas_dsl.nn.cost import estimate

    base = run(args, imports_only=True)["peak"]
    results: dict[tuple[str, int], dict] = {}
    for n in args.ops:
        # scnas' own estimate (meta device, here in the parent so that it cannot touch the children's peaks)
        report = estimate(_space(args.cells, n // 8, args.width, args.dims, args.node_width), patch=(args.patch,) * args.dims,
                          batch_size=args.batch, in_channels=1, num_classes=2, draws=8)
        for mode in args.modes:
            r = run(args, mode=mode, copies=n // 8)
            r["memory"] = r["peak"] - base
            r["estimate"] = report.steps[mode].memory_bytes
            r.setdefault("tensor_peak", 0)
            results[(mode, n)] = r
            print(f"{mode:>6} {n:>2} ops: {r['time']:.3f} s/step, peak {r['memory'] / 2**20:.0f} MiB above "
                  f"imports, estimate {r['estimate'] / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    malloc = "glibc default malloc" if args.glibc_default else "MALLOC_MMAP_THRESHOLD_=131072"
    print(f"\n{args.cells} cells, stem width {args.width} (node_width {args.node_width}), patch {args.patch}^{args.dims}, batch {args.batch}, "
          f"{args.threads} threads, fastest of {args.steps} steps, {malloc}\n")
    print("| sampling | ops | time / step (s) | time / full | peak memory (MiB) | memory / full | "
          "estimate (MiB) | estimate / peak | tensor peak (MiB) | estimate / tensor peak |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in args.ops:
        full = results.get(("full", n))
        for mode in args.modes:
            r = results[(mode, n)]
            t_ratio = f"{r['time'] / full['time']:.2f}" if full else "-"
            m_ratio = f"{r['memory'] / full['memory']:.2f}" if full else "-"
            tensor = r["tensor_peak"]
            print(f"| {mode} | {n} | {r['time']:.3f} | {t_ratio} | {r['memory'] / 2**20:.0f} | {m_ratio} | "
                  f"{r['estimate'] / 2**20:.0f} | {r['estimate'] / r['memory']:.2f} | {tensor / 2**20:.0f} | "
                  f"{r['estimate'] / tensor if tensor else float('nan'):.2f} |")
    if "pair" in args.modes and len(args.ops) > 1:
        first, last = results[("pair", args.ops[0])], results[("pair", args.ops[-1])]
        print(f"\npair from {args.ops[0]} to {args.ops[-1]} operations: time x{last['time'] / first['time']:.2f}, "
              f"memory x{last['memory'] / first['memory']:.2f}")
    if "full" in args.modes and len(args.ops) > 1:
        first, last = results[("full", args.ops[0])], results[("full", args.ops[-1])]
        print(f"full from {args.ops[0]} to {args.ops[-1]} operations: time x{last['time'] / first['time']:.2f}, "
              f"memory x{last['memory'] / first['memory']:.2f}")


COMPARED = {"before": {"before": True}, "after": {}, "after, checkpointed": {"checkpoint": True}}


def compare(args: argparse.Namespace) -> None:
    """The pair step before and after the memory savings, and after with per-cell checkpointing: the three
    alternate, ``--repeats`` rounds, fastest time and smallest peaks of all rounds."""
    from scnas_dsl.nn.cost import estimate

    base = run(args, imports_only=True)["peak"]
    space = _space(args.cells, 1, args.width, args.dims, args.node_width)
    rows: dict[tuple[float, str], dict] = {}
    for tau in args.temperatures:
        for _ in range(args.repeats):
            for name, extra in COMPARED.items():
                r = run(args, mode="pair", temperature=tau, **extra)
                best = rows.setdefault((tau, name), r)
                for key in ("time", "peak", "tensor_peak"):
                    best[key] = min(best[key], r[key])
                print(f"tau {tau:g} {name:>19}: {r['time']:.3f} s/step, tensor peak "
                      f"{r['tensor_peak'] / 2**20:.0f} MiB, peak RSS {(r['peak'] - base) / 2**20:.0f} MiB "
                      "above imports", file=sys.stderr, flush=True)
    # scnas' estimate of the pair step (at the first temperature's logits: zeros; at each temperature)
    print(f"\n{args.cells} cells, stem width {args.width} (node_width {args.node_width}), patch "
          f"{args.patch}^{args.dims}, batch {args.batch}, {args.threads} threads, pair sampling, fastest of "
          f"{args.steps} steps x {args.repeats} rounds\n")
    print("| tau | step | time / step (s) | time / before | tensor peak (MiB) | tensor peak / before | "
          "peak RSS / before | estimate / tensor peak |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for tau in args.temperatures:
        net_report = None
        for name in COMPARED:
            r, b = rows[(tau, name)], rows[(tau, "before")]
            if name != "before" and net_report is None:
                from scnas_dsl.nn import build_supernet

                net = build_supernet(space, in_channels=1, num_classes=2, sampling="pair", seed=0)
                net.temperature = tau
                net_report = estimate(net, patch=(args.patch,) * args.dims, batch_size=args.batch, draws=8)
            if net_report is None:
                est = "-"
            else:
                step = net_report.steps["pair"]
                kept = step.checkpointed_memory_bytes if "checkpointed" in name else step.memory_bytes
                est = f"{kept / r['tensor_peak']:.2f}"
            print(f"| {tau:g} | {name} | {r['time']:.3f} | {r['time'] / b['time']:.2f} | "
                  f"{r['tensor_peak'] / 2**20:.0f} | {r['tensor_peak'] / b['tensor_peak']:.2f} | "
                  f"{(r['peak'] - base) / (b['peak'] - base):.2f} | {est} |")


if __name__ == "__main__":
    main()
