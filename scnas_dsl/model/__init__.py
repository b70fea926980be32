"""The checked model of ``.scn`` files: frozen pydantic models that keep the source span of every element.

No torch here. Equality ignores spans, so ``parse(print(m)) == m`` compares meaning, not layout.

Naming, used across the DSL, the compiler and the docs:

* node names inside a cell: inputs ``in0``, ``in1``, ...; intermediate nodes ``n0``, ``n1``, ...
* a cell *type* is a ``cell`` declaration (``enc``, ``red``, ...); a cell *instance* is one use of a type in
  the U-Net. With ``share by_level`` every instance has its own structure and is named ``type[k]``
  (k = 0, 1, ... counting that type's uses in the order stem, encoder, bridge, decoder).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from scnas_dsl.ops.signatures import ParamValue

Role = Literal["normal", "reduction", "expansion"]
Share = Literal["by_type", "by_level"]
NodeWidth = Literal["split", "full"]
Skips = Literal["sum", "attention"]
OutputKind = Literal["concat", "sum", "node"]


class Span(BaseModel):
    """Where an element stands in its file (1-based line and column; end is exclusive)."""

    model_config = ConfigDict(frozen=True)
    file: str | None = None
    line: int = 0
    column: int = 0
    end_line: int = 0
    end_column: int = 0

    def where(self) -> str:
        return f"{self.file or '<text>'}:{self.line}:{self.column}"


_N = TypeVar("_N", bound="Node")


class Node(BaseModel):
    """Base of every model element: frozen, with a ``span`` that equality and hashing ignore."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    span: Span | None = Field(default=None, repr=False, exclude=True)
    # Spans of parts of the element (a name, a value, the n-th entry of a list as "nodes[1]"), filled by the
    # parser so that a diagnostic can point at the exact word; not part of the meaning.
    _field_spans: dict[str, Span] = PrivateAttr(default_factory=dict)

    def field_span(self, key: str) -> Span | None:
        """The span of a part of this element (``"name"``, ``"ops"``, ``"nodes[1]"``...), else the element's."""
        return self._field_spans.get(key, self.span)

    def with_field_spans(self: _N, spans: dict[str, Span]) -> _N:
        """Record the spans of parts of this element (used by the parser); returns self."""
        self._field_spans.update(spans)
        return self

    def _meaning(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in type(self).model_fields if k != "span"}

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return self._meaning() == other._meaning()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(_hashable(v) for v in self._meaning().values())))


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


class Param(Node):
    """``name=value`` in an operation call."""

    name: str
    value: ParamValue


class OpCall(Node):
    """A library operation with arguments, e.g. ``sep_conv(kernel=3, dilation=2)``."""

    kind: str
    params: tuple[Param, ...] = ()

    def kwargs(self) -> dict[str, ParamValue]:
        return {p.name: p.value for p in self.params}


class OpSpec(Node):
    """A named candidate operation of an operation set: ``dil2 = sep_conv(kernel=3, dilation=2)``."""

    name: str
    call: OpCall


class OpSet(Node):
    """``ops paper { ... }``: the candidate operations offered on the edges of the cells that use it."""

    name: str
    ops: tuple[OpSpec, ...]

    def get(self, name: str) -> OpSpec | None:
        for op in self.ops:
            if op.name == name:
                return op
        return None

    def names(self) -> list[str]:
        return [op.name for op in self.ops]


class EdgeSpec(Node):
    """An edge ``src -> dst`` between node names of a cell."""

    src: str
    dst: str


class OutputSpec(Node):
    """What a cell outputs: ``concat`` or ``sum`` of ``nodes`` (None = every intermediate node), or one
    ``node``."""

    kind: OutputKind = "concat"
    nodes: tuple[str, ...] | None = None


class CellSpec(Node):
    """``cell enc normal { nodes 4; inputs 2; ops paper }`` with optional ``edges`` and ``output``.

    ``edges is None`` means the paper's default: every input and every earlier intermediate node feeds
    every later intermediate node.
    """

    name: str
    role: Role
    nodes: int
    inputs: int
    ops: str
    edges: tuple[EdgeSpec, ...] | None = None
    output: OutputSpec = OutputSpec()

    def input_names(self) -> list[str]:
        return [f"in{i}" for i in range(self.inputs)]

    def node_names(self) -> list[str]:
        return [f"n{i}" for i in range(self.nodes)]

    def edge_list(self) -> list[tuple[str, str]]:
        """The cell's edges as (src, dst) pairs, with the default filled in, in a stable order."""
        if self.edges is not None:
            return [(e.src, e.dst) for e in self.edges]
        pairs: list[tuple[str, str]] = []
        for j, dst in enumerate(self.node_names()):
            for src in self.input_names() + self.node_names()[:j]:
                pairs.append((src, dst))
        return pairs

    def output_nodes(self) -> list[str]:
        """The intermediate nodes that make the cell output."""
        if self.output.nodes is None:
            return self.node_names()
        return list(self.output.nodes)


class Block(Node):
    """A fixed block of the U-Net (stem or head): a library operation and, for the stem, its width."""

    call: OpCall
    width: int | None = None


class CellRef(Node):
    """A use of a cell type in the U-Net sequence."""

    name: str


class Topology(Node):
    """``unet { ... }``: the U-Net built from cells.

    ``width_factor``: reduction cells multiply the width by it, expansion cells divide by it.
    ``node_width``: the level's width ``C_l = stem_width * width_factor**l`` is the width of the cell output;
    ``split`` divides it over the k concatenated output nodes (node width ``ceil(C_l / k)``), ``full`` gives
    every node ``C_l`` so a concat cell outputs ``k * C_l`` (DARTS). Sum and single-node outputs: ``C_l``.
    ``deep_supervision``: decoder levels (1 = half the stem's resolution, ...) that get a segmentation head of
    their own besides the main one at level 0; their losses are weighted as nnU-Net's (docs/compiler.md).
    ``skips``: how the decoder receives the encoder output of its level: ``sum`` (the paper's) or ``attention``
    (an additive attention gate, Oktay et al. 2018, scales the skip before the sum).
    ``in_channels`` and the number of classes are not here: they come from the data or the command line.
    """

    dims: Literal[2, 3] = 3
    stem: Block
    encoder: tuple[CellRef, ...]
    bridge: tuple[CellRef, ...] = ()
    decoder: tuple[CellRef, ...]
    head: Block
    width_factor: int = 2
    share: Share = "by_type"
    node_width: NodeWidth = "split"
    deep_supervision: tuple[int, ...] = ()
    skips: Skips = "sum"

    def sequence(self) -> list[tuple[str, CellRef]]:
        """(section, cell) for every cell in order: section is encoder, bridge or decoder."""
        return (
            [("encoder", c) for c in self.encoder]
            + [("bridge", c) for c in self.bridge]
            + [("decoder", c) for c in self.decoder]
        )


class SearchSpace(Node):
    """``space NAME { ... }`` (or a file-level space): operation sets, cell types and the U-Net."""

    name: str
    opsets: tuple[OpSet, ...]
    cells: tuple[CellSpec, ...]
    unet: Topology

    def opset(self, name: str) -> OpSet | None:
        for s in self.opsets:
            if s.name == name:
                return s
        return None

    def cell(self, name: str) -> CellSpec | None:
        for c in self.cells:
            if c.name == name:
                return c
        return None

    def instances(self) -> list[tuple[str, CellSpec]]:
        """(instance name, cell type) for every cell of the U-Net in order; instance names are
        ``type[k]`` (see module docstring)."""
        seen: dict[str, int] = {}
        out: list[tuple[str, CellSpec]] = []
        for _, ref in self.unet.sequence():
            k = seen.get(ref.name, 0)
            seen[ref.name] = k + 1
            spec = self.cell(ref.name)
            if spec is None:
                raise KeyError(ref.name)
            out.append((f"{ref.name}[{k}]", spec))
        return out

    def structure_keys(self) -> list[str]:
        """The names that own one structure (one set of logits, one genotype cell): cell types used in the
        U-Net with ``by_type``, cell instances with ``by_level``."""
        if self.unet.share == "by_type":
            used: list[str] = []
            for _, ref in self.unet.sequence():
                if ref.name not in used:
                    used.append(ref.name)
            return used
        return [name for name, _ in self.instances()]


class ChosenEdge(Node):
    """``op(src)`` in a genotype node line: the operation chosen on the edge ``src -> node``."""

    op: str
    src: str


class NodeChoice(Node):
    """``n1 = skip(n0) + dil4(in1)``: the chosen incoming edges of one intermediate node."""

    node: str
    edges: tuple[ChosenEdge, ...]


class CellChoice(Node):
    """``cell enc { ... }`` in a genotype: the chosen structure of a cell type (or instance ``enc[1]``)."""

    cell: str
    nodes: tuple[NodeChoice, ...]

    def chosen(self) -> dict[tuple[str, str], str]:
        """{(src, dst): op name} for every chosen edge; edges left out are zero."""
        return {(e.src, n.node): e.op for n in self.nodes for e in n.edges}


class Import(Node):
    """``import "path/to/space.scn"``: a file whose spaces a genotype may refer to (relative to the
    importing file)."""

    path: str


class Genotype(Node):
    """``genotype NAME of SPACE { cell ... }``: one operation chosen on each edge."""

    name: str
    space: str
    cells: tuple[CellChoice, ...]

    def cell(self, name: str) -> CellChoice | None:
        for c in self.cells:
            if c.cell == name:
                return c
        return None


class Document(Node):
    """A whole ``.scn`` file: imports, spaces and genotypes, in any number and order."""

    imports: tuple[Import, ...] = ()
    spaces: tuple[SearchSpace, ...] = ()
    genotypes: tuple[Genotype, ...] = ()


__all__ = [
    "Block", "CellChoice", "CellRef", "CellSpec", "ChosenEdge", "Document", "EdgeSpec", "Genotype",
    "Import", "Node", "NodeChoice", "OpCall", "OpSet", "OpSpec", "OutputSpec", "Param", "Role",
    "NodeWidth", "SearchSpace", "Share", "Span", "Topology",
]
