"""Semantic checks of a parsed ``.scn`` document: every problem at once, each with its place and a hint.

``check`` takes the operation signature table as an argument, so that a user with their own operations
passes an extended ``Signatures`` (``LIBRARY_SIGNATURES.extend([...])``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import networkx as nx

from scnas_dsl.model import (
    CellChoice,
    CellSpec,
    Document,
    Genotype,
    Node,
    OpCall,
    SearchSpace,
    Span,
    Topology,
)
from scnas_dsl.model.diagnostics import Diagnostic, Severity, at, did_you_mean
from scnas_dsl.model.structure import cell_type_of, dead_in_cell, decoder_levels, live_edges
from scnas_dsl.ops.signatures import LIBRARY_SIGNATURES, Signatures
from scnas_dsl.source import split_lines

_T = TypeVar("_T", bound=Node)
MAX_NODES = 32
MAX_WIDTH = 4096
MAX_WIDTH_FACTOR = 8
_NODE = re.compile(r"^(in|n)([0-9]+)$")


class _Report:
    """Collects diagnostics, with source lines when the text of the file is known."""

    def __init__(self, sources: Mapping[str | None, str] | None) -> None:
        self.items: list[Diagnostic] = []
        self._lines = {k: split_lines(v) for k, v in (sources or {}).items()}

    def add(self, span: Span | None, message: str, hint: str | None = None,
            severity: Severity = "error") -> None:
        lines = self._lines.get(span.file if span is not None else None)
        self.items.append(at(span, message, hint, lines=lines, severity=severity))


def check(document: Document, spaces: Mapping[str, SearchSpace] | None = None,
          signatures: Signatures = LIBRARY_SIGNATURES,
          sources: Mapping[str | None, str] | None = None) -> list[Diagnostic]:
    """Every problem of ``document``: its own spaces, and its genotypes against ``spaces`` (the spaces
    the genotypes may refer to: the document's own and the imported ones; default: the own ones).

    ``sources`` maps a file name (as in the spans) to its text, for the source lines of the report.
    Warnings (severity ``"warning"``) are included; they do not make a file invalid.
    """
    report = _Report(sources)
    available: dict[str, SearchSpace] = {s.name: s for s in document.spaces}
    if spaces:
        available = {**dict(spaces), **available}
    _duplicates(report, document.spaces, "space", lambda s: s.name)
    _duplicates(report, document.genotypes, "genotype", lambda g: g.name)
    for space in document.spaces:
        check_space(space, signatures, report)
    for genotype in document.genotypes:
        target = available.get(genotype.space)
        if target is None:
            report.add(genotype.field_span("space"), f"unknown space '{genotype.space}'",
                       did_you_mean(genotype.space, available, "spaces here")
                       + "; a space in another file needs an import \"file.scn\"")
            continue
        check_genotype(genotype, target, report)
    return report.items


def _duplicates(report: _Report, items: Iterable[_T], what: str, name_of: Callable[[_T], str],
                where: str = "") -> None:
    first: dict[str, Node] = {}
    for item in items:
        name = name_of(item)
        if name in first:
            span = first[name].field_span("name") or first[name].span
            place = span.where() if span is not None else "above"
            report.add(item.field_span("name"), f"{what} '{name}' is defined twice{where}",
                       f"the first is at {place}; rename or remove one")
        else:
            first[name] = item


# ---------------------------------------------------------------------- spaces
def check_space(space: SearchSpace, signatures: Signatures, report: _Report) -> None:
    """The checks of one search space: operation sets, cells, the U-Net."""
    dims = space.unet.dims
    inside = f" in space '{space.name}'"
    _duplicates(report, space.opsets, "operation set", lambda s: s.name, inside)
    for opset in space.opsets:
        if not opset.ops:
            report.add(opset.field_span("name"), f"operation set '{opset.name}' is empty",
                       "list its candidate operations, e.g. conv3 = conv(kernel=3)")
        elif all(op.call.kind == "zero" for op in opset.ops):
            report.add(opset.field_span("name"), f"operation set '{opset.name}' holds only 'zero' operations: "
                       "no architecture of a cell using it has a live path",
                       "add an operation that carries data, e.g. skip = identity or conv3 = conv(kernel=3)")
        _duplicates(report, opset.ops, "operation", lambda o: o.name, f" in set '{opset.name}'")
        for op in opset.ops:
            _check_call(op.call, signatures, dims, report, on_edge=True)
    _duplicates(report, space.cells, "cell", lambda c: c.name, inside)
    for cell in space.cells:
        _check_cell(space, cell, report)
    _check_unet(space, signatures, report)


def _check_call(call: OpCall, signatures: Signatures, dims: int, report: _Report,
                needs_weights: str | None = None, on_edge: bool = False) -> None:
    signature = signatures.get(call.kind)
    if signature is None:
        report.add(call.field_span("kind"), f"unknown library operation '{call.kind}'",
                   did_you_mean(call.kind, signatures.names(), "library operations"))
        return
    if on_edge and signature.block:
        report.add(call.field_span("kind"), f"'{call.kind}' is a stem or head block, not an operation for the "
                   "edges of a cell", "edges take: " + ", ".join(s.name for s in signatures.ops if not s.block))
    if needs_weights and not signature.parametric:
        report.add(call.field_span("kind"), f"the {needs_weights} must be an operation with weights, "
                   f"not '{call.kind}'", "use conv_block, res_block or conv for a stem, logits for a head")
    seen: set[str] = set()
    for param in call.params:
        if param.name in seen:
            report.add(param.field_span("name"), f"parameter '{param.name}' is given twice", "keep one")
        seen.add(param.name)
    by_name = {p.name: p for p in call.params}
    for name, message in signature.problems(call.kwargs(), dims):
        if name is None:
            report.add(call.span, message, "add it inside the parentheses: name=value")
            continue
        given = by_name.get(name)
        if given is None:  # pragma: no cover - problems only names given parameters
            report.add(call.span, message)
        elif signature.param(name) is None:
            close = difflib.get_close_matches(name, [d.name for d in signature.params], n=1)
            report.add(given.field_span("name"), message, f"did you mean '{close[0]}'?" if close else None)
        else:
            decl = signature.param(name)
            report.add(given.field_span("value"), message, decl.doc if decl is not None and decl.doc else None)


def _position(spec: CellSpec, name: str) -> int | None:
    """A node's position in the cell (inputs first, then n0, n1...), None if the cell has no such node."""
    match = _NODE.match(name)
    if not match:
        return None
    index = int(match.group(2))
    if match.group(1) == "in":
        return index if index < spec.inputs else None
    return spec.inputs + index if index < spec.nodes else None


def _some_names(spec: CellSpec) -> list[str]:
    """The cell's node names for a hint (at most MAX_NODES of each kind, whatever the counts say)."""
    return ([f"in{i}" for i in range(max(0, min(spec.inputs, MAX_NODES)))]
            + [f"n{i}" for i in range(max(0, min(spec.nodes, MAX_NODES)))])


def _check_cell(space: SearchSpace, cell: CellSpec, report: _Report) -> None:
    name = cell.name
    if space.opset(cell.ops) is None and cell.ops:
        report.add(cell.field_span("ops"), f"unknown operation set '{cell.ops}'",
                   did_you_mean(cell.ops, [s.name for s in space.opsets], "operation sets of this space"))
    counts_ok = True
    if not 1 <= cell.nodes <= MAX_NODES:
        report.add(cell.field_span("nodes"), f"cell '{name}' must have 1 to {MAX_NODES} intermediate nodes, "
                   f"not {cell.nodes}", "the paper uses nodes 4")
        counts_ok = False
    if cell.inputs not in (1, 2):
        report.add(cell.field_span("inputs"), f"cell '{name}' must take 1 or 2 inputs, not {cell.inputs}",
                   "a cell reads the outputs of the one or two blocks before it (the paper uses two); "
                   "the U-Net has no third earlier block to offer")
        counts_ok = False
    if cell.edges is not None:
        _check_edges(cell, report)
    if not counts_ok:
        # the edges and the output were checked by name; what needs every node waits for valid counts
        _check_output(cell, [], report, counts_ok=False)
        return
    edges = cell.edge_list()
    known = set(cell.input_names()) | set(cell.node_names())
    valid = [(s, d) for s, d in edges if s in known and d in known]
    fed = {d for _, d in valid}
    read = {s for s, _ in valid}
    edges_span = cell.field_span("edges")
    for node in cell.node_names():
        if node not in fed:
            report.add(edges_span, f"node '{node}' of cell '{name}' has no input edge",
                       f"add an edge into it, e.g. in0 -> {node}, or lower 'nodes'")
    for inp in cell.input_names():
        if inp not in read:
            report.add(edges_span, f"input '{inp}' of cell '{name}' is not read by any edge",
                       f"add an edge from it, e.g. {inp} -> n0, or lower 'inputs'")
    _check_output(cell, valid, report)


def _check_edges(cell: CellSpec, report: _Report) -> None:
    seen: set[tuple[str, str]] = set()
    graph = nx.DiGraph()
    for edge in cell.edges or ():
        bad = False
        for end, node in (("src", edge.src), ("dst", edge.dst)):
            if _position(cell, node) is None:
                what = "from" if end == "src" else "to"
                report.add(edge.field_span(end), f"edge {what} unknown node '{node}' in cell '{cell.name}'",
                           did_you_mean(node, _some_names(cell), "its nodes"))
                bad = True
        if bad:
            continue
        text = f"{edge.src} -> {edge.dst}"
        if edge.dst.startswith("in"):
            report.add(edge.field_span("dst"), f"edge '{text}' goes into input '{edge.dst}'",
                       "inputs come from earlier cells; edges end at intermediate nodes (n0, n1, ...)")
            continue
        if (edge.src, edge.dst) in seen:
            report.add(edge.span, f"edge '{text}' is listed twice in cell '{cell.name}'", "keep one")
            continue
        seen.add((edge.src, edge.dst))
        graph.add_edge(edge.src, edge.dst)
        if edge.src == edge.dst:
            report.add(edge.span, f"edge '{text}' is a cycle: a node cannot read itself",
                       "edges go from a node to a later one")
        elif (_position(cell, edge.src) or 0) > (_position(cell, edge.dst) or 0):
            if nx.has_path(graph, edge.dst, edge.src):
                # the cycle this edge closes: from its end back to its start, then the edge itself
                path = " -> ".join([*nx.shortest_path(graph, edge.dst, edge.src), edge.dst])
                report.add(edge.span, f"edge '{text}' closes a cycle: {path}",
                           "a cell is a DAG: edges go from a node to a later one")
            else:
                report.add(edge.span, f"edge '{text}' goes backwards",
                           f"edges go from a node to a later one: write {edge.dst} -> {edge.src}?")


def _check_output(cell: CellSpec, edges: list[tuple[str, str]], report: _Report, counts_ok: bool = True) -> None:
    out = cell.output
    nodes = list(out.nodes or ())
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        span = out.field_span(f"nodes[{i}]")
        position = _position(cell, node)
        if position is not None and node.startswith("in"):
            report.add(span, f"the output of cell '{cell.name}' names input '{node}'",
                       "the output is made of intermediate nodes (n0, n1, ...)")
        elif position is None:
            report.add(span, f"the output of cell '{cell.name}' names unknown node '{node}'",
                       did_you_mean(node, [n for n in _some_names(cell) if n.startswith("n")], "its nodes"))
        elif node in seen:
            report.add(span, f"node '{node}' appears twice in the output of cell '{cell.name}'", "keep one")
        seen.add(node)
    if cell.edges is None or not counts_ok:
        return
    graph = nx.DiGraph(edges)
    outputs = [n for n in cell.output_nodes() if n in cell.node_names()]
    reach: set[str] = set(outputs)
    for n in outputs:
        if n in graph:
            reach |= nx.ancestors(graph, n)
    for node in cell.node_names():
        if node not in reach:
            report.add(cell.field_span("output") if cell.output.nodes is not None else cell.field_span("edges"),
                       f"node '{node}' of cell '{cell.name}' does not reach the cell output",
                       "it is computed and thrown away: add it to the output or an edge from it",
                       severity="warning")


def _check_unet(space: SearchSpace, signatures: Signatures, report: _Report) -> None:
    unet = space.unet
    _check_call(unet.stem.call, signatures, unet.dims, report, needs_weights="stem")
    _check_call(unet.head.call, signatures, unet.dims, report, needs_weights="head")
    width = unet.stem.width
    if width is not None and not 1 <= width <= MAX_WIDTH:
        report.add(unet.stem.field_span("width"), f"the stem width must be 1 to {MAX_WIDTH}, not {width}",
                   "the paper uses 48 to search and 68 to retrain")
    if not 1 <= unet.width_factor <= MAX_WIDTH_FACTOR:
        report.add(unet.field_span("width_factor"),
                   f"width_factor must be 1 to {MAX_WIDTH_FACTOR}, not {unet.width_factor}",
                   "reduction cells multiply the width by it and expansion cells divide by it (the paper: 2)")
    names = [c.name for c in space.cells]
    used: set[str] = set()
    counts = {"reduction": 0, "expansion": 0}
    for section, ref in unet.sequence():
        used.add(ref.name)
        spec = space.cell(ref.name)
        if spec is None:
            report.add(ref.span, f"unknown cell '{ref.name}' in the {section}",
                       did_you_mean(ref.name, names, "cells of this space"))
            continue
        if section == "encoder" and spec.role == "expansion":
            report.add(ref.span, f"expansion cell '{ref.name}' in the encoder",
                       "the encoder goes down: it holds normal and reduction cells")
        elif section == "decoder" and spec.role == "reduction":
            report.add(ref.span, f"reduction cell '{ref.name}' in the decoder",
                       "the decoder goes up: it holds normal and expansion cells")
        elif section == "bridge" and spec.role != "normal":
            report.add(ref.span, f"{spec.role} cell '{ref.name}' in the bridge",
                       "the bridge (the paper's inter cell) holds normal cells only")
        elif section in ("encoder", "decoder") and spec.role in counts:
            counts[spec.role] += 1
    if counts["reduction"] != counts["expansion"]:
        report.add(unet.field_span("decoder"),
                   f"encoder/decoder mismatch: the encoder has {counts['reduction']} reduction cell"
                   f"{'s' if counts['reduction'] != 1 else ''} but the decoder has {counts['expansion']} "
                   f"expansion cell{'s' if counts['expansion'] != 1 else ''}",
                   "each reduction goes one level down and each expansion one level up: "
                   "use as many of each, so that the output has the input's size")
    _check_deep_supervision(unet, decoder_levels(space), report)
    for cell in space.cells:
        if cell.name not in used:
            report.add(cell.field_span("name"), f"cell '{cell.name}' is defined but not used in the unet",
                       "add it to the encoder, bridge or decoder, or remove it", severity="warning")


def _check_deep_supervision(unet: Topology, valid: list[int], report: _Report) -> None:
    """Each level of ``deep_supervision`` once, above 0 (the main head's) and one of ``valid``, the levels
    above 0 a decoder cell outputs at."""
    span = unet.field_span("deep_supervision")
    seen: set[int] = set()
    for lv in unet.deep_supervision:
        if lv in seen:
            report.add(span, f"deep_supervision names level {lv} twice", "keep one")
        elif lv == 0:
            report.add(span, "deep_supervision level 0 is the main head, which is always there",
                       f"name the coarser decoder levels that get a head of their own: {_levels_hint(valid)}")
        elif lv not in valid:
            report.add(span, f"deep_supervision level {lv}: no decoder cell outputs at that level",
                       f"decoder levels with a head of their own: {_levels_hint(valid)}")
        seen.add(lv)


def _levels_hint(levels: list[int]) -> str:
    return ", ".join(map(str, levels)) if levels else "none (the decoder has no level below the stem's)"


# ---------------------------------------------------------------------- genotypes
def check_genotype(genotype: Genotype, space: SearchSpace, report: _Report) -> None:
    """The checks of one genotype against its space."""
    keys = _structure_keys(space)
    by_level = space.unet.share == "by_level"
    given: dict[str, CellChoice] = {}
    for choice in genotype.cells:
        key = choice.cell
        span = choice.field_span("cell")
        is_instance = "[" in key
        if by_level and not is_instance and space.cell(key) is not None:
            instances = [k for k in keys if cell_type_of(k) == key]
            report.add(span, f"sharing mismatch: space '{space.name}' shares by_level, so every cell instance "
                       f"has its own structure, but the genotype names the cell type '{key}'",
                       f"name the instances: {', '.join(instances) or key + '[0]'}")
            continue
        if not by_level and is_instance and space.cell(cell_type_of(key)) is not None:
            report.add(span, f"sharing mismatch: space '{space.name}' shares by_type, so the genotype names "
                       f"cell types, not the instance '{key}'",
                       f"write 'cell {cell_type_of(key)}' (one structure for all its uses)")
            continue
        if key not in keys:
            what = "cell instance" if is_instance else "cell"
            extra = "" if space.cell(cell_type_of(key)) is None else " in its unet"
            report.add(span, f"space '{space.name}' has no {what} '{key}'{extra}",
                       did_you_mean(key, keys, "cells to choose"))
            continue
        if key in given:
            report.add(span, f"cell '{key}' is given twice in genotype '{genotype.name}'", "keep one")
            continue
        given[key] = choice
        _check_choice(space, choice, report)
    missing = [k for k in keys if k not in given]
    if missing:
        report.add(genotype.field_span("name"),
                   f"genotype '{genotype.name}' gives no structure for cell{'s' if len(missing) > 1 else ''} "
                   f"{', '.join(missing)}",
                   f"add 'cell {missing[0]} {{ n0 = ... }}' (a cell without node lines has every edge zero)")


def _structure_keys(space: SearchSpace) -> list[str]:
    """``space.structure_keys()`` leaving out the U-Net's unknown cells (reported with the space), so
    that the rest of a genotype is still checked."""
    known = space.model_copy(update={"unet": space.unet.model_copy(update={
        section: tuple(ref for ref in getattr(space.unet, section) if space.cell(ref.name) is not None)
        for section in ("encoder", "bridge", "decoder")})})
    return known.structure_keys()


def _check_choice(space: SearchSpace, choice: CellChoice, report: _Report) -> None:
    spec = space.cell(cell_type_of(choice.cell))
    if spec is None or not 1 <= spec.nodes <= MAX_NODES or spec.inputs not in (1, 2):
        return
    opset = space.opset(spec.ops)
    op_names = opset.names() if opset is not None else None
    allowed = set(spec.edge_list())
    seen_nodes: set[str] = set()
    for line in choice.nodes:
        node = line.node
        if node in spec.input_names():
            report.add(line.field_span("node"), f"'{node}' is an input of cell '{choice.cell}': only "
                       "intermediate nodes get a line", "write lines for n0, n1, ...")
            continue
        if node not in spec.node_names():
            report.add(line.field_span("node"), f"cell '{choice.cell}' has no node '{node}'",
                       did_you_mean(node, spec.node_names(), "its nodes"))
            continue
        if node in seen_nodes:
            report.add(line.field_span("node"), f"node '{node}' is given twice in cell '{choice.cell}'",
                       "put all of its incoming edges on one line: n1 = a(in0) + b(n0)")
            continue
        seen_nodes.add(node)
        sources: set[str] = set()
        for edge in line.edges:
            if op_names is not None and edge.op not in op_names:
                report.add(edge.field_span("op"), f"operation '{edge.op}' is not in the set '{spec.ops}' of "
                           f"cell '{choice.cell}'", did_you_mean(edge.op, op_names, "known here"))
            text = f"{edge.src} -> {node}"
            if _position(spec, edge.src) is None:
                report.add(edge.field_span("src"), f"unknown node '{edge.src}' in cell '{choice.cell}'",
                           did_you_mean(edge.src, spec.input_names() + spec.node_names(), "its nodes"))
            elif edge.src in sources:
                report.add(edge.span, f"edge '{text}' is chosen twice", "choose one operation per edge")
            elif (edge.src, node) not in allowed:
                if (_position(spec, edge.src) or 0) >= (_position(spec, node) or 0):
                    report.add(edge.field_span("src"), f"edge '{text}' goes backwards",
                               "a node reads only the inputs and earlier nodes")
                else:
                    into = [s for s, d in spec.edge_list() if d == node]
                    report.add(edge.field_span("src"), f"cell '{choice.cell}' has no edge '{text}'",
                               f"its edges into {node} come from: {', '.join(into) or 'nothing'}")
            sources.add(edge.src)
    dead = dead_in_cell(spec, live_edges(space, spec, choice))
    if all(n in dead for n in spec.output_nodes()):
        # Not a warning: a cell whose output is all zero cuts the network in two (the compiler refuses it).
        report.add(choice.field_span("cell"), f"cell '{choice.cell}' has no live path from its inputs to its "
                   "output", "choose a non-zero operation on the edges of at least one path from an input "
                   f"to {' or '.join(spec.output_nodes())}")
    elif dead:
        several = len(dead) > 1
        report.add(choice.field_span("cell"),
                   f"node{'s' if several else ''} {', '.join(dead)} of cell '{choice.cell}' "
                   f"{'are' if several else 'is'} dead: no live input, or no path to the cell output",
                   "every path through a dead node is zero: it adds nothing to the cell output",
                   severity="warning")
