"""Property tests: generated models survive print -> parse unchanged, and printing is idempotent."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scnas_dsl import model as m
from scnas_dsl.graph.printer import format_text, print_document
from scnas_dsl.syntax import parse_text

KEYWORDS = {
    "import", "space", "ops", "cell", "normal", "reduction", "expansion", "nodes", "inputs", "edges", "output",
    "concat", "sum", "unet", "dims", "stem", "encoder", "bridge", "decoder", "head", "width_factor", "share",
    "by_type", "by_level", "genotype", "of", "true", "false",
}
_FIRST = "abcdefghijklmnopqrstuvwxyzABCXYZ_"
names = st.builds(lambda a, b: a + b, st.sampled_from(_FIRST),
                  st.text(_FIRST + "0123456789", max_size=8)).filter(lambda s: s not in KEYWORDS)
small_ints = st.integers(min_value=-(10**12), max_value=10**12)
values = st.one_of(
    small_ints,
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.booleans(),
    names,
    st.tuples(small_ints).map(tuple) | st.lists(small_ints, min_size=1, max_size=4).map(tuple),
)
calls = st.builds(m.OpCall, kind=names, params=st.lists(st.builds(m.Param, name=names, value=values), max_size=3).map(tuple))
outputs = st.one_of(
    st.just(m.OutputSpec()),
    st.builds(m.OutputSpec, kind=st.sampled_from(["concat", "sum"]),
              nodes=st.none() | st.lists(names, min_size=1, max_size=4).map(tuple)),
    st.builds(m.OutputSpec, kind=st.just("node"), nodes=names.map(lambda n: (n,))),
)
cells = st.builds(
    m.CellSpec, name=names, role=st.sampled_from(["normal", "reduction", "expansion"]),
    nodes=st.integers(0, 40), inputs=st.integers(0, 4), ops=names,
    edges=st.none() | st.lists(st.builds(m.EdgeSpec, src=names, dst=names), max_size=6).map(tuple),
    output=outputs,
)
refs = st.lists(st.builds(m.CellRef, name=names), min_size=1, max_size=5).map(tuple)
unets = st.builds(
    m.Topology, dims=st.sampled_from([2, 3]), stem=st.builds(m.Block, call=calls, width=st.integers(1, 10**6)),
    encoder=refs, bridge=st.lists(st.builds(m.CellRef, name=names), max_size=2).map(tuple), decoder=refs,
    head=st.builds(m.Block, call=calls, width=st.none()), width_factor=st.integers(0, 10),
    share=st.sampled_from(["by_type", "by_level"]),
)
spaces = st.builds(
    m.SearchSpace, name=names,
    opsets=st.lists(st.builds(m.OpSet, name=names, ops=st.lists(st.builds(m.OpSpec, name=names, call=calls),
                                                               max_size=4).map(tuple)), max_size=2).map(tuple),
    cells=st.lists(cells, max_size=3).map(tuple), unet=unets,
)
keys = names | st.tuples(names, st.integers(0, 99)).map(lambda t: f"{t[0]}[{t[1]}]")
choices = st.builds(
    m.CellChoice, cell=keys,
    nodes=st.lists(st.builds(m.NodeChoice, node=names,
                             edges=st.lists(st.builds(m.ChosenEdge, op=names, src=names), min_size=1,
                                            max_size=3).map(tuple)), max_size=4).map(tuple),
)
genotypes = st.builds(m.Genotype, name=names, space=names, cells=st.lists(choices, max_size=3).map(tuple))
paths = st.text("abcXYZ019_./ -#", min_size=1, max_size=20).filter(lambda p: p.strip() != "")
documents = st.builds(
    m.Document, imports=st.lists(st.builds(m.Import, path=paths), max_size=2).map(tuple),
    spaces=st.lists(spaces, max_size=2).map(tuple), genotypes=st.lists(genotypes, max_size=2).map(tuple),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_generated_models_round_trip_through_the_printer(document: m.Document) -> None:
    text = print_document(document)
    again = parse_text(text)
    assert again == document
    assert print_document(again) == text
    # With no comments, formatting is printing.
    assert format_text(text) == text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spaces, st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30), min_size=1, max_size=4))
def test_formatting_keeps_comments_and_is_idempotent(space: m.SearchSpace, notes: list[str]) -> None:
    lines = print_document(m.Document(spaces=(space,))).splitlines()
    # Put the comments between lines and at ends of lines, then format twice.
    placed = []
    for i, note in enumerate(notes):
        at = (i * 7) % (len(lines) + 1)
        if i % 2:
            lines.insert(at, f"# {note}")
            placed.append(note)
        elif at < len(lines) and lines[at].strip():
            lines[at] += f"  # {note}"
            placed.append(note)
    text = "\n".join(lines) + "\n"
    formatted = format_text(text)
    assert parse_text(formatted) == parse_text(text)
    assert format_text(formatted) == formatted
    for note in placed:
        assert f"# {note}".rstrip() in formatted
