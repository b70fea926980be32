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
from scnas_dsl.train.runs import RunFolder, read_jsonl


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def plot_curves(records: list[dict[str, Any]], keys: dict[str, str], ylabel: str, path: Path,
                log: bool = False) -> Path:
    """One line per ``keys`` entry (record key -> legend label) over the epochs."""
    figure = Figure(figsize=(6.4, 4.0))
    axes = figure.add_subplot()
    for key, label in keys.items():
        points = [(r["epoch"] + 1, r[key]) for r in records if r.get(key) is not None]
        if points:
            x, y = zip(*points, strict=True)
            axes.plot(x, y, marker="o" if len(points) < 30 else None, label=label)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(ylabel)
    if log:
        axes.set_yscale("log")
    if axes.lines:
        axes.legend()
    axes.grid(alpha=0.3)
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
    figure = Figure(figsize=(0.62 * cols * len(keys) + 1.6, 0.34 * rows + 2.2))
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
                axes.text(c, r, f"{value:.2f}"[1:] if value < 1 else "1", ha="center", va="center", fontsize=6,
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
    temperature.png, entropy.png (mean entropy, mean top probability, share of parameter-free choices, edges
    that changed) and probabilities.png (the last epoch's softmax(alpha) on one scale)."""
    records = read_jsonl(run.path / "metrics.jsonl")
    alphas = read_jsonl(run.path / "alphas.jsonl")
    out = [
        plot_curves(records, {"weight_loss": "weight part (training, sampled)",
                              "arch_loss": "architecture part (training, sampled)",
                              "sampled_loss": "architecture part, fixed patches: sampled",
                              "argmax_loss": "architecture part, fixed patches: argmax"},
                    "soft Jaccard loss", run.plots / "losses.png"),
        plot_curves(records, {"sampled_dice": "sampled supernet", "argmax_dice": "argmax architecture"},
                    "mean foreground Dice (architecture part, fixed patches)", run.plots / "gap.png"),
        plot_curves(records, {"temperature": "temperature"}, "Gumbel-softmax temperature",
                    run.plots / "temperature.png", log=True),
        plot_curves(records, {"mean_entropy": "mean entropy of softmax(alpha) (nats)",
                              "mean_top_probability": "mean top probability",
                              "parameter_free_share": "share of parameter-free choices"},
                    "", run.plots / "entropy.png"),
    ]
    if alphas:
        last = alphas[-1]
        out.append(plot_probabilities(last["probabilities"], run.plots / "probabilities.png",
                                      f"epoch {last['epoch'] + 1}, temperature {last['temperature']:.3g}"))
    return out


def plot_search(run: RunFolder, space: SearchSpace, genotype: Genotype) -> list[Path]:
    """The progress plots (:func:`plot_search_progress`) and cells.png (the found genotype drawn)."""
    from scnas_dsl.graph.draw import draw_cells

    return [*plot_search_progress(run), draw_cells(space, genotype, run.plots / "cells.png")]


def plot_train(run: RunFolder) -> list[Path]:
    """loss.png and dice.png of a retraining run."""
    records = read_jsonl(run.path / "metrics.jsonl")
    return [
        plot_curves(records, {"train_loss": "training loss"}, "soft Jaccard loss", run.plots / "loss.png"),
        plot_curves(records, {"val_dice": "validation mean foreground Dice"}, "Dice", run.plots / "dice.png"),
    ]
