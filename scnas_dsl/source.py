"""Source text: the one rule for line breaks, positions and source lines, shared by the parser, the
diagnostics, the checks, the loader and ``scnas fmt``.

A line break is ``\\r\\n``, ``\\n`` or a lone ``\\r``; nothing else. Python's ``str.splitlines()`` also
breaks at form feed, vertical tab, U+001C-U+001E, NEL (U+0085) and U+2028/U+2029: in a ``.scn`` file those
are ordinary characters (inside a comment they belong to the comment). The parser reads the text with every
line break turned into ``\\n`` (``normalize_line_breaks``), which changes no line number and no column.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

LINE_BREAK = re.compile(r"\r\n|\r|\n")


def split_lines(text: str) -> list[str]:
    """The lines of ``text`` without their breaks (a final break does not start an empty line)."""
    lines = LINE_BREAK.split(text)
    if lines[-1] == "":
        lines.pop()
    return lines


def normalize_line_breaks(text: str) -> str:
    """``text`` with every line break written ``\\n``."""
    return LINE_BREAK.sub("\n", text)


def line_break_of(text: str) -> str:
    """The line break ``text`` uses (its first one); ``\\n`` when it has none."""
    match = LINE_BREAK.search(text)
    return match.group() if match else "\n"


def position(text: str, offset: int) -> tuple[int, int]:
    """(line, column), both 1-based, of the character at ``offset`` of ``text``."""
    before = split_lines(text[:offset] + "x")  # the "x" stands for the character itself
    return len(before), len(before[-1])


def source_line(lines: Sequence[str] | None, number: int) -> str | None:
    """Line ``number`` (1-based) of ``lines``, or None when there is no such line."""
    if lines is None or not 0 < number <= len(lines):
        return None
    return lines[number - 1]


def code_part(line: str) -> str:
    """``line`` without its comment (a ``#`` outside a quoted path starts one)."""
    quoted = False
    for col, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:col]
    return line
