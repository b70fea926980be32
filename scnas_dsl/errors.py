"""The project's error hierarchy.

Every error a user can cause is one of these. Messages say what is wrong, where (file:line:col, case id,
path), and what to do. The CLI prints them without a traceback and exits non-zero.
"""

from __future__ import annotations


class ScnasError(Exception):
    """Base of every error scnas raises on purpose for bad input or a bad situation."""


class SpecError(ScnasError):
    """A problem in a ``.scn`` file: syntax or meaning. ``diagnostics`` lists every problem found."""

    def __init__(self, message: str, diagnostics: list | None = None) -> None:
        super().__init__(message)
        self.diagnostics = list(diagnostics or [])


def message_for_user(err: ScnasError) -> str:
    """What the command line prints for ``err``: ``error: ...``, once. A SpecError with diagnostics is its
    rendered report, whose lines already say ``file:line:col: error: ...``."""
    if isinstance(err, SpecError) and err.diagnostics:
        return str(err)
    return f"error: {err}"


class CompileError(ScnasError):
    """A checked model that cannot become a network as asked (sizes, channels, unknown operation factory)."""


class DataError(ScnasError):
    """A problem with a data set, a case, or a NIfTI file."""


class CheckpointError(ScnasError):
    """A checkpoint that is missing, corrupt, or does not fit the run."""


class RunError(ScnasError):
    """A run folder or run configuration problem (exists already, bad settings, NaN loss, ...)."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``err``'s message (at most ``limit`` characters), or its type's name when it
    has none (``EOFError()`` of an empty file): for a message that quotes a library's error."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(err).__name__
