"""Diagnostics: one problem of a ``.scn`` file with its place, and their rendering for people.

They sit in the model layer: the parser (``scnas_dsl.syntax``), the checks (``scnas_dsl.model.checks``) and
the loader make them, and nothing here imports those.

A rendered diagnostic reads like a compiler's::

    specs/unet.scn:12:10: error: unknown operation 'dil5'
       12 |     n1 = dil5(in0) + conv3(in1)
          |          ^^^^
      help: did you mean 'dil2'? known here: conv3, dil2, dil3
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from scnas_dsl.errors import SpecError
from scnas_dsl.model import Span
from scnas_dsl.source import source_line

Severity = Literal["error", "warning"]

# Source lines longer than this are cut in the report (a 5 MB one-line file must not flood the terminal).
_MAX_SHOWN = 160


@dataclass(frozen=True)
class Diagnostic:
    """One problem: where (1-based line and column, ``end_*`` exclusive), what, and what to do.

    ``source`` is the text of the line the problem is on (kept so that a report can be rendered
    without the file at hand).
    """

    file: str | None
    line: int
    column: int
    message: str
    hint: str | None = None
    end_line: int | None = None
    end_column: int | None = None
    severity: Severity = "error"
    source: str | None = None

    @property
    def end(self) -> tuple[int, int]:
        """(line, column) just past the problem; the start itself when unknown."""
        return (self.end_line or self.line, self.end_column or self.column)

    def where(self) -> str:
        return f"{self.file or '<text>'}:{self.line}:{self.column}"

    def render(self) -> str:
        """The full report: ``file:line:col: severity: message``, the source line, a caret, the hint."""
        out = [f"{self.where()}: {self.severity}: {self.message}"]
        if self.source is not None and self.line > 0:
            text = self.source.rstrip("\r\n").expandtabs(1)
            start = max(self.column - 1, 0)
            cut = 0
            if len(text) > _MAX_SHOWN:
                # Keep the caret visible: show a window of the line around the column.
                cut = max(0, start - _MAX_SHOWN // 2)
                text = ("..." if cut else "") + text[cut : cut + _MAX_SHOWN] + "..."
                start = start - cut + (3 if cut else 0)
            width = 1
            if self.end_line == self.line and self.end_column and self.end_column > self.column:
                width = self.end_column - self.column
            width = max(1, min(width, max(1, len(text) - start)))
            gutter = str(self.line)
            pad = " " * len(gutter)
            out.append(f" {gutter} | {text}")
            out.append(f" {pad} | {' ' * start}{'^' * width}")
        if self.hint:
            out.append(f"  help: {self.hint}")
        return "\n".join(out)


def at(span: Span | None, message: str, hint: str | None = None, *, lines: Sequence[str] | None = None,
       severity: Severity = "error", file: str | None = None) -> Diagnostic:
    """A diagnostic at ``span`` (the element the problem is about), with the source line from ``lines``."""
    if span is None:
        return Diagnostic(file, 0, 0, message, hint, severity=severity)
    return Diagnostic(
        span.file if span.file is not None else file, span.line, span.column, message, hint,
        span.end_line, span.end_column, severity, source_line(lines, span.line),
    )


def render_all(diagnostics: Iterable[Diagnostic]) -> str:
    """Every diagnostic rendered, errors and warnings counted at the end."""
    diags = list(diagnostics)
    parts = [d.render() for d in diags]
    errors = sum(d.severity == "error" for d in diags)
    warnings = len(diags) - errors
    summary = []
    if errors:
        summary.append(f"{errors} error{'s' if errors != 1 else ''}")
    if warnings:
        summary.append(f"{warnings} warning{'s' if warnings != 1 else ''}")
    if summary:
        parts.append(", ".join(summary))
    return "\n".join(parts)


def spec_error(diagnostics: Iterable[Diagnostic]) -> SpecError:
    """A SpecError carrying ``diagnostics``; its ``str()`` is the full rendered report."""
    diags = sorted(diagnostics, key=lambda d: (d.file or "", d.line, d.column))
    return SpecError(render_all(diags), diags)


def did_you_mean(name: str, known: Iterable[str], what: str = "known") -> str:
    """A hint for an unknown ``name``: the closest known names (difflib) and the full list."""
    options = list(dict.fromkeys(known))
    if not options:
        return f"{what}: none"
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    listing = ", ".join(options[:30]) + (", ..." if len(options) > 30 else "")
    if close:
        return f"did you mean '{close[0]}'? {what}: {listing}"
    return f"{what}: {listing}"
