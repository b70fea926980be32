"""Drawings readable like the paper's Figure 2: no edge label covers another label or a node, every edge has
its operation's colour, and the legend names each colour."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from scnas_dsl.graph.draw import render_cells
from scnas_dsl.loader import load
from scnas_dsl.nn.random_genotypes import draw_genotypes

SPECS = Path(__file__).resolve().parents[3] / "specs"
FILES = sorted(p for p in SPECS.rglob("*.scn"))


def boxes(figure):  # type: ignore[no-untyped-def]
    renderer = figure.canvas.get_renderer()
    labels, nodes = [], []
    for axes in figure.axes:
        for text in axes.texts:
            if text.get_gid() == "edge-label":
                labels.append((text.get_text(), text.get_window_extent(renderer)))
            elif text.get_gid() == "node":
                nodes.append(text.get_window_extent(renderer))
    return labels, nodes


def assert_no_overlaps(figure) -> int:  # type: ignore[no-untyped-def]
    labels, nodes = boxes(figure)
    for (a, box_a), (b, box_b) in itertools.combinations(labels, 2):
        assert not box_a.overlaps(box_b), f"labels '{a}' and '{b}' overlap"
    for name, box in labels:
        assert not any(box.overlaps(node) for node in nodes), f"label '{name}' covers a node"
    return len(labels)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_shipped_specs_draw_without_overlapping_labels(path: Path) -> None:
    loaded = load(path)
    if loaded.genotypes:
        space, genotype = loaded.genotype(next(iter(loaded.genotypes)))
        figure = render_cells(space, genotype)
        placed = assert_no_overlaps(figure)
        edges = sum(1 for key in space.structure_keys() for choice in [genotype.cell(key)] if choice
                    for node in choice.nodes for _ in node.edges)
        assert placed >= edges * 0.6, f"only {placed} of {edges} labels placed"
        legend = {t.get_text() for lg in figure.legends for t in lg.get_texts()}
        assert legend and legend <= {op.name for s in space.opsets for op in s.ops}
    else:
        assert_no_overlaps(render_cells(loaded.space(), None))


def test_a_generated_genotype_draws_without_overlapping_labels() -> None:
    space = load(SPECS / "unet4cell.scn").space()
    for genotype in itertools.islice(draw_genotypes(space, seed=3), 2):
        assert assert_no_overlaps(render_cells(space, genotype)) > 0


def test_a_dense_genotype_draws_without_overlapping_labels() -> None:
    # every edge of every cell kept (14 per cell, most converging on the last nodes): labels at the edges'
    # middles collide here, so the placement must move them or leave them to the colour and the legend
    from scnas_dsl.loader import load_text

    ops = ["conv3", "dil2", "dil3", "maxpool", "skip", "avgpool", "dil4"]
    cells = []
    for key in ("red", "enc", "exp", "dec"):
        nodes = []
        for j in range(4):
            sources = ["in0", "in1", *(f"n{i}" for i in range(j))]
            nodes.append(f"    n{j} = " + " + ".join(f"{ops[(j + k) % len(ops)]}({s})" for k, s in enumerate(sources)))
        cells.append(f"  cell {key} {{\n" + "\n".join(nodes) + "\n  }")
    text = f'import "{SPECS / "unet4cell.scn"}"\ngenotype dense of unet4cell {{\n' + "\n".join(cells) + "\n}\n"
    space, genotype = load_text(text).genotype()
    figure = render_cells(space, genotype)
    assert assert_no_overlaps(figure) >= 4 * 7  # at least half of the 56 labels find a place
