"""Keywords cannot be names: a keyword where a name is defined is refused at the definition with a message
that says so; every name the checker accepts survives the printer's round trip (no word is misread)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scnas_dsl.errors import SpecError
from scnas_dsl.graph.printer import format_text, print_document
from scnas_dsl.loader import load_text
from scnas_dsl.syntax import KEYWORDS, parse_text

TEMPLATE = """space {space} {{
  ops {opset} {{ {conv} = conv(kernel=3); {skip} = identity; {zero} = zero }}
  cell {enc} normal {{ nodes 2; inputs 2; ops {opset} }}
  cell {red} reduction {{ nodes 2; inputs 2; ops {opset} }}
  cell {exp} expansion {{ nodes 2; inputs 2; ops {opset} }}
  cell {dec} normal {{ nodes 2; inputs 2; ops {opset} }}
  unet {{
    stem conv_block(kernel=3) -> 8
    encoder {red} {enc}
    bridge {enc}
    decoder {exp} {dec}
    head logits(kernel=1)
  }}
}}

genotype {genotype} of {space} {{
  cell {enc} {{ n0 = {conv}(in0) + {skip}(in1); n1 = {conv}(n0) }}
  cell {red} {{ n0 = {conv}(in0); n1 = {zero}(in1) + {skip}(n0) }}
  cell {exp} {{ n0 = {conv}(in1); n1 = {conv}(n0) }}
  cell {dec} {{ n0 = {conv}(in1); n1 = {skip}(n0) }}
}}
"""
ROLES = ("space", "opset", "conv", "skip", "zero", "enc", "red", "exp", "dec", "genotype")
_KEYWORD_MESSAGE = re.compile(r"'(\w+)' is a keyword of the language and cannot name (a|an) [a-z ]+$")


def test_the_keywords_are_the_grammars_words_including_the_newest() -> None:
    for word in ("space", "ops", "cell", "bridge", "encoder", "decoder", "deep_supervision", "skips", "attention",
                 "sum", "concat", "of", "true", "by_level", "node_width", "split", "full"):
        assert word in KEYWORDS
    for name in ("none", "skip", "zero", "conv", "identity", "n0", "in1", "Bridge", "bridges"):
        assert name not in KEYWORDS


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("keyword", ["bridge", "decoder", "ops", "sum", "space", "of", "head", "skips"])
def test_a_keyword_as_a_name_is_refused_at_its_definition(role: str, keyword: str) -> None:
    names = {r: f"x_{r}" for r in ROLES}
    names[role] = keyword
    text = TEMPLATE.format(**names)
    with pytest.raises(SpecError) as info:
        load_text(text, "k.scn")
    first = info.value.diagnostics[0]
    assert _KEYWORD_MESSAGE.match(first.message), str(info.value)
    assert first.message.startswith(f"'{keyword}' is a keyword")
    assert first.hint is not None and "rename it" in first.hint
    # at the definition: the first place the name occurs in the text
    line, column = _first_place(text, keyword, role)
    assert (first.file, first.line, first.column) == ("k.scn", line, column), str(info.value)
    assert "k.scn:" in str(info.value)


def _first_place(text: str, word: str, role: str) -> tuple[int, int]:
    keyword_before = {"space": "space ", "opset": "ops ", "enc": "cell ", "red": "cell ", "exp": "cell ",
                      "dec": "cell ", "genotype": "genotype "}
    pattern = re.escape(keyword_before.get(role, "")) + r"\b" + re.escape(word) + r"\b" + \
        ("" if role in keyword_before else r"(?= = )")
    match = re.search(pattern, text)
    assert match is not None
    offset = match.start() + len(keyword_before.get(role, ""))
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def test_the_bridge_cell_at_the_end_of_the_encoder_no_longer_vanishes() -> None:
    names = {r: f"x_{r}" for r in ROLES}
    names["enc"] = "bridge"
    with pytest.raises(SpecError, match="'bridge' is a keyword of the language and cannot name a cell"):
        load_text(TEMPLATE.format(**names))
    with pytest.raises(SpecError, match="'bridge' is a keyword"):
        format_text(TEMPLATE.format(**names))


def test_a_keyword_name_that_breaks_the_parse_is_still_named_as_the_cause() -> None:
    # 'head' ends the encoder, and the parse fails two lines later: the cause is reported first.
    names = {r: f"x_{r}" for r in ROLES}
    names["enc"] = "head"
    with pytest.raises(SpecError) as info:
        load_text(TEMPLATE.format(**names))
    assert info.value.diagnostics[0].message == "'head' is a keyword of the language and cannot name a cell"
    assert info.value.diagnostics[0].line == 3


_words = sorted(KEYWORDS)
_keyword_like = st.one_of(
    st.sampled_from(_words),
    st.builds(lambda w, s: w + s, st.sampled_from(_words), st.sampled_from(["s", "_", "1", "_x", "2"])),
    st.builds(lambda p, w: p + w, st.sampled_from(["x", "_", "my_", "a"]), st.sampled_from(_words)),
    st.builds(lambda w, k: "".join(c.upper() if (k >> i) & 1 else c for i, c in enumerate(w)),
              st.sampled_from(_words), st.integers(1, 2**12)),
    st.sampled_from(["none", "skip", "zero", "conv", "identity", "n0x", "in_", "_"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_keyword_like, min_size=len(ROLES), max_size=len(ROLES), unique=True))
def test_every_name_is_refused_as_a_keyword_or_survives_the_round_trip(words: list[str]) -> None:
    names = dict(zip(ROLES, words, strict=True))
    text = TEMPLATE.format(**names)
    try:
        loaded = load_text(text)
    except SpecError as err:
        keyword_names = {w for w in words if w in KEYWORDS}
        assert keyword_names, str(err)
        messages = [d.message for d in err.diagnostics]
        assert any(_KEYWORD_MESSAGE.match(m) for m in messages), str(err)
        # each refused keyword is named; nothing else is wrong with the file
        for word in keyword_names:
            assert any(m.startswith(f"'{word}' is a keyword") for m in messages), str(err)
        return
    assert not any(w in KEYWORDS for w in words)
    space = loaded.space()
    # read as written: nothing was swallowed by a keyword
    assert [c.name for c in space.unet.encoder] == [names["red"], names["enc"]]
    assert [c.name for c in space.unet.bridge] == [names["enc"]]
    assert [c.name for c in space.unet.decoder] == [names["exp"], names["dec"]]
    assert [c.name for c in space.cells] == [names["enc"], names["red"], names["exp"], names["dec"]]
    assert space.opsets[0].names() == [names["conv"], names["skip"], names["zero"]]
    assert (space.name, space.opsets[0].name) == (names["space"], names["opset"])
    assert list(loaded.genotypes) == [names["genotype"]]
    document = loaded.document
    assert parse_text(print_document(document)) == document
    formatted = format_text(text)
    assert parse_text(formatted) == document
    assert format_text(formatted) == formatted


def test_a_misspelt_keyword_gets_the_closest_one() -> None:
    from pathlib import Path

    from scnas_dsl.loader import load

    spec = Path(__file__).resolve().parents[3] / "specs" / "baselines" / "uresnet_paper.scn"
    cases = (("skips attention", "skips attentoin", "attention"),
             ("deep_supervision (1, 2)", "deep_supervison (1, 2)", "deep_supervision"))
    for right, typo, keyword in cases:
        with pytest.raises(SpecError) as err:
            load_text(spec.read_text().replace(right, typo), file="typo.scn")
        assert f"did you mean '{keyword}'?" in str(err.value)
    assert load(spec)  # the original checks
