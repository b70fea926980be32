"""Syntax errors in plain words, robustness against hostile input, and the transformer's completeness."""

from __future__ import annotations

import logging

import pytest
from lark import Lark, Tree

from scnas_dsl.errors import SpecError
from scnas_dsl.loader import load, load_text
from scnas_dsl.model import Node
from scnas_dsl.syntax import grammar_text, parse_text
from scnas_dsl.syntax.parser import get_parser
from scnas_dsl.syntax.transformer import ToModel

SMALL = """
space s {
  ops p { c = conv(kernel=3); k = conv(kernel=(3, 3, 1)); f = sep_conv(kernel=3, dilation=2,) ; z = zero }
  cell enc normal { nodes 2; inputs 2; ops p }
  cell red reduction { nodes 2; inputs 2; ops p }
  cell b expansion {
    nodes 2; inputs 1; ops p
    edges { in0 -> n0, in0 -> n1 n0 -> n1 }
    output sum (n0, n1)
  }
  unet { dims 3; stem conv_block(kernel=3, repeats=2) -> 8; encoder enc red; bridge; decoder b
         head logits(kernel=1); width_factor 2; share by_type }
}
genotype g of s {
  cell enc { n0 = c(in0) + z(in1); n1 = f(n0) }
  cell red { n0 = c(in1) n1 = k(n0) }
  cell b { n0 = c(in0); n1 = c(n0) + f(in0) }
}
"""


def diagnostics(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_text(text, "t.scn")
    return [f"{d.line}:{d.column}: {d.message}" for d in caught.value.diagnostics]


def test_free_layout_semicolons_and_trailing_commas() -> None:
    doc = parse_text(SMALL, "t.scn")
    space = doc.spaces[0]
    assert space.opset("p").get("k").call.kwargs() == {"kernel": (3, 3, 1)}
    assert space.cell("b").edge_list() == [("in0", "n0"), ("in0", "n1"), ("n0", "n1")]
    assert space.cell("b").output.kind == "sum"
    assert doc.genotypes[0].cell("red").chosen() == {("in1", "n0"): "c", ("n0", "n1"): "k"}
    assert load_text(SMALL, "t.scn").genotype() is not None


def test_spans_point_at_the_source() -> None:
    doc = parse_text(SMALL, "t.scn")
    cell = doc.spaces[0].cell("b")
    assert (cell.span.file, cell.span.line, cell.span.column) == ("t.scn", 6, 3)
    assert (cell.field_span("ops").line, cell.field_span("ops").column) == (7, 28)
    edge = doc.genotypes[0].cell("b").nodes[1].edges[1]
    assert (edge.field_span("op").line, edge.field_span("op").column) == (17, 38)


@pytest.mark.parametrize(("text", "expected"), [
    ("space s {", "1:10: expected 'cell', 'ops', 'unet' or '}', found end of file"),
    ("space { }", "1:7: expected a name, found '{'"),
    ("space s { ops p { a = conv(kernel=3 } }", "1:37: expected ')' or ',', found '}'"),
    ("space s { cell c big { } }", "1:18: expected 'expansion', 'normal' or 'reduction', found the name 'big'"),
    ("@", "1:1: expected 'genotype', 'import' or 'space', found the character '@'"),
    ('import "a.scn\n', '1:8: expected a quoted path such as "space.scn", found the character \'"\''),
    ("genotype g of s { cell enc { n0 = c(in0) + } }", "1:44: expected a name, found '}'"),
    ("genotype g s { }", "1:12: expected 'of', found the name 's'"),
])
def test_syntax_errors_say_what_was_expected_in_words(text: str, expected: str) -> None:
    assert diagnostics(text) == [expected]


def test_syntax_error_is_chained_and_rendered() -> None:
    with pytest.raises(SpecError) as caught:
        parse_text("space s {\n  ops p { a = conv(kernel=3 }\n}\n", "f.scn")
    report = str(caught.value)
    assert report.splitlines()[:3] == [
        "f.scn:2:29: error: expected ')' or ',', found '}'",
        " 2 |   ops p { a = conv(kernel=3 }",
        "   |                             ^",
    ]
    assert caught.value.__cause__ is not None


@pytest.mark.parametrize("text", [
    "", "\n\n", "# only a comment\n", "\x00\x01\x02binary", "space s {" * 3, "(" * 10000, "{" * 10000,
    "space s { unet { stem conv_block -> " + "9" * 400 + " } }",
    "space s { ops p { a = conv(kernel=" + "1" * 5000 + ") } }",
    "space s { ops p { a = conv(kernel=1e400) } }",
    "genotype g of s { cell enc[" + "9" * 100 + "] { } }",
    "space \u00e9t\u00e9 { }", "space s { ops p { a = conv(kernel=3) } }" * 3,
])
def test_hostile_input_gives_a_clean_spec_error(text: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_text(text, "hostile.scn")
    assert caught.value.diagnostics, "a SpecError must carry its diagnostics"
    assert "hostile.scn:" in str(caught.value)


def test_a_five_megabyte_file_is_a_clean_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "big.scn"
    path.write_text("# " + "x" * (5 * 2**20) + "\nspace s {", encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        load(path)
    assert "found end of file" in str(caught.value)
    assert len(str(caught.value)) < 2000, "a huge source line must not flood the report"


def test_non_utf8_and_binary_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    latin = tmp_path / "latin.scn"
    latin.write_bytes(b"space s {\n  # caf\xe9\n}\n")
    with pytest.raises(SpecError, match=r"latin.scn:2:8: error: the file is not UTF-8"):
        load(latin)
    binary = tmp_path / "bin.scn"
    binary.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(SpecError):
        load(binary)
    with pytest.raises(SpecError, match="no such file"):
        load(tmp_path / "missing.scn")
    with pytest.raises(SpecError, match="directory"):
        load(tmp_path)


def test_every_grammar_rule_has_a_transformer_handler() -> None:
    parser = get_parser()
    names = {str(rule.alias or rule.origin.name) for rule in parser.rules}
    missing = sorted(n for n in names if not n.startswith("_") and not hasattr(ToModel, n))
    assert missing == []


def test_no_tree_survives_the_transformer() -> None:
    doc = parse_text(SMALL)

    def walk(value: object) -> None:
        assert not isinstance(value, Tree)
        if isinstance(value, Node):
            for key in type(value).model_fields:
                walk(getattr(value, key))
        elif isinstance(value, (tuple, list)):
            for item in value:
                walk(item)

    walk(doc)


def test_grammar_has_no_lalr_conflicts(caplog) -> None:  # type: ignore[no-untyped-def]
    from lark import logger as lark_logger

    lark_logger.setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG, logger="lark"):
            Lark(grammar_text(), parser="lalr", debug=True)
    finally:
        lark_logger.setLevel(logging.WARNING)
    conflicts = [r.getMessage() for r in caplog.records if "conflict" in r.getMessage().lower()]
    assert conflicts == []


@pytest.mark.parametrize(("text", "where", "hint"), [
    ("space s {\n  unet {\n    stem conv_block(kernel=3)  # no width\n    encoder a\n  }\n}\n", (3, 30),
     "the stem gives its width after '->'"),
    ("space s {\n  cell a normal {\n    nodes 1; inputs 1; ops p\n\n  cell b normal { nodes 1 }\n}\n", (3, 29),
     "is a closing '}' missing here?"),
])
def test_a_missing_piece_is_located_where_it_is_missing(text: str, where: tuple[int, int], hint: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_text(text)
    (diag,) = info.value.diagnostics
    assert (diag.line, diag.column) == where
    assert diag.hint is not None and hint in diag.hint
    assert "on line" in diag.message
