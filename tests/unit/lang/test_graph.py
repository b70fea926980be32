"""Cell DAGs, the U-Net graph, dead nodes, the summary and the drawings."""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx
import pytest

from scnas_dsl.graph.cells import cell_graph, dead_nodes, unet_graph
from scnas_dsl.graph.summary import render_text, summarize
from scnas_dsl.loader import load, load_text

SPECS = Path(__file__).resolve().parents[3] / "specs"

SPACE = """
space s {
  ops p { c = conv(kernel=3); k = skip_op; z = zero }
  cell a normal { nodes 3; inputs 2; ops p }
  cell r reduction { nodes 2; inputs 2; ops p }
  cell x expansion { nodes 2; inputs 2; ops p }
  unet { dims 3; stem conv_block -> 8; encoder a r a; decoder x a; head logits }
}
"""


def paper():  # type: ignore[no-untyped-def]
    return load(SPECS / "unet4cell.scn").space()


def test_cell_graph_of_a_space_has_every_candidate_on_every_edge() -> None:
    graph = cell_graph(paper(), "enc")
    assert nx.is_directed_acyclic_graph(graph)
    kinds = nx.get_node_attributes(graph, "kind")
    assert [n for n, k in kinds.items() if k == "input"] == ["in0", "in1"]
    assert [n for n, k in kinds.items() if k == "node"] == ["n0", "n1", "n2", "n3"]
    assert kinds["out"] == "output"
    op_edges = [(u, v) for u, v, d in graph.edges(data=True) if d.get("kind") != "output"]
    assert len(op_edges) == 14  # 2 + 3 + 4 + 5: every earlier node feeds every later one
    assert all(len(graph.edges[e]["candidates"]) == 8 for e in op_edges)
    assert sorted(u for u, v in graph.in_edges("out")) == ["n0", "n1", "n2", "n3"]


def test_cell_graph_of_a_genotype_carries_the_chosen_operations() -> None:
    space, genotype = load(SPECS / "genotypes" / "example.scn").genotype()
    graph = cell_graph(space, "enc", genotype)
    assert graph.edges["in0", "n0"]["op"] == "dil2"
    assert graph.edges["n0", "n1"]["op"] == "skip"
    assert not graph.has_edge("in0", "n1")  # left out: zero
    # An instance name maps to its type's structure with by_type sharing.
    assert cell_graph(space, "enc[2]", genotype).edges["in0", "n0"]["op"] == "dil2"


def test_unet_graph_has_levels_widths_and_skips() -> None:
    graph = unet_graph(paper())
    assert list(nx.topological_sort(graph))[0] == "stem"
    assert graph.nodes["red[2]"]["level"] == 3 and graph.nodes["red[2]"]["width"] == 384
    assert graph.nodes["dec[2]"]["level"] == 0 and graph.nodes["head"]["width"] == 48
    skips = sorted((u, v) for u, v, d in graph.edges(data=True) if d["kind"] == "skip")
    # Every decoder cell: the previous output plus the encoder output of its level (paper, section 2).
    assert skips == [("enc[0]", "dec[1]"), ("enc[0]", "exp[2]"), ("enc[1]", "dec[0]"), ("enc[1]", "exp[1]"),
                     ("red[2]", "exp[0]"), ("stem", "dec[2]")]
    assert all(graph.edges[u, v, "skip"]["inputs"] == [1] for u, v in skips)
    # The first reduction cell takes the stem output twice.
    assert graph.edges["stem", "red[0]", "sequence"]["inputs"] == [0, 1]
    assert graph.edges["red[0]", "red[1]", "sequence"]["inputs"] == [0]
    assert graph.edges["enc[0]", "red[1]", "sequence"]["inputs"] == [1]
    # The last reduction cell feeds the first expansion cell twice: as in0 and as the skip into in1.
    assert graph.number_of_edges("red[2]", "exp[0]") == 2


def test_dead_nodes_follow_zero_edges_transitively() -> None:
    text = SPACE + """
genotype g of s {
  cell a { n0 = z(in0); n1 = c(n0); n2 = c(in1) }
  cell r { n0 = c(in0) + c(in1); n1 = c(n0) }
  cell x { n0 = c(in0) }
}
"""
    loaded = load_text(text.replace("skip_op", "identity"), "g.scn")
    space, genotype = loaded.genotype()
    assert dead_nodes(space, genotype) == {"a": ["n0", "n1"], "x": ["n1"]}
    messages = [d.message for d in loaded.warnings]
    assert messages == [
        "nodes n0, n1 of cell 'a' are dead: no live input, or no path to the cell output",
        "node n1 of cell 'x' is dead: no live input, or no path to the cell output",
    ]


def test_a_node_that_reaches_no_output_is_dead() -> None:
    text = SPACE.replace("skip_op", "identity").replace(
        "cell a normal { nodes 3; inputs 2; ops p }",
        "cell a normal { nodes 2; inputs 1; ops p; edges { in0 -> n0, in0 -> n1, n0 -> n1 }; output n1 }")
    text += "genotype g of s { cell a { n0 = c(in0); n1 = c(in0) } cell r { n0 = c(in0) + c(in1); n1 = c(n0) }" \
            " cell x { n0 = c(in0); n1 = c(n0) + c(in1) } }"
    space, genotype = load_text(text).genotype()
    assert dead_nodes(space, genotype) == {"a": ["n0"]}


def test_summary_counts_logits_and_search_space_size() -> None:
    summary = summarize(paper())
    assert summary["kind"] == "space" and summary["name"] == "unet4cell"
    assert [c["key"] for c in summary["cells"]] == ["red", "enc", "exp", "dec"]
    assert summary["arch_logits"] == 4 * 14 * 8
    assert summary["log10_architectures"] == pytest.approx(4 * 14 * math.log10(8), abs=1e-5)
    assert summary["cells"][0]["edges"][0] == {"src": "in0", "dst": "n0", "candidates": [
        "conv3", "dil2", "dil3", "dil4", "maxpool", "avgpool", "skip", "none"]}
    text = render_text(summary)
    assert "architecture logits: 448" in text and "10^50.57" in text
    by_level = summarize(load(SPECS / "unet4cell_by_level.scn").space())
    assert by_level["arch_logits"] == 12 * 14 * 8


def test_summary_of_a_genotype_lists_chosen_operations() -> None:
    space, genotype = load(SPECS / "baselines" / "resunet3d.scn").genotype()
    summary = summarize(space, genotype)
    assert summary["kind"] == "genotype" and summary["arch_logits"] == 0
    assert summary["log10_architectures"] == 0.0
    down = next(c for c in summary["cells"] if c["key"] == "down")
    assert down["edges"] == [{"src": "in0", "dst": "n0", "op": "conv3"}, {"src": "n0", "dst": "n1", "op": "conv3"},
                             {"src": "in0", "dst": "n1", "op": "skip"}]
    assert "in0 -> n1   skip" in render_text(summary)


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_draw_cells_writes_the_picture(tmp_path: Path, suffix: str) -> None:
    from scnas_dsl.graph.draw import draw_cells

    space, genotype = load(SPECS / "genotypes" / "example.scn").genotype()
    path = draw_cells(space, genotype if suffix != ".svg" else None, tmp_path / f"cells{suffix}")
    data = path.read_bytes()
    assert len(data) > 5000
    assert data.startswith({".png": b"\x89PNG", ".svg": b"<?xml", ".pdf": b"%PDF"}[suffix])


def test_layered_layout_puts_inputs_first_and_output_last() -> None:
    from scnas_dsl.graph.draw import layered_layout

    graph = cell_graph(paper(), "enc")
    pos = layered_layout(graph)
    assert pos["in0"][0] == pos["in1"][0] == 0
    assert pos["out"][0] > max(x for n, (x, _) in pos.items() if n != "out")
    assert pos["n3"][0] > pos["n2"][0] > pos["n1"][0] > pos["n0"][0]


def test_unet_graph_agrees_with_the_compilers_plan() -> None:
    plan_module = pytest.importorskip("scnas_dsl.nn.plan")
    for name in ["unet4cell.scn", "baselines/unet3d.scn", "tiny_by_level.scn"]:
        space = load(SPECS / name).space()
        graph = unet_graph(space)
        plan = plan_module.build_plan(space)
        names = {plan_module.STEM: "stem", **{c.index: c.instance for c in plan.cells}}
        for cell in plan.cells:
            want = {(names[i.source], int(i.name[2:])) for i in cell.inputs}
            got = {(u, j) for u, _, d in graph.in_edges(cell.instance, data=True) if d["kind"] == "sequence"
                   for j in d["inputs"]}
            assert got == want, cell.instance
            skips = [u for u, _, d in graph.in_edges(cell.instance, data=True) if d["kind"] == "skip"]
            assert skips == ([names[cell.skip.source]] if cell.skip else []), cell.instance
            assert graph.nodes[cell.instance]["level"] == cell.out_level
