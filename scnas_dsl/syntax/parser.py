"""The lark parser of ``.scn`` text and the translation of lark's syntax errors into plain words.

The grammar is ``scnas_dsl/grammars/scn.lark`` inside an installed wheel, or ``grammars/scn.lark`` of the
repository for an editable install. The parser is built once, lazily (LALR, with positions). lark's
``strict`` mode needs the optional ``interegular`` package, so instead a test builds the grammar with
``debug=True`` and fails on any shift/reduce conflict (reduce/reduce conflicts always raise).
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from scnas_dsl.model.diagnostics import Diagnostic
from scnas_dsl.source import code_part, source_line, split_lines

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


def _keywords() -> frozenset[str]:
    """The grammar's words (every quoted literal that looks like a name): reserved, never names."""
    code = "\n".join(line.split("//")[0] for line in grammar_text().splitlines())
    return frozenset(re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)"', code))


KEYWORDS = _keywords()


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
        lines = split_lines(text)
        if token is None or token.type == "$END":
            found = "end of file"
            line, column = _code_end(lines, len(lines) + 1, 1) or (1, 1)
            hint = "the file ends too early: is something (such as a closing '}') missing?"
            end = (line, column + 1)
        else:
            found = _show_token(token)
            end = (token.end_line or line, token.end_column or column + 1)
            before = _code_end(lines, line, column)
            if before is not None and before[0] < line and _missing_before(token, err.expected or ()):
                # The statement before this token is unfinished: point where the missing piece goes.
                found = f"{found} on line {line}"
                line, column = before
                end = (line, column + 1)
                hint = _missing_hint(err.expected or ())
    else:  # pragma: no cover - lark has no other UnexpectedInput kinds today
        found, expected, end = "something unexpected", "", (line, column + 1)
    message = f"expected {expected}, found {found}" if expected else f"unexpected {found}"
    word = getattr(getattr(err, "token", None), "value", None)
    if hint is None and word in KEYWORDS and "NAME" in (getattr(err, "expected", None) or ()):
        hint = f"'{word}' is a keyword: it cannot be a name; rename it, e.g. '{word}_1'"
    expected_terminals = getattr(err, "expected", None) or ()
    if hint is None and isinstance(word, str) and expected_terminals:
        # a misspelt keyword (`skips attentoin`, `deep_supervison`): the closest expected word
        close = difflib.get_close_matches(word, _literal_words(expected_terminals), n=1, cutoff=0.75)
        if close and close[0] != word:
            hint = f"did you mean '{close[0]}'?"
    return Diagnostic(file, line, column, message, hint, end[0], end[1], "error",
                      source_line(split_lines(text), line))


def _literal_words(expected: Iterable[str]) -> list[str]:
    """The keywords among the expected terminals (their literal text)."""
    words = []
    for name in expected:
        try:
            pattern = get_parser().get_terminal(name).pattern
        except KeyError:
            continue
        if isinstance(pattern, PatternStr) and pattern.value.isidentifier():
            words.append(pattern.value)
    return words


def _code_end(lines: list[str], line: int, column: int) -> tuple[int, int] | None:
    """(line, column) just after the last code character before (``line``, ``column``), comments and
    white space skipped; None when only comments and white space come before."""
    number = line
    limit_or_none: int | None = column - 1
    while number >= 1:
        text = source_line(lines, number) or ""
        code = code_part(text if limit_or_none is None else text[:limit_or_none]).rstrip()
        if code.strip():
            return number, len(code) + 1
        number, limit_or_none = number - 1, None
    return None


def _missing_before(token: Token, expected: Iterable[str]) -> bool:
    """Whether a syntax error at ``token`` (first on its line) is rather something missing at the end of
    the line before: the token starts a statement (a keyword or a brace), or only punctuation could have
    continued the statement (an unclosed call, a stem without its width)."""
    if token.type not in _TERMINAL_WORDS and token.type not in ("NAME", "INT", "FLOAT", "STRING"):
        return True
    return all(_is_punctuation(name) for name in expected if name not in _NOT_LISTED)


def _is_punctuation(terminal: str) -> bool:
    literal = _literal(terminal)
    return literal is not None and not literal[:1].isalpha()


def _missing_hint(expected: Iterable[str]) -> str:
    names = set(expected)
    if any(_literal(n) == "->" for n in names):
        return "the stem gives its width after '->', e.g. stem conv_block(kernel=3) -> 32"
    for closing in (")", "}"):
        if any(_literal(n) == closing for n in names):
            return f"is a closing '{closing}' missing here?"
    return "is something missing at the end of this line?"


def _literal(terminal: str) -> str | None:
    term = {t.name: t for t in get_parser().terminals}.get(terminal)
    return term.pattern.value if term is not None and isinstance(term.pattern, PatternStr) else None


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


# What a name after these keywords (or before '=' outside parentheses) names.
_NAMED_AFTER = {"SPACE": "a space", "OPS": "an operation set", "CELL": "a cell", "GENOTYPE": "a genotype",
                "OF": "a space"}


def keyword_names(text: str, file: str | None = None) -> list[Diagnostic]:
    """A keyword written where a name is defined (``cell bridge normal``, ``sum = identity``...): one
    diagnostic each, at the word. Found on the tokens alone, so that it is reported even when the misread
    keyword makes the parse fail further on. ``text`` has ``\\n`` line breaks."""
    tokens: list[Token] = []
    try:
        for token in get_parser().lex(text):
            tokens.append(token)
    except LarkError:
        pass  # the parse reports the bad character; the names before it are still looked at
    found: list[Diagnostic] = []
    lines = split_lines(text)
    depth, braces, context, named = 0, 0, "", -1
    for i, token in enumerate(tokens):
        kind = token.type
        if kind == "LPAR":
            depth += 1
        elif kind == "RPAR":
            depth = max(depth - 1, 0)
        elif kind == "LBRACE":
            braces += 1
        elif kind == "RBRACE":
            braces = max(braces - 1, 0)
        elif braces == 0 and kind in ("SPACE", "GENOTYPE") and i != named:
            context = kind
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        what = None
        if i != named and kind in _NAMED_AFTER and following is not None and following.value in KEYWORDS:
            what, word, named = _NAMED_AFTER[kind], following, i + 1
        elif i != named and token.value in KEYWORDS and depth == 0 and following is not None \
                and following.type == "EQUAL":
            what, word, named = ("a node" if context == "GENOTYPE" else "an operation"), token, i
        if what is not None:
            suggestion = f"{word.value}_{what.split()[-1]}" if word.value != what.split()[-1] else f"my_{word.value}"
            found.append(Diagnostic(
                file, word.line or 1, word.column or 1,
                f"'{word.value}' is a keyword of the language and cannot name {what}",
                f"rename it, e.g. '{suggestion}' (keywords are listed in docs/dsl.md)",
                word.end_line, word.end_column, "error", source_line(lines, word.line or 1)))
    return found
