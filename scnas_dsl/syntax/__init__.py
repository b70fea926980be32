"""Parsing ``.scn`` text: lark parser, transformer to the checked model, and error rendering.

``parse_text`` does syntax and structure only; ``scnas_dsl.loader`` adds imports and the semantic checks.
"""

from __future__ import annotations

from lark.exceptions import VisitError

from scnas_dsl.errors import SpecError
from scnas_dsl.model import Document
from scnas_dsl.syntax.diagnostics import Diagnostic, did_you_mean, render_all, spec_error
from scnas_dsl.syntax.parser import SyntaxProblem, get_parser, grammar_text, parse_tree
from scnas_dsl.syntax.transformer import ToModel, UnhandledRule


def parse_text(text: str, file: str | None = None) -> Document:
    """Parse ``.scn`` text into a Document (syntax and structure only, no semantic checks).

    Raises SpecError whose ``diagnostics`` are Diagnostic objects and whose ``str()`` is the rendered
    report (``file:line:col: error: ...``, the source line, a caret, a hint).
    """
    document, problems = parse_document(text, file)
    if problems:
        raise spec_error(problems)
    return document


def parse_document(text: str, file: str | None = None) -> tuple[Document, list[Diagnostic]]:
    """Parse ``text``; structural problems (a cell without ``nodes``, ``dims 4``, a number too large...)
    come back as diagnostics next to a document with stand-ins, so that the checker can still report the
    rest of the file. A syntax error raises SpecError (nothing after it can be trusted)."""
    if "\x00" in text:
        at = text.index("\x00")
        line = text[:at].count("\n") + 1
        column = at - (text.rfind("\n", 0, at) + 1) + 1
        raise spec_error([Diagnostic(file, line, column, "the file contains a NUL byte: is it a binary file?",
                                     "a .scn file is plain UTF-8 text")])
    try:
        tree = parse_tree(text, file)
    except SyntaxProblem as err:
        raise spec_error([err.diagnostic]) from err.__cause__
    transformer = ToModel(file, text.splitlines())
    try:
        document = transformer.transform(tree)
    except VisitError as err:
        # Our own errors arrive wrapped by lark; unwrap them (and let a missing handler show as the bug it is).
        if isinstance(err.orig_exc, (SpecError, UnhandledRule)):
            raise err.orig_exc from None
        raise
    return document, list(transformer.diagnostics)


__all__ = ["Diagnostic", "did_you_mean", "get_parser", "grammar_text", "parse_document", "parse_text", "render_all", "spec_error"]
