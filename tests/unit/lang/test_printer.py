"""The canonical printer and the comment-keeping formatter."""

from __future__ import annotations

from pathlib import Path

from scnas_dsl.graph.printer import find_comments, format_text, print_document
from scnas_dsl.syntax import parse_text

MESSY = """# header comment

space s { ops p { c = conv( kernel = 3 )   # trailing on c
  # before d
  d = sep_conv(kernel=3,dilation=2) ; z = zero() }
 cell a normal { nodes 2 inputs 1 ops p
   edges { in0 -> n0
           n0 -> n1 }   # edges note
   output n1 }
  # before unet
unet { dims 3 ; stem conv_block -> 8
 encoder a ; decoder a head logits
 # inside unet, at its end
 }
}
genotype g of s { cell a { n0 = c(in0) # first node
n1 = d(n0) } }
# the very end
"""

CANONICAL = """# header comment

space s {
  ops p {
    c = conv(kernel=3)  # trailing on c
    # before d
    d = sep_conv(kernel=3, dilation=2)
    z = zero
  }

  cell a normal {
    nodes 2; inputs 1; ops p
    edges { in0 -> n0, n0 -> n1 }  # edges note
    output n1
  }

  # before unet
  unet {
    dims 3
    stem conv_block -> 8
    encoder a
    decoder a
    head logits
    width_factor 2
    share by_type
    node_width split
    # inside unet, at its end
  }
}

genotype g of s {
  cell a {
    n0 = c(in0)  # first node
    n1 = d(n0)
  }
}

# the very end
"""


def test_format_text_lays_out_canonically_and_keeps_every_comment() -> None:
    assert format_text(MESSY) == CANONICAL
    assert format_text(CANONICAL) == CANONICAL
    assert parse_text(CANONICAL) == parse_text(MESSY)


def test_print_document_drops_comments_but_keeps_meaning() -> None:
    printed = print_document(parse_text(MESSY))
    assert "#" not in printed
    assert parse_text(printed) == parse_text(MESSY)
    assert printed.splitlines()[:4] == ["space s {", "  ops p {", "    c = conv(kernel=3)", "    d = sep_conv(kernel=3, dilation=2)"]


def test_hash_inside_an_import_path_is_not_a_comment() -> None:
    text = 'import "odd#name.scn"  # real comment\n'
    assert [c.text for c in find_comments(text)] == ["# real comment"]
    assert format_text(text) == text


def test_an_empty_or_comment_only_file_formats_to_itself() -> None:
    assert format_text("") == ""
    assert format_text("# just a note\n") == "# just a note\n"


def test_the_repository_specs_are_canonical() -> None:
    specs = Path(__file__).resolve().parents[3] / "specs"
    for path in specs.rglob("*.scn"):
        text = path.read_text(encoding="utf-8")
        assert format_text(text, str(path)) == text, path
