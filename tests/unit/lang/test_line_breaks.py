"""One rule for line breaks (``\\n``, ``\\r\\n``, ``\\r``; nothing else) in the parser, the diagnostics, the
checks, the loader and ``fmt``."""

from __future__ import annotations

from pathlib import Path

import pytest

from scnas_dsl.errors import SpecError
from scnas_dsl.graph.printer import find_comments, format_text
from scnas_dsl.loader import load, load_text
from scnas_dsl.source import line_break_of, normalize_line_breaks, split_lines

SPEC = """# top
space s {  # the space
  ops p { c = conv(kernel=3); skip = identity }
  cell a normal { nodes 1; inputs 1; ops p }  # the cell
  unet { stem conv_block -> 8; encoder a; decoder a; head logits }
}
"""
# Characters Python's str.splitlines() also breaks at, which are not line breaks in a .scn file.
NOT_BREAKS = ["\u2028", "\u2029", "\x85", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e"]


def test_split_lines_breaks_only_at_lf_crlf_and_cr() -> None:
    odd = "".join(NOT_BREAKS)
    assert split_lines(f"a\r\nb\rc\nd{odd}e\n") == ["a", "b", "c", f"d{odd}e"]
    assert split_lines("") == [] and split_lines("x") == ["x"] and split_lines("x\n\n") == ["x", ""]
    assert normalize_line_breaks("a\r\nb\rc\n\r\n") == "a\nb\nc\n\n"
    assert line_break_of("a\r\nb\n") == "\r\n" and line_break_of("a\rb") == "\r" and line_break_of("a") == "\n"


@pytest.mark.parametrize("char", NOT_BREAKS)
def test_fmt_keeps_a_comment_with_a_unicode_break_whole_and_later_comments_in_place(char: str) -> None:
    text = SPEC.replace("# the space", f"# the space{char}and more")
    out = format_text(text)
    assert f"# the space{char}and more" in out
    # the cell's trailing comment stays on the cell's line
    cell_line = next(line for line in out.split("\n") if line.strip().startswith("cell a"))
    assert cell_line.endswith("# the cell")
    assert format_text(out) == out
    assert [c.line for c in find_comments(text)] == [1, 2, 4]


@pytest.mark.parametrize("brk", ["\n", "\r\n", "\r"])
def test_every_break_style_parses_locates_and_quotes_the_same(brk: str) -> None:
    text = SPEC.replace("kernel=3", "kernel=4").replace("\n", brk)
    with pytest.raises(SpecError) as info:
        load_text(text, "b.scn")
    (diag,) = info.value.diagnostics
    assert (diag.line, diag.column) == (3, 27)
    assert diag.source == "  ops p { c = conv(kernel=4); skip = identity }"
    assert "\r" not in str(info.value)


def test_a_comment_does_not_swallow_the_rest_of_a_cr_only_file() -> None:
    text = SPEC.replace("\n", "\r")
    loaded = load_text(text)
    assert loaded.space().name == "s"
    assert format_text(text) == format_text(SPEC).replace("\n", "\r")


@pytest.mark.parametrize("brk", ["\r\n", "\r"])
def test_fmt_keeps_the_files_line_break_style(brk: str) -> None:
    canonical = format_text(SPEC)
    assert format_text(canonical.replace("\n", brk)) == canonical.replace("\n", brk)


def test_the_loader_locates_a_non_utf8_byte_in_a_cr_only_file(tmp_path: Path) -> None:
    path = tmp_path / "cr.scn"
    path.write_bytes(b"# one\r# two\rspace \xff {\r")
    with pytest.raises(SpecError) as info:
        load(path)
    (diag,) = info.value.diagnostics
    assert (diag.line, diag.column) == (3, 7)
    assert diag.source is not None and diag.source.startswith("space ")


def test_the_nul_byte_is_located_by_the_same_rule() -> None:
    with pytest.raises(SpecError) as info:
        load_text("# a\r# b\r  \x00")
    assert (info.value.diagnostics[0].line, info.value.diagnostics[0].column) == (3, 3)


def test_a_syntax_error_in_a_cr_only_file_is_on_its_line() -> None:
    with pytest.raises(SpecError) as info:
        load_text("# a\r# b\rspace s { @ }\r")
    diag = info.value.diagnostics[0]
    assert (diag.line, diag.column, diag.source) == (3, 11, "space s { @ }")


def test_the_grammar_itself_ends_a_comment_at_a_lone_cr() -> None:
    from scnas_dsl.syntax import get_parser

    tree = get_parser().parse("# a comment\rgenotype g of s { }\r")
    assert len(tree.children) == 1
