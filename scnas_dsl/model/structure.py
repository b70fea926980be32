"""Structure keys and live edges: the pieces of a cell's meaning that the checks and the graphs share.

``scnas_dsl.graph.cells`` builds networkx graphs on top of these; the checks (``scnas_dsl.model.checks``)
use them directly, so that checking does not depend on the graph layer.
"""

from __future__ import annotations

import re

import networkx as nx

from scnas_dsl.model import CellChoice, CellSpec, SearchSpace

# The name of a cell's output node in cell graphs.
OUTPUT = "out"
_INSTANCE = re.compile(r"^(?P<type>[A-Za-z_][A-Za-z0-9_]*)\[(?P<index>[0-9]+)\]$")


def cell_type_of(key: str) -> str:
    """The cell type of a structure key: ``enc`` for ``enc`` and for the instance ``enc[1]``."""
    match = _INSTANCE.match(key)
    return match.group("type") if match else key


def zero_ops(space: SearchSpace, spec: CellSpec) -> set[str]:
    """Names in the cell's operation set that are bound to the library's ``zero`` (a cut edge)."""
    opset = space.opset(spec.ops)
    if opset is None:
        return set()
    return {op.name for op in opset.ops if op.call.kind == "zero"}


def live_edges(space: SearchSpace, spec: CellSpec, choice: CellChoice | None) -> list[tuple[str, str]]:
    """The chosen edges whose operation is not zero."""
    if choice is None:
        return []
    zeros = zero_ops(space, spec)
    return [edge for edge, op in choice.chosen().items() if op not in zeros]


def dead_in_cell(spec: CellSpec, edges: list[tuple[str, str]]) -> list[str]:
    """Intermediate nodes of ``spec`` that are dead given the live ``edges``: no live input (directly or
    through dead predecessors), or not reaching the cell output."""
    graph = nx.DiGraph()
    graph.add_nodes_from(spec.input_names() + spec.node_names() + [OUTPUT])
    known = set(graph.nodes)
    graph.add_edges_from((s, d) for s, d in edges if s in known and d in known)
    graph.add_edges_from((n, OUTPUT) for n in spec.output_nodes() if n in known)
    fed: set[str] = set()
    for name in spec.input_names():
        fed |= nx.descendants(graph, name)
    reaches = nx.ancestors(graph, OUTPUT)
    return [n for n in spec.node_names() if n not in fed or n not in reaches]


def decoder_levels(space: SearchSpace) -> list[int]:
    """Levels above 0 at which a decoder cell outputs, finest first (where deep-supervision heads can sit);
    cells the space does not define are skipped (the checker reports them)."""
    level, levels = 0, set()
    for section, ref in space.unet.sequence():
        spec = space.cell(ref.name)
        level += {"reduction": 1, "expansion": -1}.get(spec.role if spec else "", 0)
        if section == "decoder" and level > 0:
            levels.add(level)
    return sorted(levels)
