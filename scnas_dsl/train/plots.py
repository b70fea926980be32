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
    axes.legend()
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_probabilities(probabilities: dict[str, dict[str, dict[str, float]]], path: Path) -> Path:
    """A heat map per structure key (cell type): edges as rows, operations as columns, softmax(alpha)."""
    keys = list(probabilities)
    figure = Figure(figsize=(5.2 * len(keys), 0.35 * max(len(e) for e in probabilities.values()) + 2.0))
    for i, key in enumerate(keys):
        axes = figure.add_subplot(1, len(keys), i + 1)
        edges = list(probabilities[key])
        ops = list(next(iter(probabilities[key].values())))
        table = np.array([[probabilities[key][e][o] for o in ops] for e in edges])
        # the colour range is the table's own: early in a search the probabilities differ by little
        low, high = float(table.min()), float(table.max())
        image = axes.imshow(table, aspect="auto", cmap="viridis", vmin=low, vmax=max(high, low + 1e-6))
        axes.set_xticks(range(len(ops)), ops, rotation=60, ha="right", fontsize=8)
        axes.set_yticks(range(len(edges)), edges, fontsize=8)
        axes.set_title(f"cell {key}")
        figure.colorbar(image, ax=axes, fraction=0.046)
    return _save(figure, path)


def plot_search(run: RunFolder, space: SearchSpace, genotype: Genotype) -> list[Path]:
    """losses.png, temperature.png, probabilities.png (last epoch) and cells.png (the genotype drawn)."""
    from scnas_dsl.graph.draw import draw_cells

    records = read_jsonl(run.path / "metrics.jsonl")
    alphas = read_jsonl(run.path / "alphas.jsonl")
    out = [
        plot_curves(records, {"weight_loss": "weight part (train)", "arch_loss": "architecture part"},
                    "soft Jaccard loss", run.plots / "losses.png"),
        plot_curves(records, {"temperature": "temperature"}, "Gumbel-softmax temperature",
                    run.plots / "temperature.png", log=True),
    ]
    if alphas:
        out.append(plot_probabilities(alphas[-1]["probabilities"], run.plots / "probabilities.png"))
    out.append(draw_cells(space, genotype, run.plots / "cells.png"))
    return out


def plot_train(run: RunFolder) -> list[Path]:
    """loss.png and dice.png of a retraining run."""
    records = read_jsonl(run.path / "metrics.jsonl")
    return [
        plot_curves(records, {"train_loss": "training loss"}, "soft Jaccard loss", run.plots / "loss.png"),
        plot_curves(records, {"val_dice": "validation mean foreground Dice"}, "Dice", run.plots / "dice.png"),
    ]
