"""Cells and the whole U-Net as networkx graphs (data only: the compiler builds modules from them).

A cell graph has the input nodes (``in0``, ``in1``), the intermediate nodes (``n0``...) and ``"out"``.
Node attribute ``kind`` is ``"input"``, ``"node"`` or ``"output"``; ``order`` is the position in the cell.
Edges between nodes carry ``candidates: list[str]`` (a space) or ``op: str`` (a genotype); edges into
``"out"`` have ``kind="output"`` and ``combine`` (``concat``, ``sum`` or ``node``).
"""

from __future__ import annotations

import networkx as nx

from scnas_dsl.model import CellChoice, CellSpec, Genotype, SearchSpace
from scnas_dsl.model.structure import OUTPUT, cell_type_of, dead_in_cell, live_edges, zero_ops
from scnas_dsl.model.wiring import STEM, wiring

__all__ = ["OUTPUT", "cell_graph", "cell_type_of", "dead_in_cell", "dead_nodes", "live_edges",
           "spec_of", "unet_graph", "zero_ops"]


def spec_of(space: SearchSpace, key: str) -> CellSpec:
    """The CellSpec of a structure key (type name, or instance name ``type[k]``); KeyError if unknown."""
    spec = space.cell(cell_type_of(key))
    if spec is None:
        raise KeyError(f"space '{space.name}' has no cell '{key}'")
    return spec


def cell_graph(space: SearchSpace, cell_key: str, genotype: Genotype | None = None) -> nx.DiGraph:
    """The DAG of one cell: its candidate operations (space) or its chosen operations (genotype).

    ``cell_key`` is a cell type, or an instance ``type[k]``. With a genotype, only chosen edges appear
    (edges left out are zero); a chosen ``zero`` operation appears with ``op`` set to its name.
    """
    spec = spec_of(space, cell_key)
    graph = nx.DiGraph(cell=cell_key, cell_type=spec.name, role=spec.role)
    for i, name in enumerate(spec.input_names()):
        graph.add_node(name, kind="input", order=i)
    for j, name in enumerate(spec.node_names()):
        graph.add_node(name, kind="node", order=spec.inputs + j)
    graph.add_node(OUTPUT, kind="output", order=spec.inputs + spec.nodes)
    if genotype is None:
        opset = space.opset(spec.ops)
        candidates = opset.names() if opset is not None else []
        for src, dst in spec.edge_list():
            graph.add_edge(src, dst, candidates=list(candidates))
    else:
        choice = _choice_for(space, genotype, cell_key)
        if choice is not None:
            for (src, dst), op in choice.chosen().items():
                graph.add_edge(src, dst, op=op)
    for name in spec.output_nodes():
        graph.add_edge(name, OUTPUT, kind="output", combine=spec.output.kind)
    return graph


def _choice_for(space: SearchSpace, genotype: Genotype, cell_key: str) -> CellChoice | None:
    choice = genotype.cell(cell_key)
    if choice is None and space.unet.share == "by_type":
        choice = genotype.cell(cell_type_of(cell_key))
    return choice


def dead_nodes(space: SearchSpace, genotype: Genotype) -> dict[str, list[str]]:
    """Structure key -> its dead intermediate nodes (only keys with at least one), for a genotype.

    A node is dead when no live (non-zero) path from a cell input reaches it, or when it feeds nothing
    that reaches the cell output.
    """
    out: dict[str, list[str]] = {}
    for key in space.structure_keys():
        spec = space.cell(cell_type_of(key))
        if spec is None:
            continue
        dead = dead_in_cell(spec, live_edges(space, spec, _choice_for(space, genotype, key)))
        if dead:
            out[key] = dead
    return out


def unet_graph(space: SearchSpace) -> nx.MultiDiGraph:
    """The U-Net as a graph of blocks: ``"stem"``, every cell instance (``enc[0]``...), ``"head"``.

    A MultiDiGraph whose edge keys are the edge kinds, since one block can feed a cell both in sequence
    and as its skip (the last reduction cell feeds the first expansion cell twice): ``g.edges[u, v, "skip"]``.

    Node attributes: ``kind`` (``stem``, ``cell``, ``head``), ``section``, ``cell_type``, ``role``,
    ``level`` (of the block's output; 0 = full resolution) and ``width`` (channels of a node of the
    block). Edges have ``kind`` ``"sequence"`` or ``"skip"`` and ``inputs``, the cell inputs they feed:
    a cell with n inputs reads the n previous blocks (``in{n-1}`` the previous one), and the first cell
    takes the stem output for every input. A ``"skip"`` edge is the decoder sum of the paper: the output
    of the last encoder-side block at the level of the previous block's output (the stem for level 0) is
    summed into ``in{n-1}`` of every decoder cell, unless that block is the previous block itself: the wiring
    of ``scnas_dsl.model.wiring``, which ``scnas_dsl.nn.plan`` builds on too.
    """
    unet = space.unet
    graph = nx.MultiDiGraph(name=space.name, dims=unet.dims, share=unet.share)
    stem_width = unet.stem.width or 1
    graph.add_node("stem", kind="stem", section="stem", level=0, width=stem_width, op=unet.stem.call.kind)
    cells = wiring(space)
    names = {STEM: "stem", **{cell.index: cell.instance for cell in cells}}
    for cell in cells:
        spec, instance = cell.spec, cell.instance
        graph.add_node(instance, kind="cell", section=cell.section, cell_type=spec.name, role=spec.role,
                       level=cell.out_level, width=stem_width * unet.width_factor ** max(cell.out_level, 0))
        for j, source_index in enumerate(cell.inputs):
            source = names[source_index]
            if graph.has_edge(source, instance, "sequence"):
                graph.edges[source, instance, "sequence"]["inputs"].append(j)
            else:
                graph.add_edge(source, instance, "sequence", kind="sequence", inputs=[j])
        if cell.skip is not None:
            graph.add_edge(names[cell.skip], instance, "skip", kind="skip", inputs=[spec.inputs - 1])
    order = ["stem", *(cell.instance for cell in cells)]
    graph.add_node("head", kind="head", section="head", level=0, width=stem_width, op=unet.head.call.kind)
    graph.add_edge(order[-1], "head", "sequence", kind="sequence", inputs=[0])
    return graph
