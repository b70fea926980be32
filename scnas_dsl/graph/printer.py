"""Canonical ``.scn`` text from the model, and ``format_text`` for ``scnas fmt`` (which keeps comments).

``print_document(parse_text(t))`` is canonical: printing is idempotent and ``parse_text(print_document(m))
== m`` for every model ``m`` (spans aside). ``format_text`` lays out a file the same way and puts each
comment back: a comment on a line of its own goes before the element that follows it (or that contains
it, when that element is printed on one line); a comment after code goes at the end of the printed line
of the element that ends on that line. Every comment is kept; ``format_text`` checks that it kept all of
them and that the meaning did not change, and refuses (SpecError) otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from scnas_dsl.errors import SpecError
from scnas_dsl.model import (
    Block,
    CellChoice,
    CellSpec,
    Document,
    Genotype,
    Node,
    OpCall,
    OpSet,
    SearchSpace,
    Span,
    Topology,
)
from scnas_dsl.ops.signatures import ParamValue
from scnas_dsl.source import code_part, line_break_of, normalize_line_breaks, split_lines

INDENT = "  "


@dataclass
class _Line:
    """One printed line: its indent level, text, and the source lines (first, last) it stands for."""

    depth: int
    text: str
    anchor: tuple[int, int] | None = None
    leading: list[str] | None = None
    trailing: list[str] | None = None

    def render(self) -> str:
        return f"{INDENT * self.depth}{self.text}" if self.text else ""


def _anchor(*spans: Span | None) -> tuple[int, int] | None:
    lines = [(s.line, s.end_line or s.line) for s in spans if s is not None and s.line > 0]
    if not lines:
        return None
    return min(a for a, _ in lines), max(b for _, b in lines)


def _start(node: Node) -> tuple[int, int] | None:
    span = node.span
    return (span.line, span.line) if span is not None and span.line > 0 else None


def _end(node: Node) -> tuple[int, int] | None:
    span = node.span
    if span is None or span.line <= 0:
        return None
    end = span.end_line or span.line
    return end, end


# ------------------------------------------------------------------------ values and calls
def format_value(value: ParamValue) -> str:
    """A parameter value as it is written: ``3``, ``0.5``, ``true``, ``name``, ``(3, 3, 1)``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "(" + ", ".join(str(v) for v in value) + ")"
    if isinstance(value, float):
        text = repr(value)
        return text if any(c in text for c in ".eE") else text + ".0"
    return str(value)


def format_call(call: OpCall) -> str:
    """``sep_conv(kernel=3, dilation=2)``; an operation without parameters is written without ``()``."""
    if not call.params:
        return call.kind
    return f"{call.kind}(" + ", ".join(f"{p.name}={format_value(p.value)}" for p in call.params) + ")"


# ------------------------------------------------------------------------ the layout
def _document_lines(doc: Document) -> list[_Line]:
    lines: list[_Line] = []
    for imp in doc.imports:
        lines.append(_Line(0, f'import "{imp.path}"', _anchor(imp.span)))
    for space in doc.spaces:
        if lines:
            lines.append(_Line(0, ""))
        lines.extend(_space_lines(space))
    for genotype in doc.genotypes:
        if lines:
            lines.append(_Line(0, ""))
        lines.extend(_genotype_lines(genotype))
    return lines


def _space_lines(space: SearchSpace) -> list[_Line]:
    lines = [_Line(0, f"space {space.name} {{", _start(space))]
    first = True
    for opset in space.opsets:
        if not first:
            lines.append(_Line(1, ""))
        lines.extend(_opset_lines(opset))
        first = False
    previous_multi = False
    for i, cell in enumerate(space.cells):
        one = _cell_one_line(cell)
        if not first and (i == 0 or one is None or previous_multi):
            lines.append(_Line(1, ""))
        if one is not None:
            lines.append(_Line(1, one, _anchor(cell.span)))
        else:
            lines.extend(_cell_lines(cell))
        previous_multi = one is None
        first = False
    if not first:
        lines.append(_Line(1, ""))
    lines.extend(_unet_lines(space.unet))
    lines.append(_Line(0, "}", _end(space)))
    return lines


def _opset_lines(opset: OpSet) -> list[_Line]:
    lines = [_Line(1, f"ops {opset.name} {{", _start(opset))]
    for op in opset.ops:
        lines.append(_Line(2, f"{op.name} = {format_call(op.call)}", _anchor(op.span)))
    lines.append(_Line(1, "}", _end(opset)))
    return lines


def _cell_basics(cell: CellSpec) -> str:
    return f"nodes {cell.nodes}; inputs {cell.inputs}; ops {cell.ops}"


def _cell_one_line(cell: CellSpec) -> str | None:
    """The short form ``cell enc normal { nodes 4; inputs 2; ops paper }`` for a cell with the default
    edges and output; None when the cell needs the block form."""
    if cell.edges is not None or cell.output != type(cell.output)():
        return None
    return f"cell {cell.name} {cell.role} {{ {_cell_basics(cell)} }}"


def _format_output(cell: CellSpec) -> str:
    out = cell.output
    if out.kind == "node":
        return f"output {(out.nodes or ('',))[0]}"
    if out.nodes is None:
        return f"output {out.kind}"
    return f"output {out.kind} ({', '.join(out.nodes)})"


def _cell_lines(cell: CellSpec) -> list[_Line]:
    lines = [_Line(1, f"cell {cell.name} {cell.role} {{", _start(cell))]
    basics = [cell.field_span(k) for k in ("nodes", "inputs", "ops")]
    basics = [s for s in basics if s is not cell.span]
    lines.append(_Line(2, _cell_basics(cell), _anchor(*basics)))
    if cell.edges is not None:
        edges = ", ".join(f"{e.src} -> {e.dst}" for e in cell.edges)
        span = cell.field_span("edges")
        lines.append(_Line(2, f"edges {{ {edges} }}" if edges else "edges { }",
                           _anchor(span) if span is not cell.span else None))
    if cell.output != type(cell.output)():
        span = cell.field_span("output")
        lines.append(_Line(2, _format_output(cell), _anchor(span) if span is not cell.span else None))
    lines.append(_Line(1, "}", _end(cell)))
    return lines


def _block(block: Block) -> str:
    text = format_call(block.call)
    return text if block.width is None else f"{text} -> {block.width}"


def _unet_lines(unet: Topology) -> list[_Line]:
    def at(key: str) -> tuple[int, int] | None:
        span = unet.field_span(key)
        return _anchor(span) if span is not unet.span else None

    lines = [_Line(1, "unet {", _start(unet))]
    lines.append(_Line(2, f"dims {unet.dims}", at("dims")))
    lines.append(_Line(2, f"stem {_block(unet.stem)}", at("stem")))
    lines.append(_Line(2, "encoder " + " ".join(c.name for c in unet.encoder), at("encoder")))
    if unet.bridge:
        lines.append(_Line(2, "bridge " + " ".join(c.name for c in unet.bridge), at("bridge")))
    lines.append(_Line(2, "decoder " + " ".join(c.name for c in unet.decoder), at("decoder")))
    lines.append(_Line(2, f"head {_block(unet.head)}", at("head")))
    lines.append(_Line(2, f"width_factor {unet.width_factor}", at("width_factor")))
    lines.append(_Line(2, f"share {unet.share}", at("share")))
    lines.append(_Line(2, f"node_width {unet.node_width}", at("node_width")))
    # the two later additions are printed only when set, so that older files keep their canonical form
    if unet.deep_supervision:
        lines.append(_Line(2, f"deep_supervision ({', '.join(map(str, unet.deep_supervision))})",
                           at("deep_supervision")))
    if unet.skips != "sum":
        lines.append(_Line(2, f"skips {unet.skips}", at("skips")))
    lines.append(_Line(1, "}", _end(unet)))
    return lines


def _genotype_lines(genotype: Genotype) -> list[_Line]:
    lines = [_Line(0, f"genotype {genotype.name} of {genotype.space} {{", _start(genotype))]
    for choice in genotype.cells:
        lines.extend(_choice_lines(choice))
    lines.append(_Line(0, "}", _end(genotype)))
    return lines


def _choice_lines(choice: CellChoice) -> list[_Line]:
    if not choice.nodes:
        return [_Line(1, f"cell {choice.cell} {{ }}", _anchor(choice.span))]
    lines = [_Line(1, f"cell {choice.cell} {{", _start(choice))]
    for node in choice.nodes:
        edges = " + ".join(f"{e.op}({e.src})" for e in node.edges)
        lines.append(_Line(2, f"{node.node} = {edges}", _anchor(node.span)))
    lines.append(_Line(1, "}", _end(choice)))
    return lines


def _join(lines: list[_Line]) -> str:
    out: list[str] = []
    widths = _trailing_columns(lines)
    for i, line in enumerate(lines):
        # Comments before a closing brace belong to the block's inside: indent them one level deeper.
        depth = line.depth + (1 if line.text == "}" else 0)
        for comment in line.leading or []:
            out.append(f"{INDENT * depth}{comment}" if comment else "")
        text = line.render()
        if line.trailing:
            text = text.ljust(widths[i]) + "  " + "  ".join(line.trailing)
        out.append(text)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n" if out else ""


def _trailing_columns(lines: list[_Line]) -> dict[int, int]:
    """Trailing comments of consecutive lines at one depth start in one column."""
    widths: dict[int, int] = {}
    run: list[int] = []

    def close() -> None:
        width = max((len(lines[j].render()) for j in run), default=0)
        widths.update({j: width for j in run})
        run.clear()

    for i, line in enumerate(lines):
        if line.trailing and not line.leading and (not run or lines[run[-1]].depth == line.depth):
            run.append(i)
            continue
        close()
        if line.trailing:
            run.append(i)
    close()
    return widths


def print_document(doc: Document) -> str:
    """The canonical text of ``doc`` (without comments: use ``format_text`` to keep those)."""
    return _join(_document_lines(doc))


# ------------------------------------------------------------------------ comments
@dataclass(frozen=True)
class Comment:
    """A ``#`` comment: its line, its text, whether code stands before it on the line, and whether a
    blank line follows it in the source."""

    line: int
    text: str
    trailing: bool
    blank_after: bool


def find_comments(text: str) -> list[Comment]:
    """Every comment of ``text`` (a ``#`` outside a quoted path, to the end of the line; lines as
    ``scnas_dsl.source`` splits them)."""
    found: list[Comment] = []
    lines = split_lines(text)
    for number, line in enumerate(lines, start=1):
        code = code_part(line)
        if len(code) < len(line):
            blank = number < len(lines) and not lines[number].strip()
            found.append(Comment(number, line[len(code):].rstrip(), bool(code.strip()), blank))
    return found


def _attach(lines: list[_Line], comments: list[Comment]) -> list[str]:
    """Put every comment on a printed line; returns the comments that come after everything."""
    anchored = [(i, line.anchor) for i, line in enumerate(lines) if line.anchor is not None]
    tail: list[str] = []
    for comment in comments:
        n = comment.line
        if comment.trailing:
            ending = [i for i, (a, b) in anchored if b == n]
            inside = [(b - a, i) for i, (a, b) in anchored if a <= n <= b]
            before = [(b, i) for i, (a, b) in anchored if b < n]
            if ending:
                target = ending[-1]
            elif inside:
                target = min(inside)[1]
            elif before:
                target = max(before)[1]
            else:
                target = anchored[0][0] if anchored else -1
            if target >= 0:
                lines[target].trailing = (lines[target].trailing or []) + [comment.text]
                continue
            tail.append(comment.text)
            continue
        inside = [(b - a, i) for i, (a, b) in anchored if a <= n <= b]
        after = [(a, i) for i, (a, b) in anchored if a > n]
        if inside:
            target = min(inside)[1]
        elif after:
            target = min(after)[1]
        else:
            tail.append(comment.text)
            if comment.blank_after:
                tail.append("")
            continue
        leading = lines[target].leading = lines[target].leading or []
        leading.append(comment.text)
        if comment.blank_after:
            leading.append("")
    return tail


def _pieces(texts: Iterable[str]) -> list[str]:
    return sorted(piece.strip() for text in texts for piece in text.split("#") if piece.strip())


def format_text(text: str, file: str | None = None) -> str:
    """``text`` in canonical layout with its comments kept (see the module docstring).

    The result uses the line break of ``text`` (its first; ``\n`` when it has none), so that a file kept
    with ``\r\n`` stays so.

    Raises SpecError when the text does not parse, or (a bug guard) if the result would lose a comment
    or change the meaning: then nothing should be written.
    """
    from scnas_dsl.syntax import parse_text

    line_break = line_break_of(text)
    text = normalize_line_breaks(text)
    document = parse_text(text, file)
    lines = _document_lines(document)
    comments = find_comments(text)
    tail = _attach(lines, comments)
    body = _join(lines) if lines else ""
    while tail and not tail[-1]:
        tail.pop()
    if tail:
        body = body + ("\n" if body else "") + "\n".join(tail) + "\n"
    where = file or "<text>"
    # Two trailing comments of one printed line are joined into one ("# a  # b"): compare the pieces.
    kept = _pieces(c.text for c in find_comments(body))
    if kept != _pieces(c.text for c in comments):
        raise SpecError(f"{where}: formatting would not keep every comment; the file was left as it is "
                        "(please report this as a bug in scnas fmt)")
    if parse_text(body, file) != document:
        raise SpecError(f"{where}: formatting would change the meaning; the file was left as it is "
                        "(please report this as a bug in scnas fmt)")
    return body.replace("\n", line_break)
