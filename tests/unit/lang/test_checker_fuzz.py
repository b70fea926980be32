"""Generated specs close to valid ones (few names, plausible numbers) drive the checker through its paths:
it must report problems as diagnostics and never crash. Random genotypes of the paper's space are accepted
(or refused only for a cut-off cell), and their dead nodes are exactly the ones warned about."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scnas_dsl import model as m
from scnas_dsl.errors import SpecError
from scnas_dsl.graph.cells import dead_nodes
from scnas_dsl.graph.printer import print_document
from scnas_dsl.graph.summary import summarize
from scnas_dsl.loader import load_text

NODE_NAMES = ["in0", "in1", "in2", "n0", "n1", "n2", "n3", "n9"]
CELLS = ["a", "b", "c"]
OPS = ["x", "y", "z"]
nodes = st.sampled_from(NODE_NAMES)
calls = st.one_of(
    st.builds(m.OpCall, kind=st.sampled_from(["conv", "sep_conv", "identity", "zero", "max_pool", "logits",
                                              "conv_block", "convv"]),
              params=st.lists(st.builds(m.Param, name=st.sampled_from(["kernel", "dilation", "repeats", "k"]),
                                        value=st.sampled_from([0, 1, 2, 3, (3, 3), (3, 3, 1), True, 1.5, "a"])),
                              max_size=2).map(tuple)),
)
cells = st.builds(
    m.CellSpec, name=st.sampled_from(CELLS), role=st.sampled_from(["normal", "reduction", "expansion"]),
    nodes=st.integers(0, 4), inputs=st.integers(0, 3), ops=st.sampled_from(["p", "q"]),
    edges=st.none() | st.lists(st.builds(m.EdgeSpec, src=nodes, dst=nodes), max_size=5).map(tuple),
    output=st.one_of(st.just(m.OutputSpec()),
                     st.builds(m.OutputSpec, kind=st.sampled_from(["concat", "sum"]),
                               nodes=st.none() | st.lists(nodes, min_size=1, max_size=3).map(tuple)),
                     st.builds(m.OutputSpec, kind=st.just("node"), nodes=nodes.map(lambda n: (n,)))),
)
refs = st.lists(st.builds(m.CellRef, name=st.sampled_from(CELLS + ["d"])), min_size=1, max_size=4).map(tuple)
spaces = st.builds(
    m.SearchSpace, name=st.just("s"),
    opsets=st.lists(st.builds(m.OpSet, name=st.sampled_from(["p", "q"]),
                              ops=st.lists(st.builds(m.OpSpec, name=st.sampled_from(OPS), call=calls),
                                           max_size=3).map(tuple)), min_size=1, max_size=2).map(tuple),
    cells=st.lists(cells, min_size=1, max_size=4).map(tuple),
    unet=st.builds(m.Topology, dims=st.sampled_from([2, 3]),
                   stem=st.builds(m.Block, call=calls, width=st.integers(0, 16)), encoder=refs,
                   bridge=st.lists(st.builds(m.CellRef, name=st.sampled_from(CELLS)), max_size=1).map(tuple),
                   decoder=refs, head=st.builds(m.Block, call=calls), width_factor=st.integers(0, 3),
                   share=st.sampled_from(["by_type", "by_level"])),
)
choices = st.builds(
    m.CellChoice, cell=st.sampled_from(CELLS + ["a[0]", "a[1]", "b[0]", "c[3]", "d"]),
    nodes=st.lists(st.builds(m.NodeChoice, node=nodes,
                             edges=st.lists(st.builds(m.ChosenEdge, op=st.sampled_from(OPS + ["w"]), src=nodes),
                                            min_size=1, max_size=3).map(tuple)), max_size=4).map(tuple),
)
genotypes = st.builds(m.Genotype, name=st.sampled_from(["g", "h"]), space=st.sampled_from(["s", "t"]),
                      cells=st.lists(choices, max_size=4).map(tuple))
documents = st.builds(m.Document, spaces=spaces.map(lambda s: (s,)),
                      genotypes=st.lists(genotypes, max_size=2).map(tuple))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_the_checker_reports_instead_of_crashing(document: m.Document) -> None:
    text = print_document(document)
    try:
        load_text(text, "generated.scn")
    except SpecError as err:
        assert err.diagnostics
        assert all(d.file == "generated.scn" and d.line > 0 for d in err.diagnostics)
        return

SPACE = (Path(__file__).resolve().parents[3] / "specs" / "unet4cell.scn").read_text(encoding="utf-8")


@st.composite
def paper_genotypes(draw: st.DrawFn) -> str:
    """A random genotype of the paper's space: each edge left out or given a random operation."""
    ops = ["conv3", "dil2", "dil3", "dil4", "maxpool", "avgpool", "skip", "none"]
    lines = ["genotype r of unet4cell {"]
    for key in ["red", "enc", "exp", "dec"]:
        lines.append(f"  cell {key} {{")
        for j in range(4):
            sources = [f"in{i}" for i in range(2)] + [f"n{i}" for i in range(j)]
            chosen = draw(st.lists(st.sampled_from(sources), unique=True, max_size=len(sources)))
            if chosen:
                lines.append(f"    n{j} = " + " + ".join(f"{draw(st.sampled_from(ops))}({s})" for s in chosen))
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paper_genotypes())
def test_random_genotypes_of_the_paper_space(genotype_text: str) -> None:
    try:
        loaded = load_text(SPACE + "\n" + genotype_text, "random.scn")
    except SpecError as err:
        # The only possible error: a cell whose output is cut off entirely.
        assert {d.message.split("'")[2] for d in err.diagnostics if d.severity == "error"} == {
            " has no live path from its inputs to its output"}
        return
    space, genotype = loaded.genotype()
    dead = dead_nodes(space, genotype)
    warned = {d.message.split("'")[1] for d in loaded.warnings}
    assert warned == set(dead)
    summary = summarize(space, genotype)
    chosen = sum(len(c["edges"]) for c in summary["cells"])
    assert chosen == genotype_text.count("(")
