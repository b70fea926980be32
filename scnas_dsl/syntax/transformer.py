"""Parse tree -> checked model (frozen pydantic models with the source span of every element).

Structural problems that the grammar lets through (a cell without ``nodes``, a ``unet`` block missing,
``dims 4``, a number too large) are collected as diagnostics; ``parse_text`` raises them all at once.
Every grammar rule has a handler: a rule without one is a programming error, not silently a ``Tree``.
"""

from __future__ import annotations

from typing import Any

from lark import Token, Transformer, v_args
from lark.tree import Meta

from scnas_dsl.model import (
    Block,
    CellChoice,
    CellRef,
    CellSpec,
    ChosenEdge,
    Document,
    EdgeSpec,
    Genotype,
    Import,
    NodeChoice,
    OpCall,
    OpSet,
    OpSpec,
    OutputSpec,
    Param,
    SearchSpace,
    Span,
    Topology,
)
from scnas_dsl.model.diagnostics import Diagnostic, at

# Whole numbers longer than this are refused (Python would take them, but nothing in a spec needs them and
# int() of a 10**5-digit string is slow or refused by the interpreter).
_MAX_DIGITS = 18


class UnhandledRule(Exception):
    """A grammar rule without a transformer method (a bug in scnas, not in the user's file)."""


class _Stmt:
    """One statement of a block (``nodes 4``, ``stem ... -> 48``): its keyword, value and span."""

    __slots__ = ("key", "value", "span")

    def __init__(self, key: str, value: Any, span: Span) -> None:
        self.key = key
        self.value = value
        self.span = span


@v_args(meta=True)
class ToModel(Transformer):
    """The transformer; ``diagnostics`` collects structural problems for ``parse_text`` to raise."""

    def __init__(self, file: str | None, lines: list[str]) -> None:
        super().__init__(visit_tokens=False)
        self.file = file
        self.lines = lines
        self.diagnostics: list[Diagnostic] = []
        self.stand_ins: set[tuple[int, int]] = set()

    # ------------------------------------------------------------------ helpers
    def __default__(self, data: Any, children: Any, meta: Any) -> Any:
        raise UnhandledRule(f"grammar rule '{data}' has no handler in scnas_dsl.syntax.transformer")

    def _span(self, meta: Meta) -> Span:
        if getattr(meta, "empty", True):
            return Span(file=self.file)
        return Span(file=self.file, line=meta.line, column=meta.column, end_line=meta.end_line,
                    end_column=meta.end_column)

    def _tok(self, token: Token) -> Span:
        return Span(file=self.file, line=token.line or 0, column=token.column or 0,
                    end_line=token.end_line or 0, end_column=token.end_column or 0)

    def _problem(self, span: Span, message: str, hint: str | None = None, *, stand_in: bool = False) -> None:
        """Record a problem; ``stand_in``: a value was put in the place of what is written there, so that
        the checks of the rest go on (the checker's complaints about the stand-in itself are left out)."""
        self.diagnostics.append(at(span, message, hint, lines=self.lines, file=self.file))
        if stand_in:
            self.stand_ins.add((span.line, span.column))

    def _int(self, token: Token, what: str) -> int:
        """A whole number (``what`` names it in messages: "'nodes'", "a tuple entry"...)."""
        if token.type == "FLOAT":
            self._problem(self._tok(token), f"{what} must be a whole number, not {token.value[:20]}",
                          "write it without a decimal point", stand_in=True)
            value = float(token.value)
            return int(value) if abs(value) < 10**_MAX_DIGITS else 0
        digits = token.value.lstrip("-")
        if len(digits) > _MAX_DIGITS:
            self._problem(self._tok(token), f"the number {token.value[:20]}... is too large",
                          f"whole numbers in a spec have at most {_MAX_DIGITS} digits", stand_in=True)
            return 0
        return int(token.value)

    def _collect(self, stmts: list[_Stmt], keys: tuple[str, ...], where: str) -> dict[str, _Stmt]:
        """Statements by keyword; a keyword given twice is a problem (the second is pointed at)."""
        seen: dict[str, _Stmt] = {}
        for st in stmts:
            if st.key in seen and st.key in keys:
                first = seen[st.key].span
                self._problem(st.span, f"'{st.key}' is given twice in {where}",
                              f"the first is at line {first.line}; keep one")
                continue
            seen[st.key] = st
        return seen

    # ------------------------------------------------------------------ document
    def start(self, meta: Meta, children: list[Any]) -> Document:
        imports = tuple(c for c in children if isinstance(c, Import))
        spaces = tuple(c for c in children if isinstance(c, SearchSpace))
        genotypes = tuple(c for c in children if isinstance(c, Genotype))
        return Document(imports=imports, spaces=spaces, genotypes=genotypes, span=self._span(meta))

    def import_stmt(self, meta: Meta, children: list[Token]) -> Import:
        (path,) = children
        value = path.value[1:-1]
        span = self._span(meta)
        if not value.strip():
            self._problem(self._tok(path), "the import path is empty", 'write the file to import, e.g. import "space.scn"')
        return Import(path=value, span=span).with_field_spans({"path": self._tok(path)})

    # ------------------------------------------------------------------ spaces
    def space(self, meta: Meta, children: list[Any]) -> SearchSpace:
        name, *items = children
        span = self._span(meta)
        opsets = tuple(i for i in items if isinstance(i, OpSet))
        cells = tuple(i for i in items if isinstance(i, CellSpec))
        unets = [i for i in items if isinstance(i, Topology)]
        if not unets:
            self._problem(span, f"space '{name}' has no 'unet {{ ... }}' block",
                          "add one: unet { dims 3; stem conv_block(kernel=3) -> 32; encoder ...; decoder ...; "
                          "head logits(kernel=1) }")
            unet = _placeholder_unet()
        else:
            unet = unets[0]
            for extra in unets[1:]:
                self._problem(extra.span or span, f"space '{name}' has a second 'unet' block",
                              "a space describes one network: keep one 'unet' block")
        out = SearchSpace(name=str(name), opsets=opsets, cells=cells, unet=unet, span=span)
        return out.with_field_spans({"name": self._tok(name)})

    def opset(self, meta: Meta, children: list[Any]) -> OpSet:
        name, *ops = children
        out = OpSet(name=str(name), ops=tuple(ops), span=self._span(meta))
        return out.with_field_spans({"name": self._tok(name)})

    def op_def(self, meta: Meta, children: list[Any]) -> OpSpec:
        name, call = children
        out = OpSpec(name=str(name), call=call, span=self._span(meta))
        return out.with_field_spans({"name": self._tok(name)})

    def call(self, meta: Meta, children: list[Any]) -> OpCall:
        kind, *params = children
        out = OpCall(kind=str(kind), params=tuple(params), span=self._span(meta))
        return out.with_field_spans({"kind": self._tok(kind)})

    def param(self, meta: Meta, children: list[Any]) -> Param:
        name, (value, value_span) = children
        out = Param(name=str(name), value=value, span=self._span(meta))
        return out.with_field_spans({"name": self._tok(name), "value": value_span})

    def int_value(self, meta: Meta, children: list[Token]) -> tuple[int, Span]:
        return self._int(children[0], "a parameter"), self._tok(children[0])

    def float_value(self, meta: Meta, children: list[Token]) -> tuple[float, Span]:
        token = children[0]
        value = float(token.value)
        if value in (float("inf"), float("-inf")):
            self._problem(self._tok(token), f"the number {token.value[:20]} is too large", None, stand_in=True)
            value = 0.0
        return value, self._tok(token)

    def true_value(self, meta: Meta, children: list[Token]) -> tuple[bool, Span]:
        return True, self._span(meta)

    def false_value(self, meta: Meta, children: list[Token]) -> tuple[bool, Span]:
        return False, self._span(meta)

    def name_value(self, meta: Meta, children: list[Token]) -> tuple[str, Span]:
        return str(children[0]), self._tok(children[0])

    def tuple_value(self, meta: Meta, children: list[Token]) -> tuple[tuple[int, ...], Span]:
        return tuple(self._int(t, "a tuple entry") for t in children), self._span(meta)

    # ------------------------------------------------------------------ cells
    def normal(self, meta: Meta, children: list[Any]) -> str:
        return "normal"

    def reduction(self, meta: Meta, children: list[Any]) -> str:
        return "reduction"

    def expansion(self, meta: Meta, children: list[Any]) -> str:
        return "expansion"

    def cell(self, meta: Meta, children: list[Any]) -> CellSpec:
        name, role, *stmts = children
        span = self._span(meta)
        found = self._collect(stmts, ("nodes", "inputs", "ops", "edges", "output"), f"cell '{name}'")
        missing = [k for k in ("nodes", "inputs", "ops") if k not in found]
        if missing:
            example = {"nodes": "nodes 4", "inputs": "inputs 2", "ops": "ops paper"}
            self._problem(self._tok(name), f"cell '{name}' does not say {', '.join(repr(m) for m in missing)}",
                          "a cell needs " + "; ".join(example[m] for m in missing))
        fields: dict[str, Any] = {
            "nodes": found["nodes"].value if "nodes" in found else 1,
            "inputs": found["inputs"].value if "inputs" in found else 1,
            "ops": found["ops"].value if "ops" in found else "",
        }
        if "edges" in found:
            fields["edges"] = found["edges"].value
        if "output" in found:
            fields["output"] = found["output"].value
        out = CellSpec(name=str(name), role=role, span=span, **fields)
        spans = {"name": self._tok(name)}
        spans.update({k: st.span for k, st in found.items()})
        return out.with_field_spans(spans)

    def cell_nodes(self, meta: Meta, children: list[Token]) -> _Stmt:
        return _Stmt("nodes", self._int(children[0], "'nodes'"), self._tok(children[0]))

    def cell_inputs(self, meta: Meta, children: list[Token]) -> _Stmt:
        return _Stmt("inputs", self._int(children[0], "'inputs'"), self._tok(children[0]))

    def cell_ops(self, meta: Meta, children: list[Token]) -> _Stmt:
        return _Stmt("ops", str(children[0]), self._tok(children[0]))

    def cell_edges(self, meta: Meta, children: list[EdgeSpec]) -> _Stmt:
        return _Stmt("edges", tuple(children), self._span(meta))

    def edge(self, meta: Meta, children: list[Token]) -> EdgeSpec:
        src, dst = children
        out = EdgeSpec(src=str(src), dst=str(dst), span=self._span(meta))
        return out.with_field_spans({"src": self._tok(src), "dst": self._tok(dst)})

    def _output(self, meta: Meta, kind: str, names: list[Token] | None) -> _Stmt:
        nodes = None if names is None else tuple(str(t) for t in names)
        out = OutputSpec(kind=kind, nodes=nodes, span=self._span(meta))  # type: ignore[arg-type]
        if names is not None:
            out.with_field_spans({f"nodes[{i}]": self._tok(t) for i, t in enumerate(names)})
        return _Stmt("output", out, self._span(meta))

    def output_concat(self, meta: Meta, children: list[Any]) -> _Stmt:
        return self._output(meta, "concat", children[0] if children else None)

    def output_sum(self, meta: Meta, children: list[Any]) -> _Stmt:
        return self._output(meta, "sum", children[0] if children else None)

    def output_node(self, meta: Meta, children: list[Token]) -> _Stmt:
        return self._output(meta, "node", [children[0]])

    def node_list(self, meta: Meta, children: list[Token]) -> list[Token]:
        return list(children)

    # ------------------------------------------------------------------ the U-Net
    def unet(self, meta: Meta, children: list[_Stmt]) -> Topology:
        span = self._span(meta)
        keys = ("dims", "stem", "encoder", "bridge", "decoder", "head", "width_factor", "share", "node_width",
                "deep_supervision", "skips")
        found = self._collect(children, keys, "the unet block")
        missing = [k for k in ("stem", "encoder", "decoder", "head") if k not in found]
        if missing:
            self._problem(span, f"the unet block does not say {', '.join(repr(m) for m in missing)}",
                          "a unet needs a stem, an encoder, a decoder and a head")
        fields: dict[str, Any] = {k: st.value for k, st in found.items()}
        fields.setdefault("stem", Block(call=OpCall(kind="conv_block"), width=1))
        fields.setdefault("head", Block(call=OpCall(kind="logits")))
        fields.setdefault("encoder", ())
        fields.setdefault("decoder", ())
        if "dims" in fields and fields["dims"] not in (2, 3):
            self._problem(found["dims"].span, f"dims must be 2 or 3, not {fields['dims']}",
                          "3 for volumes (the paper), 2 for slices", stand_in=True)
            fields["dims"] = 3
        out = Topology(span=span, **fields)
        return out.with_field_spans({k: st.span for k, st in found.items()})

    def unet_dims(self, meta: Meta, children: list[Token]) -> _Stmt:
        return _Stmt("dims", self._int(children[0], "'dims'"), self._tok(children[0]))

    def unet_stem(self, meta: Meta, children: list[Any]) -> _Stmt:
        call, width = children
        block = Block(call=call, width=self._int(width, "the stem width"), span=self._span(meta))
        block.with_field_spans({"width": self._tok(width)})
        return _Stmt("stem", block, self._span(meta))

    def unet_head(self, meta: Meta, children: list[Any]) -> _Stmt:
        block = Block(call=children[0], span=self._span(meta))
        return _Stmt("head", block, self._span(meta))

    def _refs(self, key: str, meta: Meta, names: list[Token]) -> _Stmt:
        refs = tuple(CellRef(name=str(t), span=self._tok(t)) for t in names)
        return _Stmt(key, refs, self._span(meta))

    def unet_encoder(self, meta: Meta, children: list[Token]) -> _Stmt:
        return self._refs("encoder", meta, children)

    def unet_bridge(self, meta: Meta, children: list[Token]) -> _Stmt:
        return self._refs("bridge", meta, children)

    def unet_decoder(self, meta: Meta, children: list[Token]) -> _Stmt:
        return self._refs("decoder", meta, children)

    def unet_width_factor(self, meta: Meta, children: list[Token]) -> _Stmt:
        return _Stmt("width_factor", self._int(children[0], "'width_factor'"), self._tok(children[0]))

    def unet_share(self, meta: Meta, children: list[str]) -> _Stmt:
        return _Stmt("share", children[0], self._span(meta))

    def unet_node_width(self, meta: Meta, children: list[str]) -> _Stmt:
        return _Stmt("node_width", children[0], self._span(meta))

    def unet_deep_supervision(self, meta: Meta, children: list[Token]) -> _Stmt:
        return _Stmt("deep_supervision", tuple(self._int(t, "a deep_supervision level") for t in children),
                     self._span(meta))

    def unet_skips(self, meta: Meta, children: list[str]) -> _Stmt:
        return _Stmt("skips", children[0], self._span(meta))

    def skips_sum(self, meta: Meta, children: list[Any]) -> str:
        return "sum"

    def skips_attention(self, meta: Meta, children: list[Any]) -> str:
        return "attention"

    def split(self, meta: Meta, children: list[Any]) -> str:
        return "split"

    def full(self, meta: Meta, children: list[Any]) -> str:
        return "full"

    def by_type(self, meta: Meta, children: list[Any]) -> str:
        return "by_type"

    def by_level(self, meta: Meta, children: list[Any]) -> str:
        return "by_level"

    # ------------------------------------------------------------------ genotypes
    def genotype(self, meta: Meta, children: list[Any]) -> Genotype:
        name, space, *cells = children
        out = Genotype(name=str(name), space=str(space), cells=tuple(cells), span=self._span(meta))
        return out.with_field_spans({"name": self._tok(name), "space": self._tok(space)})

    def cell_choice(self, meta: Meta, children: list[Any]) -> CellChoice:
        (key, key_span), *nodes = children
        out = CellChoice(cell=key, nodes=tuple(nodes), span=self._span(meta))
        return out.with_field_spans({"cell": key_span})

    def cell_key(self, meta: Meta, children: list[Token]) -> tuple[str, Span]:
        if len(children) == 1:
            return str(children[0]), self._tok(children[0])
        name, index = children
        k = self._int(index, "a cell instance index")
        if k < 0:
            self._problem(self._tok(index), f"cell instance index {k} is negative", "instances count from 0: enc[0]")
        return f"{name}[{k}]", self._span(meta)

    def node_choice(self, meta: Meta, children: list[Any]) -> NodeChoice:
        node, *edges = children
        out = NodeChoice(node=str(node), edges=tuple(edges), span=self._span(meta))
        return out.with_field_spans({"node": self._tok(node)})

    def chosen_edge(self, meta: Meta, children: list[Token]) -> ChosenEdge:
        op, src = children
        out = ChosenEdge(op=str(op), src=str(src), span=self._span(meta))
        return out.with_field_spans({"op": self._tok(op), "src": self._tok(src)})


def _placeholder_unet() -> Topology:
    """Stands in for a missing ``unet`` block while the other problems of the file are collected."""
    return Topology(stem=Block(call=OpCall(kind="conv_block"), width=1), encoder=(), decoder=(),
                    head=Block(call=OpCall(kind="logits")))
