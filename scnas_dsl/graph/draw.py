"""Cells drawn as DAGs like the paper's Figure 2: inputs on the left, the output on the right, the chosen
operation (genotype) or the number of candidates (space) on each edge.

The layout is layered and computed here with networkx (no graphviz): a node's layer is the length of the
longest path to it from a cell input; nodes of one layer are spread vertically. Uses matplotlib's object
API (no pyplot state), so it is safe to call from a training loop.
"""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch

from scnas_dsl.errors import ScnasError
from scnas_dsl.graph.cells import OUTPUT, cell_graph, spec_of, zero_ops
from scnas_dsl.model import Genotype, SearchSpace

FORMATS = (".png", ".svg", ".pdf")
_COLOURS = {"input": "#a6cee3", "node": "#fdbf6f", "output": "#b2df8a"}


def layered_layout(graph: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Positions (x = layer, y = place in the layer) of a DAG's nodes; layers by longest path."""
    layer: dict[str, int] = {}
    for node in nx.topological_sort(graph):
        preds = list(graph.predecessors(node))
        layer[node] = 0 if not preds else 1 + max(layer[p] for p in preds)
    # Inputs that feed nothing still stand in layer 0; the output goes one layer past everything.
    if OUTPUT in layer:
        layer[OUTPUT] = 1 + max((v for k, v in layer.items() if k != OUTPUT), default=0)
    by_layer: dict[int, list[str]] = {}
    for node, k in layer.items():
        by_layer.setdefault(k, []).append(node)
    pos: dict[str, tuple[float, float]] = {}
    for k, nodes in by_layer.items():
        nodes.sort(key=lambda n: graph.nodes[n].get("order", 0))
        # A chain of one-node layers zigzags (as in the paper's Figure 2) so that long edges stay visible.
        shift = 0.0 if len(nodes) > 1 or k == 0 or node_is_output(nodes) else (0.5 if k % 2 else -0.5)
        for i, node in enumerate(nodes):
            pos[node] = (float(k), (len(nodes) - 1) / 2.0 - i + shift)
    return pos


def node_is_output(nodes: list[str]) -> bool:
    return nodes == [OUTPUT]


def draw_cells(space: SearchSpace, genotype: Genotype | None, path: str | Path) -> Path:
    """Draw every structure of ``space`` (one panel per cell type, or per instance with ``by_level``),
    with ``genotype``'s operations or the candidate counts, into ``path`` (.png, .svg or .pdf)."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ScnasError(f"{path}: the picture must end in {', '.join(FORMATS)}")
    return _save(render_cells(space, genotype), path, 110)


def render_cells(space: SearchSpace, genotype: Genotype | None) -> Figure:
    """The figure :func:`draw_cells` writes: a panel per structure, then the U-Net; edges coloured by
    operation with a legend, labels placed where they overlap nothing."""
    keys = space.structure_keys()
    panels = len(keys) + 1  # the cells, then the U-Net they make
    columns = max(1, min(panels, math.ceil(math.sqrt(panels))))
    rows = math.ceil(panels / max(columns, 1))
    figure = Figure(figsize=(6.0 * columns, 4.2 * rows + 0.6))
    FigureCanvasAgg(figure)
    title = f"genotype {genotype.name} of {space.name}" if genotype is not None else f"space {space.name}"
    figure.suptitle(title, fontsize=13)
    colours = _op_colours(space)
    pending = []
    for i, key in enumerate(keys):
        axes = figure.add_subplot(rows, columns, i + 1)
        pending.append(_draw_cell(axes, space, key, genotype, colours))
    draw_topology(figure.add_subplot(rows, columns, panels), space)
    bottom = _legend(figure, space, genotype, colours)
    figure.tight_layout(rect=(0, bottom, 1, 0.95))
    _place_labels(figure, pending)
    return figure


def _save(figure: Figure, path: Path, dpi: int) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=dpi)
    except OSError as err:
        raise ScnasError(f"{path}: cannot write the picture ({err.strerror or err})") from err
    return path


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
            "#bcbd22", "#7f7f7f")


def _op_colours(space: SearchSpace) -> dict[str, str]:
    """One colour per operation name of the space's sets (the same operation has the same colour in every
    panel); zeros are drawn dashed grey."""
    names = list(dict.fromkeys(op.name for opset in space.opsets for op in opset.ops if op.call.kind != "zero"))
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(names)}


def _legend(figure: Figure, space: SearchSpace, genotype: Genotype | None, colours: dict[str, str]) -> float:
    """A legend under the panels: the colour of every operation (a genotype), or what every edge may be (a
    space). Returns the height it takes, as a figure fraction."""
    from matplotlib.lines import Line2D

    if genotype is not None:
        used = {op for key in space.structure_keys() for _, _, d in cell_graph(space, key, genotype).edges(data=True)
                for op in [d.get("op")] if op is not None}
        handles = [Line2D([], [], color=c, lw=2, label=name) for name, c in colours.items() if name in used]
        if not handles:
            return 0.0
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=9, frameon=False)
    else:
        sets = ", ".join(f"{opset.name}: {', '.join(op.name for op in opset.ops)}" for opset in space.opsets)
        figure.text(0.5, 0.01, f"every edge chooses one operation of its cell's set ({sets}); "
                    "a number on an edge: its candidates, where they differ from the set", ha="center",
                    fontsize=9)
    return 0.6 / figure.get_figheight()


Point = tuple[float, float]


def _bezier(p0: Point, p1: Point, rad: float, t: float) -> Point:
    """The point at ``t`` of matplotlib's ``arc3`` connection from ``p0`` to ``p1`` (a quadratic Bezier whose
    control point is the chord's middle moved by ``rad`` times the chord, turned a quarter)."""
    (x0, y0), (x1, y1) = p0, p1
    cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
    u = 1 - t
    return u * u * x0 + 2 * u * t * cx + t * t * x1, u * u * y0 + 2 * u * t * cy + t * t * y1


class _Label:
    """An edge label waiting for its place on its edge's curve."""

    def __init__(self, axes: Axes, text: str, colour: str, p0: Point, p1: Point, rad: float) -> None:
        self.axes, self.text, self.colour, self.p0, self.p1, self.rad = axes, text, colour, p0, p1, rad

    def at(self, t: float) -> Point:
        """Data coordinates of the point at ``t``: arc3 bends in display space, so the curve is taken there."""
        to_display = self.axes.transData
        a, b = to_display.transform(self.p0), to_display.transform(self.p1)
        x, y = _bezier((float(a[0]), float(a[1])), (float(b[0]), float(b[1])), self.rad, t)
        data = to_display.inverted().transform((x, y))
        return float(data[0]), float(data[1])


def _clear_rad(p0: Point, p1: Point, rad: float, others: list[Point]) -> float:
    """``rad``, or a stronger bend (either side), so that the curve passes no other node closer than 0.22
    (in data units, where a layer is 1 apart)."""
    for candidate in (rad, -rad, *(sign * (abs(rad) + step) for step in (0.12, 0.24, 0.36, 0.5)
                                   for sign in (1 if rad >= 0 else -1, -1 if rad >= 0 else 1))):
        points = [_bezier(p0, p1, candidate, i / 24) for i in range(3, 22)]
        if all(math.hypot(x - ox, y - oy) > 0.22 for x, y in points for ox, oy in others):
            return candidate
    return rad


def _draw_cell(axes: Axes, space: SearchSpace, key: str, genotype: Genotype | None,
               colours: dict[str, str] | None = None) -> list[_Label]:
    """Nodes and edges of one structure; the edge labels are returned, to be placed once the layout is final
    (:func:`_place_labels`)."""
    colours = colours if colours is not None else _op_colours(space)
    spec = spec_of(space, key)
    graph = cell_graph(space, key, genotype)
    pos = layered_layout(graph)
    zeros = zero_ops(space, spec)
    axes.set_title(f"{key} ({spec.role})", fontsize=11)
    axes.set_axis_off()
    candidate_sets = {tuple(d.get("candidates", ())) for _, _, d in graph.edges(data=True) if d.get("kind") != "output"}
    labels = []
    for src, dst, data in graph.edges(data=True):
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        is_output = data.get("kind") == "output"
        op = data.get("op")
        cut = op in zeros
        # Edges that skip layers bend, and more where they would pass through a node on the way.
        rad = 0.0 if abs(x1 - x0) <= 1 else 0.18 + 0.04 * abs(x1 - x0)
        if y1 > y0 or (y1 == y0 and int(x0) % 2):
            rad = -rad
        others = [xy for n, xy in pos.items() if n not in (src, dst)]
        rad = _clear_rad((x0, y0), (x1, y1), rad, others)
        colour = "#888888" if is_output or cut else colours.get(op, "#333333") if op else "#333333"
        arrow = FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=12, lw=1.6,
                                shrinkA=14, shrinkB=14, color=colour,
                                linestyle="--" if cut else "-", connectionstyle=f"arc3,rad={rad}")
        axes.add_patch(arrow)
        if is_output:
            continue
        if op is not None:
            text = op
        elif len(candidate_sets) > 1:
            text = f"{len(data.get('candidates', []))} ops"
        else:
            continue  # a space whose edges all share one set: the caption says it once
        labels.append(_Label(axes, text, colour, (x0, y0), (x1, y1), rad))
    for node, (x, y) in pos.items():
        kind = graph.nodes[node]["kind"]
        text = "out" if node == OUTPUT else node
        if node == OUTPUT:
            text = {"concat": "concat", "sum": "sum", "node": "out"}[spec.output.kind]
        axes.text(x, y, text, ha="center", va="center", fontsize=9, zorder=3, gid="node",
                  bbox={"boxstyle": "round,pad=0.35", "fc": _COLOURS[kind], "ec": "#333333"})
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    axes.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    axes.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    return labels


_POSITIONS = (0.5, 0.38, 0.62, 0.28, 0.72, 0.2, 0.8)


def _place_labels(figure: Figure, pending: list[list[_Label]]) -> None:
    """Put each edge label on its edge where its box overlaps no node and no label placed before (tried
    along the curve from the middle outwards); a label that fits nowhere is left out: the edge's colour and
    the legend still name its operation."""
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    for labels in pending:
        if not labels:
            continue
        axes = labels[0].axes
        taken = [t.get_window_extent(renderer).expanded(1.05, 1.1) for t in axes.texts if t.get_gid() == "node"]
        for label in labels:
            for t in _POSITIONS:
                x, y = label.at(t)
                text = axes.text(x, y, label.text, fontsize=7, ha="center", va="center", color=label.colour,
                                 gid="edge-label", zorder=2,
                                 bbox={"boxstyle": "round,pad=0.12", "fc": "white", "ec": "none", "alpha": 0.9})
                box = text.get_window_extent(renderer)
                if not any(box.overlaps(other) for other in taken):
                    taken.append(box)
                    break
                text.remove()


def draw_genotype_grid(space: SearchSpace, genotypes: list[tuple[str, Genotype]], path: str | Path) -> Path:
    """Several genotypes of ``space`` side by side in one picture: one row per genotype (titled with its
    label), one column per structure of the space (cell type), drawn as :func:`draw_cells` draws them."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ScnasError(f"{path}: the picture must end in {', '.join(FORMATS)}")
    keys = space.structure_keys()
    rows, columns = max(1, len(genotypes)), max(1, len(keys))
    figure = Figure(figsize=(4.6 * columns, 3.4 * rows + 0.6))
    FigureCanvasAgg(figure)
    figure.suptitle(f"{len(genotypes)} genotypes of {space.name}", fontsize=13)
    colours = _op_colours(space)
    pending = []
    for row, (label, genotype) in enumerate(genotypes):
        for column, key in enumerate(keys):
            axes = figure.add_subplot(rows, columns, row * columns + column + 1)
            pending.append(_draw_cell(axes, space, key, genotype, colours))
            axes.set_title(f"{label}: {axes.get_title()}", fontsize=10)
    bottom = _legend(figure, space, genotypes[0][1] if genotypes else None, colours) if genotypes else 0.0
    figure.tight_layout(rect=(0, bottom, 1, 1 - 0.4 / (3.4 * rows)))
    _place_labels(figure, pending)
    return _save(figure, path, 90)


def topology_levels(space: SearchSpace) -> list[tuple[str, str, str, int]]:
    """(section, instance, role, output level) of every cell of the U-Net, in order (``model.wiring``)."""
    from scnas_dsl.model.wiring import wiring

    return [(cell.section, cell.instance, cell.spec.role, cell.out_level) for cell in wiring(space)]


def draw_topology(axes: Axes, space: SearchSpace) -> None:
    """The U-Net the cells make, in the paper's picture: stem, cells left to right at their output level
    (deeper is lower), the decoder skips (drawn ``gated`` for attention-gated skips) and a ``seg`` box under
    the cell whose output each segmentation head reads (the head, and the deep-supervision heads)."""
    unet = space.unet
    cells = topology_levels(space)
    axes.set_title(f"U-Net: skips {unet.skips}, deep supervision "
                   f"{', '.join(map(str, unet.deep_supervision)) or 'off'}", fontsize=11)
    axes.set_axis_off()
    pos = {"stem": (0.0, 0.0)} | {inst: (float(i + 1), -float(lv)) for i, (_, inst, _, lv) in enumerate(cells)}
    order = ["stem", *(inst for _, inst, _, _ in cells)]
    for a, b in zip(order, order[1:], strict=False):
        axes.add_patch(FancyArrowPatch(pos[a], pos[b], arrowstyle="-|>", mutation_scale=10, shrinkA=12,
                                       shrinkB=12, color="#333333"))
    # the decoder skips: the last encoder output (or the stem) of the level a decoder cell reads
    skip_at = {0: "stem"}
    previous = "stem"
    for section, inst, _, level in cells:
        in_level = -int(pos[previous][1])
        if section == "decoder" and skip_at.get(in_level) not in (None, previous):
            source = skip_at[in_level]
            (x0, y0), (x1, y1) = pos[source], pos[inst]
            gated = unet.skips == "attention"
            rad = -max(0.08, min(0.25, 1.5 / max(x1 - x0, 1.0)))  # long skips bow less, so they stay in view
            axes.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=9, shrinkA=12,
                                           shrinkB=12, color="#1f78b4", linestyle="--",
                                           connectionstyle=f"arc3,rad={rad:.3f}"))
            if gated:
                axes.text(x1 - 0.35, y1 + 0.2, "gate", fontsize=6, color="#1f78b4", ha="center")
        if section == "encoder":
            skip_at[level] = inst
        previous = inst
    heads = {0: cells[-1][1] if cells else "stem"}
    for level in unet.deep_supervision:
        at_level = [inst for section, inst, _, lv in cells if section == "decoder" and lv == level]
        if at_level:
            heads[level] = at_level[-1]
    for level, inst in heads.items():
        x, y = pos[inst]
        axes.add_patch(FancyArrowPatch((x, y), (x, y - 0.7), arrowstyle="-|>", mutation_scale=8, shrinkA=10,
                                       shrinkB=6, color="#33a02c"))
        axes.text(x, y - 0.85, "seg" if level == 0 else f"seg {level}", fontsize=7, ha="center", va="center",
                  bbox={"boxstyle": "round,pad=0.2", "fc": _COLOURS["output"], "ec": "#333333"})
    for name, (x, y) in pos.items():
        role = next((r for _, inst, r, _ in cells if inst == name), "stem")
        colour = {"reduction": "#fb9a99", "expansion": "#cab2d6", "normal": _COLOURS["node"]}.get(role, "#dddddd")
        axes.text(x, y, name, ha="center", va="center", fontsize=7, zorder=3,
                  bbox={"boxstyle": "round,pad=0.3", "fc": colour, "ec": "#333333"})
    xs, ys = [p[0] for p in pos.values()], [p[1] for p in pos.values()]
    axes.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    axes.set_ylim(min(ys) - 1.2, max(ys) + 1.2)
