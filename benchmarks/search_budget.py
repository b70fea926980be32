"""Search under a FLOPs budget: does the derived genotype respect the budget, and what does the budget cost in
retrained Dice? A study run by hand; results in docs/benchmarks.md ("Search under a budget").

It reuses benchmarks/search_validity.py's planted task, space, data, search and retraining recipe (``Bench``):

1. ``search``: pair searches without a budget (``--seeds``); the budget's reference is the median FLOPs of
   their derived genotypes (``scnas_dsl.nn.cost.estimate``, as ``scnas compile``).
2. ``budget``: the same searches with ``budget=BudgetConfig(flops=f * reference)`` for every fraction of
   ``--fractions`` (default 0.75, 0.5, 0.25), every seed; each derived genotype's FLOPs against its budget, the
   search's expected cost at the end and what the fitting gave up.
3. ``retrain``: every derived genotype (``--retrain-seeds``) and, per level, ``--random`` random genotypes: without
   a budget, within 10% of the FLOPs of the median derived genotype; with one, random genotypes fitted into the
   same budget by the same fitting as the search's choice, with random preferences (random search under the
   budget: drawn genotypes under 50% or 25% of the reference are too rare to match by rejection). Retrained
   Dice against FLOPs, the curve a user reads to pick a budget; one-sided permutation tests searched > random
   per level.
4. ``report``: tables in Markdown, ``results.json`` and ``search_budget.png`` in the output folder.

    .venv/bin/python benchmarks/search_budget.py --jobs 2 --retrain-seeds 0 1 --random 4                    # weight 0.1
    .venv/bin/python benchmarks/search_budget.py --jobs 2 --retrain-seeds 0 1 --random 4 --budget-weight 1  # the other arm
    .venv/bin/python benchmarks/search_budget.py --quick --out /tmp/sb-q    # smoke run, ~2 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import search_validity as sv  # noqa: E402  (the planted task, its space and recipe)


def budget_search(bench: sv.Bench, seed: int, flops: float | None, weight: float, ramp: float) -> dict[str, Any]:
    """One pair search (the study's betas), with a FLOPs budget or none; the derived genotype and its costs."""
    from scnas_dsl.graph.printer import print_document
    from scnas_dsl.loader import load
    from scnas_dsl.model import Document, Import
    from scnas_dsl.nn.cost import estimate
    from scnas_dsl.training.config import AdamConfig, BudgetConfig, SearchConfig, SelectionConfig
    from scnas_dsl.training.search import run_search

    a = bench.args
    if flops is None:  # no penalty: the unbudgeted runs are the same whatever the penalty settings
        weight, ramp = 1.0, 0.25
    tag = "none" if flops is None else f"{flops / 1e6:.1f}M"
    if flops is not None and (weight, ramp) != (1.0, 0.25):  # the first arm's runs (weight 1) keep their names
        tag += f"_w{weight:g}_r{ramp:g}"
    name = f"budget_{tag}_s{seed}".replace(".", "p")
    settings = {"seed": seed, "flops": flops, "weight": weight, "ramp": ramp, "epochs": a.search_epochs,
                "steps": a.search_steps, "batch": a.batch_size, "patch": list(a.patch), "stem_width": a.stem_width,
                "weight_lr": a.search_lr, "arch_lr": a.arch_lr, "betas": a.betas, "data": bench._data_key()}
    cached = bench._cached(name, settings)
    if cached is not None:
        return cached
    budget = BudgetConfig(flops=flops, weight=weight, ramp=ramp) if flops is not None else None
    cfg = SearchConfig(data=str(bench.pre), spec=str(bench.space_file), out=str(bench.runs / name),
                       epochs=a.search_epochs, batches_per_epoch=a.search_steps, batch_size=a.batch_size,
                       patch=tuple(a.patch), stem_width=a.stem_width, device=a.device, seed=seed, spacing=None,
                       augment=False, progress=False, sampling="pair",
                       weight_optimizer=AdamConfig(lr=a.search_lr, betas=sv.BETAS[a.betas]),
                       arch_optimizer=AdamConfig(lr=a.arch_lr, betas=(0.5, 0.999)),
                       selection=SelectionConfig(method="alpha", check_samples=0), budget=budget)
    started = time.time()
    result = run_search(cfg, force=True)
    assert result is not None
    gname = name
    genotype = result.genotype.model_copy(update={"name": gname})
    text = print_document(Document(imports=(Import(path="space.scn"),), genotypes=(genotype,)))
    space = load(bench.space_file).space(sv.SPACE_NAME)
    cost = estimate(space, genotype=genotype, patch=tuple(a.patch), in_channels=1, num_classes=2,
                    stem_width=a.stem_width)
    records = [json.loads(line) for line in (bench.runs / name / "metrics.jsonl").read_text().splitlines()]
    trace = [r.get("budget") for r in records]
    record = {"settings": settings, "name": gname, "seed": seed, "budget": flops, "genotype_text": text,
              "flops": cost.flops, "params": cost.params, "op_counts": sv.op_counts(genotype),
              "planted_share": sv.planted_share(genotype), "enc_chain": sv.enc_chain(genotype),
              "budget_result": result.budget, "trace": trace, "seconds": round(time.time() - started, 1)}
    within = "" if flops is None else f" ({100 * cost.flops / flops:.0f}% of the budget)"
    print(f"  searched {gname}: {cost.flops / 1e6:.1f} MFLOPs{within}, {sv.PLANTED} share "
          f"{record['planted_share']:.2f} ({record['seconds']:.0f} s)", flush=True)
    return bench._store(name, record)


def _job(args: argparse.Namespace, kind: str, payload: tuple[Any, ...]) -> Any:
    import torch

    torch.set_num_threads(args.threads)
    bench = sv.Bench(args)
    if kind == "search":
        return budget_search(bench, *payload)
    return bench.retrain(*payload)


def run_jobs(args: argparse.Namespace, jobs: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
    if args.jobs <= 1 or len(jobs) <= 1:
        return [_job(args, kind, payload) for kind, payload in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_job, args, kind, payload) for kind, payload in jobs]
        return [f.result() for f in futures]


def random_like(bench: sv.Bench, text: str, name: str, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` random genotypes within the tolerance of the FLOPs of the genotype ``name`` in ``text``."""
    from scnas_dsl.graph.printer import print_document
    from scnas_dsl.loader import load, load_text
    from scnas_dsl.model import Document, Import
    from scnas_dsl.nn.random_genotypes import sample_genotypes

    a = bench.args
    space = load(bench.space_file).space(sv.SPACE_NAME)
    _, like = load_text(text, base_dir=bench.genotypes).genotype(name)
    samples = sample_genotypes(space, n, seed=seed, like=like, match="flops", tolerance=a.tolerance,
                               patch=tuple(a.patch), in_channels=1, num_classes=2, stem_width=a.stem_width,
                               name_prefix=f"random_{name}", max_draws=a.max_draws)
    return [(s.genotype.name, print_document(Document(imports=(Import(path="space.scn"),), genotypes=(s.genotype,))))
            for s in samples]


def random_within(bench: sv.Bench, budget: float, n: int, seed: int, prefix: str, floor: float = 0.0
                  ) -> list[tuple[str, str]]:
    """``n`` distinct random genotypes fitted into a FLOPs budget: each drawn genotype over the budget goes
    through the same fitting as a search's choice (``CostModel.fit``) with random preferences, so the baseline
    is "random search under the same budget" (drawn genotypes below the budget are rare at 50% and 25%).
    ``floor``: keep only genotypes of at least these FLOPs (with ``budget``, a FLOPs-matched band)."""
    import torch

    from scnas_dsl.graph.printer import print_document
    from scnas_dsl.loader import load
    from scnas_dsl.model import Document, Import
    from scnas_dsl.nn.budget import CostModel
    from scnas_dsl.nn.random_genotypes import draw_genotypes

    a = bench.args
    space = load(bench.space_file).space(sv.SPACE_NAME)
    costs = CostModel(space, patch=tuple(a.patch), batch_size=a.batch_size, in_channels=1, num_classes=2,
                      stem_width=a.stem_width)
    generator = torch.Generator().manual_seed(seed)
    out: list[tuple[str, str]] = []
    seen: set[Any] = set()
    for drawn in draw_genotypes(space, seed=seed):
        preference = {k: torch.rand(len(costs.edges[k]), len(costs.op_names[k]), generator=generator,
                                    dtype=torch.float64) for k in costs.keys}
        name = f"{prefix}_{len(out):03d}"
        fitted = costs.fit(drawn.model_copy(update={"name": name}), preference, {"flops": budget}, name)
        if not fitted.within or fitted.costs["flops"] < floor or fitted.genotype.cells in seen:
            continue
        seen.add(fitted.genotype.cells)
        out.append((name, print_document(Document(imports=(Import(path="space.scn"),), genotypes=(fitted.genotype,)))))
        if len(out) == n:
            return out
    return out


def median_of(searches: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(searches, key=lambda s: s["flops"])
    return ordered[len(ordered) // 2]


def main(argv: list[str] | None = None) -> None:
    p = sv.build_parser(__doc__, out="scnas-search-budget", phases=("search", "budget", "retrain", "report"))
    g = p.add_argument_group("budget study")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search seeds at every budget level")
    g.add_argument("--fractions", type=float, nargs="+", default=[0.75, 0.5, 0.25],
                   help="budgets as fractions of the unbudgeted genotypes' median FLOPs")
    g.add_argument("--betas", default="standard", choices=sorted(sv.BETAS), help="the searches' weight-Adam betas")
    g.add_argument("--budget-weight", type=float, default=0.1, help="the penalty's weight (scnas' default)")
    g.add_argument("--budget-ramp", type=float, default=0.25)
    g.add_argument("--max-draws", type=int, default=4000, help="random draws to find FLOPs-matched genotypes")
    g.add_argument("--matched", type=int, default=0,
                   help="also, per budget level, this many random genotypes within --tolerance of the median searched "
                        "genotype's FLOPs (drawn, then fitted into that band)")
    args = p.parse_args(argv)
    if args.quick:
        sv.quick_sizes(args)
        args.seeds, args.fractions = [0], [0.5]
    if args.retrain_seeds is None:
        args.retrain_seeds = [args.train_seed]
    started = sv.start(args)
    bench = sv.Bench(args)
    bench.prepare_data()
    w, r = args.budget_weight, args.budget_ramp
    print("search: no budget", flush=True)
    free = run_jobs(args, [("search", (s, None, w, r)) for s in args.seeds])
    reference = float(median_of(free)["flops"])
    budgets = [f * reference for f in args.fractions]
    print(f"budget: reference {reference / 1e6:.2f} MFLOPs (median of the unbudgeted genotypes); budgets "
          + ", ".join(f"{b / 1e6:.2f}M" for b in budgets), flush=True)
    budgeted = run_jobs(args, [("search", (s, b, w, r)) for b in budgets for s in args.seeds])
    levels: list[dict[str, Any]] = [{"fraction": 1.0, "budget": None, "searches": free}]
    for f, b in zip(args.fractions, budgets, strict=True):
        levels.append({"fraction": f, "budget": b, "searches": [s for s in budgeted if s["budget"] == b]})
    if "retrain" not in args.phases:
        print(json.dumps([{k: v for k, v in lv.items() if k != "searches"} for lv in levels]))
        return
    print("retrain", flush=True)
    jobs: list[tuple[str, tuple[Any, ...]]] = []
    for i, level in enumerate(levels):
        mid = median_of(level["searches"])
        if level["budget"] is None:  # FLOPs-matched (within --tolerance) to the median searched genotype
            level["random"] = random_like(bench, mid["genotype_text"], mid["name"], args.random, args.random_seed + i)
        else:  # random genotypes fitted into the same budget
            level["random"] = random_within(bench, level["budget"], args.random, args.random_seed + i,
                                            f"random_{int(100 * level['fraction'])}")
        jobs += [("train", (s["name"], s["genotype_text"], seed)) for s in level["searches"]
                 for seed in args.retrain_seeds]
        jobs += [("train", (n, t, seed)) for n, t in level["random"] for seed in args.retrain_seeds]
        level["matched"] = []
        if args.matched and level["budget"] is not None:  # within --tolerance of the median searched genotype
            target = float(mid["flops"])
            level["matched"] = random_within(bench, (1 + args.tolerance) * target, args.matched,
                                             args.random_seed + 100 + i, f"matched_{int(100 * level['fraction'])}",
                                             floor=(1 - args.tolerance) * target)
            jobs += [("train", (n, t, seed)) for n, t in level["matched"] for seed in args.retrain_seeds]
    trained = run_jobs(args, jobs)
    dice: dict[str, list[float]] = {}
    flops: dict[str, float] = {}
    for t in trained:
        dice.setdefault(t["name"], []).append(float(t["dice"]))
        flops[t["name"]] = float(t["flops"])
    summary = []
    for level in levels:
        searched = [statistics.fmean(dice[s["name"]]) for s in level["searches"]]
        random_ = [statistics.fmean(dice[n]) for n, _ in level["random"]]
        summary.append({
            "fraction": level["fraction"], "budget": level["budget"],
            "searched": [{"name": s["name"], "flops": s["flops"], "dice": statistics.fmean(dice[s["name"]]),
                          "dice_seeds": dice[s["name"]], "within": level["budget"] is None or s["flops"] <= level["budget"],
                          "share_of_budget": None if level["budget"] is None else s["flops"] / level["budget"],
                          "gave_up": len((s.get("budget_result") or {}).get("gave_up", [])),
                          "planted_share": s["planted_share"], "op_counts": s["op_counts"]}
                         for s in level["searches"]],
            "random": [{"name": n, "flops": flops[n], "dice": statistics.fmean(dice[n])} for n, _ in level["random"]],
            "searched_mean": sv.mean_std(searched), "random_mean": sv.mean_std(random_),
            "p_searched_gt_random": sv.permutation_test(searched, random_),
            "matched": [{"name": n, "flops": flops[n], "dice": statistics.fmean(dice[n]), "dice_seeds": dice[n]}
                        for n, _ in level["matched"]]})
        matched = [statistics.fmean(dice[n]) for n, _ in level["matched"]]
        if matched:
            summary[-1].update(matched_mean=sv.mean_std(matched),
                               p_searched_gt_matched=sv.permutation_test(searched, matched))
    seeds_std = [statistics.stdev(v) for v in dice.values() if len(v) > 1]
    out = {"reference_flops": reference, "levels": summary, "args": vars(args),
           "noise_floor": statistics.fmean(seeds_std) if seeds_std else None,
           "noise_floor_median": statistics.median(seeds_std) if seeds_std else None,
           "seconds": round(time.time() - started, 1)}
    (bench.out / "results.json").write_text(json.dumps(out, indent=1) + "\n")
    print_tables(out)
    plot(bench, out)
    print(f"done in {time.time() - started:.0f} s; results in {bench.out}", flush=True)


def print_tables(out: dict[str, Any]) -> None:
    print("\n| budget | seed | derived MFLOPs | of budget | choices given up | retrained Dice |")
    print("| --- | --- | --- | --- | --- | --- |")
    for level in out["levels"]:
        label = "none" if level["budget"] is None else f"{level['fraction']:.0%} = {level['budget'] / 1e6:.2f}M"
        for s in level["searched"]:
            share = "" if s["share_of_budget"] is None else f"{100 * s['share_of_budget']:.0f}%"
            print(f"| {label} | {s['name'].rsplit('_s', 1)[1]} | {s['flops'] / 1e6:.2f} | {share} | {s['gave_up']} | "
                  f"{s['dice']:.3f} |")
    print("\n| budget | searched Dice (mean ± sd) | FLOPs-matched random Dice (mean ± sd, n) | p (searched > random) |")
    print("| --- | --- | --- | --- |")
    for level in out["levels"]:
        label = "none" if level["budget"] is None else f"{level['fraction']:.0%}"
        sm, rm = level["searched_mean"], level["random_mean"]
        print(f"| {label} | {sm[0]:.3f} ± {sm[1]:.3f} | {rm[0]:.3f} ± {rm[1]:.3f} ({len(level['random'])}) | "
              f"{level['p_searched_gt_random']:.3f} |")
    if any(level.get("matched") for level in out["levels"]):
        print("\n| budget | searched Dice | FLOPs-matched random Dice (mean ± sd, n; MFLOPs) | p (searched > matched) |")
        print("| --- | --- | --- | --- |")
        for level in out["levels"]:
            if not level.get("matched"):
                continue
            sm, mm = level["searched_mean"], level["matched_mean"]
            band = [m["flops"] / 1e6 for m in level["matched"]]
            print(f"| {level['fraction']:.0%} | {sm[0]:.3f} ± {sm[1]:.3f} | {mm[0]:.3f} ± {mm[1]:.3f} "
                  f"({len(band)}; {min(band):.1f}-{max(band):.1f}) | {level['p_searched_gt_matched']:.3f} |")


def plot(bench: sv.Bench, out: dict[str, Any]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.5))
    ax = figure.add_subplot()
    colours = ["black", "tab:blue", "tab:orange", "tab:red", "tab:green", "tab:purple"]
    for i, level in enumerate(out["levels"]):
        c = colours[i % len(colours)]
        label = "no budget" if level["budget"] is None else f"budget {level['fraction']:.0%}"
        ax.scatter([s["flops"] / 1e6 for s in level["searched"]], [s["dice"] for s in level["searched"]], color=c,
                   marker="o", s=50, label=f"searched, {label}")
        ax.scatter([r["flops"] / 1e6 for r in level["random"]], [r["dice"] for r in level["random"]], color=c,
                   marker="x", s=30, alpha=0.7)
        if level["budget"] is not None:
            ax.axvline(level["budget"] / 1e6, color=c, linestyle="--", linewidth=1)
    ax.set_xlabel("MFLOPs of the genotype (forward, one sample)")
    ax.set_ylabel("retrained validation Dice")
    weight = out["args"].get("budget_weight", 1.0)
    ax.set_title(f"FLOPs budget (penalty weight {weight:g}): searched (o); random (x): FLOPs-matched without a "
                 "budget,\nfitted into it with one; dashed: the budgets", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(bench.out / f"search_budget_w{weight:g}.png", dpi=110)


if __name__ == "__main__":
    main()
