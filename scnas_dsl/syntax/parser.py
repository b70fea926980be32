"""The lark parser of ``.scn`` text and the translation of lark's syntax errors into plain words.

The grammar is ``scnas_dsl/grammars/scn.lark`` inside an installed wheel, or ``grammars/scn.lark`` of the
repository for an editable install. The parser is built once, lazily (LALR, with positions). lark's
``strict`` mode needs the optional ``interegular`` package, so instead a test builds the grammar with
``debug=True`` and fails on any shift/reduce conflict (reduce/reduce conflicts always raise).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from scnas_dsl.syntax.diagnostics import Diagnostic

GRAMMAR_NAME = "scn.lark"

# Names of the grammar's pattern terminals, in the words of the error messages.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "INT": "a whole number",
    "FLOAT": "a number",
    "STRING": 'a quoted path such as "space.scn"',
    "$END": "end of file",
}
# Terminals never worth listing as "expected" (a ';' is allowed almost everywhere).
_NOT_LISTED = {"_SEP", "COMMENT"}


def grammar_text() -> str:
    """The grammar's text: from the installed package, else from the repository's ``grammars/``."""
    try:
        packaged = resources.files("scnas_dsl").joinpath("grammars", GRAMMAR_NAME)
        if packaged.is_file():
            return packaged.read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError, NotADirectoryError):
        pass
    repo = Path(__file__).resolve().parents[2] / "grammars" / GRAMMAR_NAME
    return repo.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def get_parser() -> Lark:
    """The one LALR parser (built on first use)."""
    return Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
    )


def parse_tree(text: str, file: str | None = None) -> Tree:
    """Parse ``text`` into a lark tree; a syntax error becomes a Diagnostic raised as ``SyntaxProblem``."""
    parser = get_parser()
    try:
        return parser.parse(text)
    except UnexpectedInput as err:
        raise SyntaxProblem(describe(err, text, file)) from err
    except LarkError as err:  # anything else lark may raise on odd input: still a located, plain message
        raise SyntaxProblem(Diagnostic(file, 1, 1, f"cannot parse this file: {err}")) from err
    except RecursionError as err:
        raise SyntaxProblem(Diagnostic(file, 1, 1, "the file nests too deeply to be read")) from err


class SyntaxProblem(Exception):
    """A syntax error as a Diagnostic (turned into a SpecError by ``parse_text``)."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def describe(err: UnexpectedInput, text: str, file: str | None) -> Diagnostic:
    """``err`` as a Diagnostic: what was expected, in words, and what was found."""
    line = max(getattr(err, "line", 1) or 1, 1)
    column = max(getattr(err, "column", 1) or 1, 1)
    hint: str | None = None
    if isinstance(err, UnexpectedCharacters):
        pos = err.pos_in_stream if err.pos_in_stream is not None else -1
        char = text[pos] if 0 <= pos < len(text) else ""
        found = _show_char(char)
        expected = _words(err.allowed or ())
        hint = "names use letters, digits and '_'; '#' starts a comment; paths are written in double quotes"
        if char == '"':
            hint = "a quoted path must end on the same line with a closing '\"'"
        end = (line, column + 1)
    elif isinstance(err, (UnexpectedToken, UnexpectedEOF)):
        token = getattr(err, "token", None)
        expected = _words(err.expected or ())
        if token is None or token.type == "$END":
            found = "end of file"
            line, column = _end_position(text)
            hint = "the file ends too early: is something (such as a closing '}') missing?"
            end = (line, column + 1)
        else:
            found = _show_token(token)
            end = (token.end_line or line, token.end_column or column + 1)
    else:  # pragma: no cover - lark has no other UnexpectedInput kinds today
        found, expected, end = "something unexpected", "", (line, column + 1)
    message = f"expected {expected}, found {found}" if expected else f"unexpected {found}"
    lines = text.splitlines()
    source = lines[line - 1] if 0 < line <= len(lines) else None
    return Diagnostic(file, line, column, message, hint, end[0], end[1], "error", source)


def _end_position(text: str) -> tuple[int, int]:
    """(line, column) of the last character of ``text`` (for "found end of file")."""
    lines = text.splitlines() or [""]
    # Point just after the last line with code: that is where the reader expects the missing piece.
    for number in range(len(lines), 0, -1):
        stripped = lines[number - 1].strip()
        if stripped and not stripped.startswith("#"):
            return number, len(lines[number - 1]) + 1
    return 1, 1


def _words(names: Iterable[str]) -> str:
    """Terminal names as a readable, sorted list ("'{', 'ops' or a name")."""
    parser = get_parser()
    by_name = {t.name: t for t in parser.terminals}
    words: list[str] = []
    for name in names:
        if name in _NOT_LISTED:
            continue
        if name in _TERMINAL_WORDS:
            words.append(_TERMINAL_WORDS[name])
            continue
        term = by_name.get(name)
        if term is not None and isinstance(term.pattern, PatternStr):
            words.append(f"'{term.pattern.value}'")
        else:
            words.append(name.lower())
    words = sorted(set(words), key=lambda w: (not w.startswith("'"), w))
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _show_token(token: Token) -> str:
    if token.type == "NAME":
        return f"the name '{_short(token.value)}'"
    if token.type in ("INT", "FLOAT"):
        return f"the number {_short(token.value)}"
    if token.type == "STRING":
        return f"the path {_short(token.value)}"
    return f"'{_short(token.value)}'"


def _show_char(char: str) -> str:
    if not char:
        return "end of file"
    if char.isprintable() and not char.isspace():
        return f"the character '{char}'"
    return f"the character {char!r} (U+{ord(char):04X})"


def _short(value: str, limit: int = 40) -> str:
    return value if len(value) <= limit else value[:limit] + "..."
