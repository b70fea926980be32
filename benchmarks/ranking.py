"""Does the trained supernet rank genotypes as retraining does? A study run by hand; results in docs/benchmarks.md.

The task, the data, the space, the hand genotypes and the retraining are those of
benchmarks/search_validity.py (the planted ``maxpool`` task: peaks of 5x5x5 neighbourhoods in noise, whose
answer is two chained 3x3x3 max poolings in the ``enc`` cell). Phases (``--phases``, default all, in this order;
a finished run is reused when its settings are unchanged, so an interrupted study continues where it stopped):

1. ``data``: the generated data set and its preprocessing (search_validity.py's), under ``OUT/data``.
2. ``recipe``: the retraining noise floor of each candidate recipe (``--recipes EPOCHSxSTEPS@LR ...``): the
   all-``conv3`` and the hand ``maxpool`` genotypes, ``--seeds`` seeds each. The study's own recipe is the one
   of ``--train-epochs``, ``--train-steps``, ``--train-lr``.
3. ``search``: a pair search (the project's default weight betas, (0.9, 0.999)) and a fair search (FairNAS),
   ``--search-seed``, with an architecture warm-up of ``--arch-warmup`` epochs of ``--search-epochs``; each pauses
   at the end of its warm-up (``run_search(stop_after_epochs=...)``), a copy of the run folder is kept as the
   warm-up snapshot, and it resumes.
4. ``select``: the searched genotypes: alpha and projection of the pair search, projection and sampled of the
   fair search (``scnas_dsl.training.derive_run.derive`` on the run folder, the project's default
   ``SelectionConfig`` otherwise), with each one's self-check.
5. ``retrain``: the genotypes (``--uniform`` uniform random, ``--random`` FLOPs-matched random to the searched
   genotypes' median, the searched ones, the hand ``maxpool`` genotype, all-``conv3``), ``--seeds`` seeds each;
   score: the validation Dice of the last epoch (no model selection).
6. ``score``: the supernet score (loss, Dice; ``SupernetScorer.score_genotype`` via
   ``derive_run.rank``) of every genotype at each snapshot: pair end of warm-up, pair end, fair end of warm-up,
   fair end.
7. ``report``: Kendall's tau between supernet Dice (and loss) and the mean retrained Dice per snapshot, with a
   bootstrap 95% interval over genotypes; the noise floor (mean per-genotype seed std against the std of the
   genotype means); ``results.json`` and ``ranking.png`` in ``OUT/ranking``; Markdown tables printed.

The output folder can be shared with search_validity.py (``--out`` of both, the same data and search settings):
the pair search, its selections and the retraining runs are then computed once.

    .venv/bin/python benchmarks/ranking.py --jobs 2                      # CPU scale (docs/benchmarks.md)
    .venv/bin/python benchmarks/ranking.py --quick --out /tmp/rk-q       # smoke run, a few minutes
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import search_validity as sv  # noqa: E402  (the planted task, its data, space, hand genotypes, retraining)

PHASES = ["data", "recipe", "search", "select", "retrain", "score", "report"]
SNAPSHOTS = ("pair warm-up", "pair end", "fair warm-up", "fair end")


# ------------------------------------------------------------------------------------------------ jobs


def recipe_args(args: argparse.Namespace, recipe: str) -> argparse.Namespace:
    """``args`` with the retraining recipe ``EPOCHSxSTEPS@LR``."""
    budget, lr = recipe.split("@")
    epochs, steps = budget.split("x")
    out = copy.copy(args)
    out.train_epochs, out.train_steps, out.train_lr = int(epochs), int(steps), float(lr)
    return out


def recipe_name(args: argparse.Namespace) -> str:
    return f"{args.train_epochs}x{args.train_steps}@{args.train_lr:g}"


def _job(args: argparse.Namespace, kind: str, payload: tuple[Any, ...]) -> Any:
    """One unit of work in a worker process (or in this one)."""
    import torch

    torch.set_num_threads(args.threads)
    bench = sv.Bench(args)
    if kind == "train":
        return bench.retrain(*payload)
    if kind == "search":
        return bench.search(*payload)
    if kind == "select":  # (run, ((method, name), ...)): one process per run folder, which derive holds
        run, wanted = payload
        return [bench.select(run, method, name) for method, name in wanted]
    if kind == "score":
        return score(bench, *payload)
    raise ValueError(kind)


def run_jobs(args: argparse.Namespace, jobs: list[tuple[argparse.Namespace, str, tuple[Any, ...]]]) -> list[Any]:
    """``(args, kind, payload)`` jobs, ``--jobs`` at a time in fresh spawned processes; results in order."""
    if args.jobs <= 1 or len(jobs) <= 1:
        return [_job(a, kind, payload) for a, kind, payload in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_job, a, kind, payload) for a, kind, payload in jobs]
        return [f.result() for f in futures]


# ------------------------------------------------------------------------------------ selection, scores


def selection_settings(method: str) -> Any:
    from scnas_dsl.training.config import SelectionConfig

    return SelectionConfig(method=method)


def score(bench: sv.Bench, run: str, snapshot: str, genotypes: list[tuple[str, str]]) -> dict[str, Any]:
    """Supernet score (loss, Dice) of each ``(name, text)`` genotype on the search in ``run``, cached."""
    from scnas_dsl.loader import load_text
    from scnas_dsl.training.derive_run import open_search, rank

    settings = {"run": run, "genotypes": genotypes, "selection": selection_settings("alpha").model_dump(),
                "stamp": (Path(run) / "checkpoints" / "last.pt").stat().st_mtime}
    key = "score_" + snapshot.replace(" ", "_").replace("-", "")
    cached = bench._cached(key, settings)
    if cached is not None:
        return cached
    started = time.time()
    search = open_search(run, device=bench.args.device)
    parsed = [load_text(text, base_dir=bench.genotypes).genotype(name)[1] for name, text in genotypes]
    rows = rank(search, parsed, selection_settings("alpha"))
    record = {"settings": settings, "snapshot": snapshot, "epochs_done": search.epochs_done,
              "scores": {r["genotype"]: {"loss": r["loss"], "dice": r["dice"], "rank": r["rank"]} for r in rows},
              "seconds": round(time.time() - started, 1)}
    print(f"  scored {len(rows)} genotypes on {snapshot} ({record['seconds']:.0f} s)", flush=True)
    return bench._store(key, record)


# ------------------------------------------------------------------------------------------------ phases


def phase_recipe(args: argparse.Namespace) -> list[dict[str, Any]]:
    print("recipe: the retraining noise floor of each candidate recipe", flush=True)
    hand = sv.hand_genotypes(args.window)
    jobs = [(recipe_args(args, r), "train", (name, hand[name], seed)) for r in args.recipes
            for name in ("all_conv3", "hand_maxpool") for seed in args.seeds]
    rows = run_jobs(args, jobs)
    return [{**row, "recipe": recipe_name(a)} for (a, _, _), row in zip(jobs, rows, strict=True)]


def recipe_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        entry: dict[str, Any] = {"recipe": recipe, "genotypes": {}}
        for name in dict.fromkeys(r["name"] for r in rows if r["recipe"] == recipe):
            dice = [r["dice"] for r in rows if r["recipe"] == recipe and r["name"] == name]
            m, sd = sv.mean_std(dice)
            entry["genotypes"][name] = {"dice": dice, "mean": m, "std": sd}
        stds = [g["std"] for g in entry["genotypes"].values()]
        means = [g["mean"] for g in entry["genotypes"].values()]
        entry["mean_seed_std"] = float(np.mean(stds))
        entry["gap"] = float(max(means) - min(means))
        entry["seconds_per_run"] = float(np.mean([r["seconds"] for r in rows if r["recipe"] == recipe]))
        table.append(entry)
    return table


def phase_search(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    print("search: pair and fair, paused at the end of the warm-up", flush=True)
    plan = [("pair", args.pair_betas_ranking, args.search_seed), ("fair", args.pair_betas_ranking, args.search_seed)]
    rows = run_jobs(args, [(args, "search", job) for job in plan])
    return {"pair": rows[0], "fair": rows[1]}


def phase_select(args: argparse.Namespace, searches: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    print("select: the searched genotypes", flush=True)
    plan = {"pair": ("alpha", "projection"), "fair": ("projection", "sampled")}
    # named as search_validity.py's select phase names them, so that the runs are shared in one --out folder
    jobs = [(args, "select", (searches[kind]["run"], tuple((m, f"{searches[kind]['name']}_{m}") for m in methods)))
            for kind, methods in plan.items()]
    return [row for rows in run_jobs(args, jobs) for row in rows]


def genotype_set(args: argparse.Namespace, selected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The genotypes of the study: name, text, group."""
    from scnas_dsl.graph.printer import print_document
    from scnas_dsl.loader import load, load_text
    from scnas_dsl.model import Document, Import
    from scnas_dsl.nn.cost import estimate
    from scnas_dsl.nn.random_genotypes import sample_genotypes

    bench = sv.Bench(args)
    space = load(bench.space_file).space(sv.SPACE_NAME)
    out = [{"name": s["name"], "text": s["genotype_text"], "group": "searched"} for s in selected]
    parsed = [load_text(s["genotype_text"], base_dir=bench.genotypes).genotype(s["name"])[1] for s in selected]
    cost = {"patch": tuple(args.patch), "in_channels": 1, "num_classes": 2, "stem_width": args.stem_width}
    flops = [estimate(space, genotype=g, **cost).flops for g in parsed]
    like = parsed[sorted(range(len(flops)), key=flops.__getitem__)[len(flops) // 2]]

    def text(g: Any) -> str:
        return print_document(Document(imports=(Import(path="space.scn"),), genotypes=(g,)))

    if args.uniform:
        for s in sample_genotypes(space, args.uniform, seed=args.random_seed + 1, name_prefix="uniform", **cost):
            out.append({"name": s.genotype.name, "text": text(s.genotype), "group": "uniform random"})
    if args.random:
        for s in sample_genotypes(space, args.random, seed=args.random_seed, like=like, match="flops",
                                  tolerance=args.tolerance, name_prefix="matched", **cost):
            out.append({"name": s.genotype.name, "text": text(s.genotype), "group": "FLOPs-matched random"})
    hand = sv.hand_genotypes(args.window)
    for name in ("hand_maxpool", "all_conv3") + tuple(args.extra_hand):
        out.append({"name": name, "text": hand[name], "group": "hand"})
    return out


def phase_retrain(args: argparse.Namespace, genotypes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    print(f"retrain: {len(genotypes)} genotypes x {len(args.seeds)} seeds, recipe {recipe_name(args)}", flush=True)
    return run_jobs(args, [(args, "train", (g["name"], g["text"], seed)) for g in genotypes for seed in args.seeds])


def phase_score(args: argparse.Namespace, searches: dict[str, dict[str, Any]],
                genotypes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    print("score: every genotype on every snapshot", flush=True)
    pairs = [(g["name"], g["text"]) for g in genotypes]
    runs = {"pair warm-up": searches["pair"]["warmup_snapshot"], "pair end": searches["pair"]["run"],
            "fair warm-up": searches["fair"]["warmup_snapshot"], "fair end": searches["fair"]["run"]}
    names = [s for s in SNAPSHOTS if runs[s]]
    rows = run_jobs(args, [(args, "score", (runs[s], s, pairs)) for s in names])
    return dict(zip(names, rows, strict=True))


# -------------------------------------------------------------------------------------------- statistics


def kendall_with_interval(x: Sequence[float], y: Sequence[float], resamples: int, seed: int = 0
                          ) -> dict[str, float]:
    """Kendall's tau-b of ``x`` and ``y``, its p-value, and a percentile bootstrap 95% interval over the
    pairs (resampled with replacement; resamples whose tau is undefined are skipped)."""
    from scipy.stats import kendalltau

    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    tau, p = kendalltau(x, y)
    rng = np.random.default_rng(seed)
    taus = []
    for _ in range(resamples):
        idx = rng.integers(0, len(x), len(x))
        t = kendalltau(x[idx], y[idx])[0]
        if not np.isnan(t):
            taus.append(t)
    lo, hi = (np.percentile(taus, [2.5, 97.5]) if taus else (float("nan"), float("nan")))
    return {"tau": float(tau), "p": float(p), "low": float(lo), "high": float(hi), "n": int(len(x))}


def noise_floor(per_genotype: dict[str, list[float]]) -> dict[str, float]:
    """Mean per-genotype seed std against the std of the genotype means."""
    stds = [statistics.stdev(v) for v in per_genotype.values() if len(v) > 1]
    means = [statistics.fmean(v) for v in per_genotype.values()]
    return {"mean_seed_std": float(np.mean(stds)) if stds else float("nan"),
            "std_of_means": statistics.stdev(means) if len(means) > 1 else float("nan"),
            # the std of a mean of k seeds, against the spread of the means
            "seed_std_of_mean": float(np.mean(stds)) / np.sqrt(np.mean([len(v) for v in per_genotype.values()]))
            if stds else float("nan")}


# ------------------------------------------------------------------------------------------------ report


def folder(bench: sv.Bench) -> Path:
    """``OUT/ranking``: results.json and ranking.png (OUT may be shared with search_validity.py, whose
    results.json is OUT's own)."""
    out = bench.out / "ranking"
    out.mkdir(parents=True, exist_ok=True)
    return out


def duplicates(bench: sv.Bench, genotypes: list[dict[str, Any]]) -> dict[str, str]:
    """Genotypes of the study whose cells are those of an earlier one (name -> the earlier one's name): e.g.
    ``sampled`` draws its candidates with the search's seed, and the random set can draw the same genotype."""
    from scnas_dsl.loader import load_text

    seen: list[tuple[Any, str]] = []
    out = {}
    for g in genotypes:
        cells = load_text(g["text"], base_dir=bench.genotypes).genotype(g["name"])[1].cells
        first = next((name for c, name in seen if c == cells), None)
        if first is None:
            seen.append((cells, g["name"]))
        else:
            out[g["name"]] = first
    return out


def report(args: argparse.Namespace, recipes: list[dict[str, Any]], searches: dict[str, dict[str, Any]],
           selected: list[dict[str, Any]], genotypes: list[dict[str, Any]], trained: list[dict[str, Any]],
           scores: dict[str, dict[str, Any]], started: float) -> dict[str, Any]:
    bench = sv.Bench(args)
    summary: dict[str, Any] = {
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        "recipe": recipe_name(args), "recipes": recipe_table(recipes) if recipes else [],
        "searches": {k: {f: v.get(f) for f in ("name", "run", "seconds", "planted_share", "cell_counts")}
                     for k, v in searches.items()},
        "selected": [{k: s[k] for k in ("name", "method", "enc_planted", "planted_share", "op_counts",
                                          "self_check", "seconds")} for s in selected],
    }
    same = duplicates(bench, genotypes)
    summary["duplicates"] = same
    per: dict[str, list[float]] = {}
    for row in trained:
        if row["name"] not in same:  # a genotype drawn twice counts once in the statistics
            per.setdefault(row["name"], []).append(row["dice"])
    info = {g["name"]: g for g in genotypes}
    flops = {row["name"]: row["flops"] for row in trained}
    shares = {row["name"]: row["planted_share"] for row in trained}
    table = []
    for name, dice in per.items():
        m, sd = sv.mean_std(dice)
        entry = {"name": name, "group": info[name]["group"], "dice": dice, "mean": m, "std": sd,
                 "flops": flops[name], "planted_share": shares[name], "supernet": {}}
        for snap, rec in scores.items():
            entry["supernet"][snap] = rec["scores"].get(name)
        table.append(entry)
    table.sort(key=lambda e: -e["mean"])
    summary["genotypes"] = table
    if per:
        summary["noise_floor"] = noise_floor(per)
    taus: dict[str, Any] = {}
    for snap in scores:
        rows = [e for e in table if e["supernet"].get(snap)]
        retrained = [e["mean"] for e in rows]
        taus[snap] = {
            "dice": kendall_with_interval([e["supernet"][snap]["dice"] for e in rows], retrained, args.bootstrap),
            # a lower loss is better: tau of -loss, so that positive means "ranks as retraining does"
            "loss": kendall_with_interval([-e["supernet"][snap]["loss"] for e in rows], retrained, args.bootstrap),
            "epochs_done": scores[snap]["epochs_done"]}
    summary["kendall"] = taus
    # the ceiling: how well one retraining seed ranks the genotypes as the mean of the other seeds does
    full = [e for e in table if len(e["dice"]) >= 2]
    ceil = []
    for s in range(min((len(e["dice"]) for e in full), default=0)):
        one = [e["dice"][s] for e in full]
        rest = [statistics.fmean(v for i, v in enumerate(e["dice"]) if i != s) for e in full]
        ceil.append(kendall_with_interval(one, rest, 0)["tau"])
    summary["seed_vs_other_seeds_tau"] = ceil
    summary["seconds_this_invocation"] = round(time.time() - started, 1)
    runs = {("train", r["name"], r["seed"], r.get("recipe", "")): r["seconds"] for r in recipes + trained}
    runs.update({("search", k): v["seconds"] for k, v in searches.items()})
    runs.update({("select", s["name"]): s["seconds"] for s in selected})
    runs.update({("score", k): v["seconds"] for k, v in scores.items()})
    summary["seconds_of_runs"] = round(sum(runs.values()), 1)
    folder(bench).joinpath("results.json").write_text(json.dumps(summary, indent=1) + "\n")
    if table and taus:
        plot(bench, summary)
    print_tables(summary)
    return summary


def print_tables(summary: dict[str, Any]) -> None:
    if summary["recipes"]:
        print("\n| recipe (epochs x steps @ lr) | genotype | Dice per seed | mean ± std | s per run |\n"
              "| --- | --- | --- | --- | --- |")
        for r in summary["recipes"]:
            for name, g in r["genotypes"].items():
                print(f"| {r['recipe']} | {name} | {', '.join(f'{d:.3f}' for d in g['dice'])} | "
                      f"{g['mean']:.3f} ± {g['std']:.3f} | {r['seconds_per_run']:.0f} |")
        print("\n| recipe | mean seed std | gap between the two genotypes' means |\n| --- | --- | --- |")
        for r in summary["recipes"]:
            print(f"| {r['recipe']} | {r['mean_seed_std']:.3f} | {r['gap']:.3f} |")
    if summary["selected"]:
        print("\n| searched genotype | maxpool in enc | maxpool share | self-check rank | ops of the live edges |\n"
              "| --- | --- | --- | --- | --- |")
        for s in summary["selected"]:
            ops = ", ".join(f"{op} {n}" for op, n in s["op_counts"].items() if n)
            chk = f"{s['self_check']['rank']} of {s['self_check']['of']}" if s["self_check"] else "-"
            print(f"| {s['name']} | {s['enc_planted']} | {s['planted_share']:.2f} | {chk} | {ops} |")
    if summary.get("genotypes"):
        snaps = [s for s in SNAPSHOTS if s in summary["kendall"]]
        print("\n| genotype | group | retrained Dice mean ± std (per seed) | MFLOPs | "
              + " | ".join(f"supernet Dice, {s}" for s in snaps) + " |\n| --- | --- | --- | --- | "
              + " | ".join("---" for _ in snaps) + " |")
        for e in summary["genotypes"]:
            cells = " | ".join(f"{e['supernet'][s]['dice']:.3f}" if e["supernet"].get(s) else "-" for s in snaps)
            print(f"| {e['name']} | {e['group']} | {e['mean']:.3f} ± {e['std']:.3f} "
                  f"({', '.join(f'{d:.2f}' for d in e['dice'])}) | {e['flops'] / 1e6:.1f} | {cells} |")
        for name, first in summary["duplicates"].items():
            print(f"\n{name} is the same genotype as {first}: counted once (as {first})")
        nf = summary["noise_floor"]
        print(f"\nnoise floor: mean per-genotype seed std {nf['mean_seed_std']:.3f} (std of a "
              f"{len(summary['genotypes'][0]['dice'])}-seed mean ~{nf['seed_std_of_mean']:.3f}); std of the "
              f"genotype means {nf['std_of_means']:.3f}")
        print("one seed against the mean of the other seeds, Kendall tau: "
              + ", ".join(f"{t:.2f}" for t in summary["seed_vs_other_seeds_tau"]))
        print("\n| snapshot | epochs done | tau (supernet Dice) [95% CI] | p | tau (supernet -loss) [95% CI] | p |\n"
              "| --- | --- | --- | --- | --- | --- |")
        for s in snaps:
            k = summary["kendall"][s]
            d, lo = k["dice"], k["loss"]
            print(f"| {s} | {k['epochs_done']} | {d['tau']:.2f} [{d['low']:.2f}, {d['high']:.2f}] | {d['p']:.3f} | "
                  f"{lo['tau']:.2f} [{lo['low']:.2f}, {lo['high']:.2f}] | {lo['p']:.3f} |")
    print(f"\nrun time of the runs: {summary['seconds_of_runs'] / 60:.1f} min (this invocation: "
          f"{summary['seconds_this_invocation'] / 60:.1f} min)")


def plot(bench: sv.Bench, summary: dict[str, Any]) -> None:
    """Tau per snapshot with its interval (left), supernet Dice vs retrained Dice per snapshot: ``ranking.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    snaps = [s for s in SNAPSHOTS if s in summary["kendall"]]
    fig, axes = plt.subplots(1, 1 + len(snaps), figsize=(3.1 * (1 + len(snaps)), 3.2), dpi=72)
    axes = np.atleast_1d(axes)
    ax = axes[0]
    for j, (by, colour) in enumerate((("dice", "tab:blue"), ("loss", "tab:orange"))):
        xs = np.arange(len(snaps)) + (j - 0.5) * 0.2
        t = [summary["kendall"][s][by] for s in snaps]
        ax.errorbar(xs, [v["tau"] for v in t], yerr=[[v["tau"] - v["low"] for v in t], [v["high"] - v["tau"] for v in t]],
                    fmt="o", color=colour, capsize=3, label=f"supernet {'Dice' if by == 'dice' else '-loss'}")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xticks(range(len(snaps)), [s.replace(" ", "\n") for s in snaps], fontsize=7)
    ax.set_ylim(-1, 1)
    ax.set_title("Kendall tau vs retrained Dice", fontsize=9)
    ax.legend(fontsize=6, loc="lower left")
    ax.tick_params(axis="y", labelsize=7)
    groups = list(dict.fromkeys(e["group"] for e in summary["genotypes"]))
    colours = dict(zip(groups, ("tab:green", "tab:gray", "tab:red", "tab:purple", "tab:brown"), strict=False))
    for ax, s in zip(axes[1:], snaps, strict=True):
        for g in groups:
            rows = [e for e in summary["genotypes"] if e["group"] == g and e["supernet"].get(s)]
            ax.errorbar([e["supernet"][s]["dice"] for e in rows], [e["mean"] for e in rows],
                        yerr=[e["std"] for e in rows], fmt="o", ms=4, color=colours[g], label=g, capsize=2)
        k = summary["kendall"][s]["dice"]
        ax.set_title(f"{s}: tau {k['tau']:.2f}", fontsize=9)
        ax.set_xlabel("supernet Dice", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[1].set_ylabel("retrained Dice (mean ± std)", fontsize=8)
    axes[-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(folder(bench) / "ranking.png")
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- cli


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = sv.build_parser(__doc__, out="scnas-ranking", phases=PHASES)
    g = p.add_argument_group("ranking study")
    g.add_argument("--recipes", nargs="*", default=["8x25@3e-3", "8x25@1e-3", "16x25@3e-3"],
                   help="candidate retraining recipes EPOCHSxSTEPS@LR of the recipe phase")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="retraining seeds of every genotype")
    g.add_argument("--search-seed", type=int, default=0)
    g.add_argument("--uniform", type=int, default=5, help="uniform random genotypes")
    g.add_argument("--extra-hand", nargs="*", default=[], help="more hand genotypes (hand_conv3, hand_avgpool, ...)")
    g.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the tau intervals")
    # the recipe the recipe phase chose (docs/benchmarks.md): 16 epochs x 25 steps at lr 3e-3
    p.set_defaults(arch_warmup=4, search_epochs=12, random=5, pair_betas=["standard"], train_epochs=16)
    args = p.parse_args(argv)
    args.pair_betas_ranking = "standard"  # the project's default weight betas (0.9, 0.999)
    if args.quick:
        sv.quick_sizes(args)
        args.search_epochs, args.arch_warmup, args.uniform, args.seeds = 3, 1, 2, [0, 1]
        args.recipes, args.bootstrap = ["2x3@3e-3"], 50
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = sv.start(args)
    bench = sv.Bench(args)
    bench.prepare_data()
    ph = set(args.phases)
    recipes = phase_recipe(args) if "recipe" in ph else []
    later = ph & {"search", "select", "retrain", "score", "report"}
    searches = phase_search(args) if later else {}
    selected = phase_select(args, searches) if later - {"search"} else []
    genotypes = genotype_set(args, selected) if selected else []
    trained = phase_retrain(args, genotypes) if "retrain" in ph else []
    if "report" in ph and not trained:  # what is cached
        trained = [r for r in (bench.cached_train(g["name"], g["text"], s) for g in genotypes for s in args.seeds)
                   if r is not None]
    scores = phase_score(args, searches, genotypes) if "score" in ph else {}
    if "report" in ph:
        if not recipes:
            hand = sv.hand_genotypes(args.window)
            for r in args.recipes:
                ra = recipe_args(args, r)
                b = sv.Bench(ra)
                recipes += [{**row, "recipe": recipe_name(ra)} for row in
                            (b.cached_train(n, hand[n], s) for n in ("all_conv3", "hand_maxpool") for s in args.seeds)
                            if row is not None]
        report(args, recipes, searches, selected, genotypes, trained, scores, started)
    print(f"done in {time.time() - started:.0f} s; results in {bench.out}", flush=True)


if __name__ == "__main__":
    main()
