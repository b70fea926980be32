"""alpha -> genotype: the largest logit on each edge, zero cuts the edge, dead nodes are pruned."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from scnas_dsl.model import CellChoice, ChosenEdge, Genotype, NodeChoice, SearchSpace
from scnas_dsl.nn.plan import live_structure, zero_op_names


def _cell_choice(key: str, edges: list[tuple[str, str]], chosen: dict[tuple[str, str], str],
                 nodes: list[str]) -> CellChoice:
    lines = []
    for node in nodes:
        incoming = tuple(ChosenEdge(op=chosen[(s, d)], src=s) for s, d in edges if d == node)
        lines.append(NodeChoice(node=node, edges=incoming))
    return CellChoice(cell=key, nodes=tuple(lines))


def derive_genotype(space: SearchSpace, alphas: Mapping[str, torch.Tensor], name: str = "derived"
                    ) -> tuple[Genotype, list[str]]:
    """The genotype of the largest logit on every edge of every structure key, and a readable report of
    what was cut and pruned. ``alphas[key]`` has shape ``(E, O)``: rows in ``CellSpec.edge_list()`` order,
    columns in the operation set's order.

    If a cell would lose every path to its output (all its useful edges chose zero), the cell is derived
    again without the zero operations, and the report says so: a genotype must compile.
    """
    cells: list[CellChoice] = []
    report: list[str] = []
    specs = dict(space.instances())
    for key in space.structure_keys():
        spec = specs[key] if key in specs else space.cell(key)
        assert spec is not None  # structure keys come from the space itself
        opset = space.opset(spec.ops)
        assert opset is not None
        names = opset.names()
        zeros = zero_op_names(space, spec)
        logits = alphas[key].detach().cpu()
        best = [names[i] for i in logits.argmax(dim=1).tolist()]
        chosen = dict(zip(spec.edge_list(), best, strict=True))
        edges, nodes, outputs, notes = live_structure(spec, chosen, zeros)
        if not outputs and len(zeros) < len(names):
            report.append(f"{key}: every path to the output was cut; derived again without "
                          f"{', '.join(sorted(zeros))}")
            masked = logits.clone()
            for i, op in enumerate(names):
                if op in zeros:
                    masked[:, i] = float("-inf")
            chosen = dict(zip(spec.edge_list(), [names[i] for i in masked.argmax(dim=1).tolist()], strict=True))
            edges, nodes, outputs, notes = live_structure(spec, chosen, zeros)
        report += [f"{key}: edge {s}->{d} chose '{op}': cut" for (s, d), op in chosen.items() if op in zeros]
        report += [f"{key}: {line}" for line in notes]
        cells.append(_cell_choice(key, edges, chosen, nodes))
    return Genotype(name=name, space=space.name, cells=tuple(cells)), report
