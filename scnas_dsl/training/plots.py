"""Plots of a run: losses, temperature, the operation probabilities per cell type, the found cells,
validation Dice. Matplotlib's object API without pyplot (no global state, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from scnas_dsl.model import Genotype, SearchSpace
from scnas_dsl.training.runs import ALPHAS, METRICS, RunFolder, read_jsonl


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def _curves(axes: Any, records: list[dict[str, Any]], keys: dict[str, str], ylabel: str, *, log: bool = False,
            ylim: tuple[float, float] | None = None, reference: tuple[float, str] | None = None,
            empty: str = "nothing recorded yet") -> None:
    for key, label in keys.items():
        points = [(r["epoch"] + 1, r[key]) for r in records if r.get(key) is not None]
        if points:
            x, y = zip(*points, strict=True)
            axes.plot(x, y, marker="o" if len(points) < 30 else None, label=label)
    if reference is not None:
        axes.axhline(reference[0], color="grey", linestyle="--", linewidth=1, label=reference[1])
    if not any(line.get_label() in keys.values() for line in axes.lines):
        axes.text(0.5, 0.5, empty, transform=axes.transAxes, ha="center", va="center", color="grey")
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(ylabel)
    if log:
        axes.set_yscale("log")
    if ylim is not None:
        axes.set_ylim(*ylim)
    if axes.lines:
        axes.legend(fontsize=8)
    axes.grid(alpha=0.3)


def plot_curves(records: list[dict[str, Any]], keys: dict[str, str], ylabel: str, path: Path,
                log: bool = False, *, ylim: tuple[float, float] | None = None, title: str | None = None,
                reference: tuple[float, str] | None = None, empty: str = "nothing recorded yet") -> Path:
    """One line per ``keys`` entry (record key -> legend label) over the epochs; ``reference`` a dashed
    horizontal line (value, label); ``empty`` the note shown before anything is recorded."""
    figure = Figure(figsize=(6.4, 4.0))
    axes = figure.add_subplot()
    _curves(axes, records, keys, ylabel, log=log, ylim=ylim, reference=reference, empty=empty)
    if title:
        axes.set_title(title, fontsize=9)
    return _save(figure, path)


def plot_probabilities(probabilities: dict[str, dict[str, dict[str, float]]], path: Path,
                       title: str | None = None) -> Path:
    """:func:`probability_figure` saved to ``path``."""
    figure = probability_figure(probabilities, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=110, bbox_inches="tight")  # tight_layout does not fit a colour bar on many axes
    return path


def probability_figure(probabilities: dict[str, dict[str, dict[str, float]]], title: str | None = None) -> Figure:
    """A heat map per structure key (cell type): edges as rows, operations as columns, softmax(alpha).

    Every panel uses one colour scale, 0 to 1, and each cell shows its value: early in a search the
    probabilities differ by little, and a scale per panel would make 0.123 against 0.127 look like a strong
    preference. The most likely operation of each edge is framed."""
    from matplotlib.patches import Rectangle

    keys = list(probabilities)
    rows = max(len(e) for e in probabilities.values())
    cols = max(len(next(iter(e.values()))) for e in probabilities.values())
    figure = Figure(figsize=(0.62 * cols * len(keys) + 1.6, 0.34 * rows + 2.2), layout="constrained")
    image = None
    for i, key in enumerate(keys):
        axes = figure.add_subplot(1, len(keys), i + 1)
        edges = list(probabilities[key])
        ops = list(next(iter(probabilities[key].values())))
        table = np.array([[probabilities[key][e][o] for o in ops] for e in edges])
        image = axes.imshow(table, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0)
        for r in range(table.shape[0]):
            best = int(table[r].argmax())
            axes.add_patch(Rectangle((best - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="darkorange", lw=1.5))
            for c in range(table.shape[1]):
                value = table[r, c]
                axes.text(c, r, f"{value:.2f}"[1:] if value < 1 else "1", ha="center", va="center", fontsize=7,
                          color="white" if value > 0.6 else "black")
        axes.set_xticks(range(len(ops)), ops, rotation=60, ha="right", fontsize=8)
        axes.set_yticks(range(len(edges)), edges, fontsize=8)
        axes.set_title(f"cell {key}")
    if image is not None:
        figure.colorbar(image, ax=figure.axes, fraction=0.03, label="softmax(alpha)")
    if title:
        figure.suptitle(title, fontsize=9)
    return figure


def plot_search_progress(run: RunFolder) -> list[Path]:
    """What a search has recorded so far (redrawn after every epoch): losses.png (training losses and the
    discretisation gap's losses), gap.png (the Dice of the sampled supernet and of the argmax architecture),
    temperature.png, entropy.png (mean entropy against its uniform maximum; mean top probability, share of
    parameter-free choices and of edges that changed) and probabilities.png (the last epoch's softmax(alpha)
    on one scale)."""
    records = read_jsonl(run.path / METRICS)
    alphas = read_jsonl(run.path / ALPHAS)
    out = [
        plot_curves(records, {"weight_loss": "weight part (training, sampled)",
                              "arch_loss": "architecture part (training, sampled)",
                              "sampled_loss": "architecture part, fixed patches: sampled",
                              "argmax_loss": "architecture part, fixed patches: argmax"},
                    "soft Jaccard loss", run.plots / "losses.png"),
        plot_curves(records, {"sampled_dice": "sampled supernet", "argmax_dice": "argmax architecture"},
                    "mean foreground Dice", run.plots / "gap.png", ylim=(0.0, 1.0),
                    title="discretisation gap: the architecture part's fixed patches"),
        plot_curves(records, {"temperature": "temperature"}, "Gumbel-softmax temperature",
                    run.plots / "temperature.png", log=True),
    ]
    for r in records:  # the share of edges that changed, next to the other shares
        if r.get("changed_edges") is not None and r.get("edges_total"):
            r["changed_share"] = r["changed_edges"] / r["edges_total"]
    figure = Figure(figsize=(11.0, 4.0))
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    widths = [len(ops) for a in alphas[-1:] for edges in a["probabilities"].values() for ops in edges.values()]
    uniform = float(np.log(max(widths))) if widths else None
    # from 0 to the uniform maximum: a flat line at the top is no preference, not a trend
    _curves(left, records, {"mean_entropy": "mean entropy of softmax(alpha)"}, "nats",
            reference=(uniform, "uniform (no preference)") if uniform else None,
            ylim=(0.0, 1.08 * uniform) if uniform else None)
    _curves(right, records, {"mean_top_probability": "mean top probability",
                             "parameter_free_share": "parameter-free choices",
                             "changed_share": "edges that changed their choice"}, "share", ylim=(0.0, 1.0))
    out.append(_save(figure, run.plots / "entropy.png"))
    budget = plot_budget(records, run.plots / "budget.png")
    if budget is not None:
        out.append(budget)
    if alphas:
        last = alphas[-1]
        out.append(plot_probabilities(last["probabilities"], run.plots / "probabilities.png",
                                      f"epoch {last['epoch'] + 1}, temperature {last['temperature']:.3g}"))
    return out


def plot_budget(records: list[dict[str, Any]], path: Path) -> Path | None:
    """budget.png of a search with ``--budget``: per limited metric, the expected cost under the logits and the
    exact cost of the most likely genotype against the limit, as a share of it (None: no budget recorded)."""
    budgeted = [r for r in records if isinstance(r.get("budget"), dict)]
    if not budgeted:
        return None
    metrics = [m for m in ("flops", "params", "memory") if isinstance(budgeted[-1]["budget"].get(m), dict)]
    rows = []
    for r in budgeted:
        row: dict[str, Any] = {"epoch": r["epoch"]}
        for m in metrics:
            entry = r["budget"].get(m) or {}
            if entry.get("limit"):
                row[f"{m}_expected"] = entry["expected"] / entry["limit"]
                row[f"{m}_argmax"] = entry["argmax"] / entry["limit"]
        rows.append(row)
    keys = {}
    for m in metrics:
        keys[f"{m}_expected"] = f"{m}: expected under the logits"
        keys[f"{m}_argmax"] = f"{m}: most likely genotype"
    return plot_curves(rows, keys, "cost / budget", path, reference=(1.0, "budget"),
                       title="cost against the budget (1 = the limit; the penalty acts above it)")


def plot_search(run: RunFolder, space: SearchSpace, genotype: Genotype) -> list[Path]:
    """The progress plots (:func:`plot_search_progress`) and cells.png (the found genotype drawn)."""
    from scnas_dsl.graph.draw import draw_cells

    return [*plot_search_progress(run), draw_cells(space, genotype, run.plots / "cells.png")]


def plot_train(run: RunFolder) -> list[Path]:
    """loss.png and dice.png of a retraining run."""
    records = read_jsonl(run.path / METRICS)
    return [
        plot_curves(records, {"train_loss": "training loss"}, "soft Jaccard loss", run.plots / "loss.png"),
        plot_curves(records, {"val_dice": "validation mean foreground Dice"}, "Dice", run.plots / "dice.png",
                    ylim=(0.0, 1.0), empty="no validation yet"),
    ]
