"""Parsing ``.scn`` text: lark parser, transformer to the checked model, and error rendering.

``parse_text`` does syntax and structure only; ``scnas_dsl.loader`` adds imports and the semantic checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lark.exceptions import VisitError

from scnas_dsl.errors import SpecError
from scnas_dsl.model import Document
from scnas_dsl.model.diagnostics import Diagnostic, did_you_mean, render_all, spec_error
from scnas_dsl.source import normalize_line_breaks, position, split_lines
from scnas_dsl.syntax.parser import (
    KEYWORDS,
    SyntaxProblem,
    get_parser,
    grammar_text,
    keyword_names,
    parse_tree,
)
from scnas_dsl.syntax.transformer import ToModel, UnhandledRule


def parse_text(text: str, file: str | None = None) -> Document:
    """Parse ``.scn`` text into a Document (syntax and structure only, no semantic checks).

    Raises SpecError whose ``diagnostics`` are Diagnostic objects and whose ``str()`` is the rendered
    report (``file:line:col: error: ...``, the source line, a caret, a hint).
    """
    parsed = parse_document(text, file)
    if parsed.problems:
        raise spec_error(parsed.problems)
    return parsed.document


@dataclass(frozen=True)
class Parsed:
    """A parsed file: its document, its structural problems, and the places (line, column) where a
    stand-in value replaces what is written (a number too large, ``nodes 4.0``, ``dims 4``), whose own
    checker complaints are about the stand-in and are left out."""

    document: Document
    problems: list[Diagnostic] = field(default_factory=list)
    stand_ins: frozenset[tuple[int, int]] = frozenset()


def parse_document(text: str, file: str | None = None) -> Parsed:
    """Parse ``text``; structural problems (a cell without ``nodes``, ``dims 4``, a number too large...)
    come back as diagnostics next to a document with stand-ins, so that the checker can still report the
    rest of the file. A syntax error raises SpecError (nothing after it can be trusted), together with any
    keyword used as a name before it (often its cause).

    Line breaks are ``\n``, ``\r\n`` or ``\r`` (``scnas_dsl.source``); lines and columns count them so.
    """
    if "\x00" in text:
        line, column = position(text, text.index("\x00"))
        raise spec_error([Diagnostic(file, line, column, "the file contains a NUL byte: is it a binary file?",
                                     "a .scn file is plain UTF-8 text")])
    text = normalize_line_breaks(text)
    keywords = keyword_names(text, file)
    try:
        tree = parse_tree(text, file)
    except SyntaxProblem as err:
        raise spec_error([*keywords, err.diagnostic]) from err.__cause__
    transformer = ToModel(file, split_lines(text))
    try:
        document = transformer.transform(tree)
    except VisitError as err:
        # Our own errors arrive wrapped by lark; unwrap them (and let a missing handler show as the bug it is).
        if isinstance(err.orig_exc, (SpecError, UnhandledRule)):
            raise err.orig_exc from None
        raise
    return Parsed(document, [*keywords, *transformer.diagnostics], frozenset(transformer.stand_ins))


__all__ = ["KEYWORDS", "Diagnostic", "Parsed", "did_you_mean", "get_parser", "grammar_text", "parse_document", "parse_text",
           "render_all", "spec_error"]
