"""The supernet running a SPARSE genotype (edges cut by zero or left out, dead nodes pruned) computes what the
fixed network of that genotype computes, with the same weights, under both sharings and both node widths.

The dense case (every edge a non-zero operation) is in test_supernet.py; here the genotypes cut edges and
leave nodes without input or without a path to the output, which the fixed network prunes and the supernet
keeps (as zeros, or computed and unused). Weights are random everywhere, on both sides, so that a module the
fixed network lacks cannot agree by sitting at its initial (zero-shift) values.
"""

from __future__ import annotations

import pytest
import torch

from scnas_dsl import model as m
from scnas_dsl.nn import build_network, build_supernet
from scnas_dsl.nn.network import FixedNetwork
from scnas_dsl.nn.supernet import Supernet
from tests.unit.nn.spaces import unet_space

Pattern = dict[str, list[tuple[str, str]]]
"""node -> [(operation, source)]: one cell of a genotype; an edge not listed is cut (zero)."""

# Cells of three nodes with two inputs. Every pattern works in every role (stride 2 from a reduction
# cell's inputs included).
CUT: Pattern = {  # edges cut (left out and by an explicit none), every node alive, n0 reaches the output via n1
    "n0": [("conv3", "in0"), ("none", "in1")],
    "n1": [("dil2", "n0")],
    "n2": [("skip", "in1"), ("avgpool", "n1"), ("none", "in0")],
}
NO_INPUT: Pattern = {  # n0 has no live input: pruned (as derive writes it, no edge leaves n0)
    "n0": [("none", "in0")],
    "n1": [("conv3", "in0"), ("maxpool", "in1")],
    "n2": [("dil2", "n1"), ("skip", "in0")],
}
UNREACHED: Pattern = {  # n0 feeds no node: pruned where it is not an output node itself
    "n0": [("conv3", "in1"), ("dil3", "in0")],
    "n1": [("dil4", "in0")],
    "n2": [("conv3", "n1"), ("avgpool", "in1"), ("none", "n0")],
}
DEAD_FEEDS_CONV: Pattern = {  # n0 has no live input but its (non-zero) convolution feeds n1
    "n0": [("none", "in0"), ("none", "in1")],
    "n1": [("conv3", "n0"), ("dil2", "in1")],
    "n2": [("skip", "n1"), ("conv3", "in0")],
}
DENSE_ENOUGH: Pattern = {  # for cells that must keep every output node
    "n0": [("dil2", "in0"), ("conv3", "in1")],
    "n1": [("skip", "n0"), ("none", "in1")],
    "n2": [("maxpool", "n1"), ("conv3", "n0")],
}


def genotype_of(space: m.SearchSpace, patterns: dict[str, Pattern]) -> m.Genotype:
    """A genotype with ``patterns[key]`` for every structure key of ``space``."""
    cells = tuple(
        m.CellChoice(cell=key, nodes=tuple(
            m.NodeChoice(node=node, edges=tuple(m.ChosenEdge(op=op, src=src) for op, src in edges))
            for node, edges in patterns[key].items()
        ))
        for key in space.structure_keys()
    )
    return m.Genotype(name="sparse", space=space.name, cells=cells)


def space_with_output(*, share: str, node_width: str, levels: int, kind: str, nodes: tuple[str, ...] | None,
                      dims: int = 2) -> m.SearchSpace:
    """``unet_space`` with three-node cells whose output is ``kind`` of ``nodes`` (None: every node)."""
    space = unet_space(levels=levels, nodes=3, width=4, share=share, node_width=node_width, dims=dims)
    output = m.OutputSpec(kind=kind, nodes=nodes)  # type: ignore[arg-type]
    return space.model_copy(update={"cells": tuple(c.model_copy(update={"output": output}) for c in space.cells)})


def randomise(net: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in net.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.randn(value.shape, generator=gen))


def copy_weights(fixed: FixedNetwork, supernet: Supernet) -> None:
    """Every weight of the fixed network into the supernet's module of the same key. Only the head may differ
    in shape (a pruned output node of the last cell narrows its concatenation): the fixed head's input
    channels go to the live nodes' channels of the supernet's wider concatenation."""
    target = supernet.state_dict()
    last_fixed, last_super = fixed.plan.cells[-1], supernet.plan.cells[-1]
    with torch.no_grad():
        for key, value in fixed.state_dict().items():
            assert key in target, f"{key}: the fixed network has a module the supernet lacks"
            if target[key].shape == value.shape:
                target[key].copy_(value)
                continue
            assert key == "head.conv.weight", f"{key}: {tuple(value.shape)} vs {tuple(target[key].shape)}"
            assert last_fixed.width == last_super.width  # node_width full: only the node count differs
            width = last_fixed.width
            target[key].zero_()
            for k, node in enumerate(last_fixed.output_nodes):
                j = list(last_super.output_nodes).index(node)
                target[key][:, j * width:(j + 1) * width] = value[:, k * width:(k + 1) * width]


def assert_equivalent(space: m.SearchSpace, genotype: m.Genotype, spatial: tuple[int, ...]) -> None:
    supernet = build_supernet(space, in_channels=2, num_classes=3)
    fixed = build_network(space, genotype, in_channels=2, num_classes=3)
    randomise(supernet, 1)
    randomise(fixed, 2)
    copy_weights(fixed, supernet)
    x = torch.randn(2, 2, *spatial, generator=torch.Generator().manual_seed(3))
    samples = supernet.genotype_samples(genotype)
    with torch.no_grad():
        a = supernet(x, samples=samples)
        b = fixed(x)
    assert a.shape == b.shape == (2, 3, *spatial)
    assert b.abs().max() > 0.1  # a live, non-trivial network
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()


def cycle(keys: list[str], patterns: list[Pattern]) -> dict[str, Pattern]:
    return {key: patterns[i % len(patterns)] for i, key in enumerate(keys)}


@pytest.mark.parametrize("share", ["by_type", "by_level"])
@pytest.mark.parametrize("node_width", ["split", "full"])
@pytest.mark.parametrize("output", ["concat_n1_n2", "sum"])
def test_sparse_genotype_in_the_supernet_equals_the_fixed_network(share: str, node_width: str, output: str) -> None:
    # concat of (n1, n2) or sum of all nodes: pruning n0 leaves the number of concatenated nodes, hence the
    # node widths of both networks, the same (node_width split widens the live nodes when an output node goes)
    kind, nodes = ("concat", ("n1", "n2")) if output.startswith("concat") else ("sum", None)
    space = space_with_output(share=share, node_width=node_width, levels=2, kind=kind, nodes=nodes)
    keys = space.structure_keys()
    genotype = genotype_of(space, cycle(keys, [CUT, NO_INPUT, UNREACHED]))
    fixed = build_network(space, genotype, in_channels=2, num_classes=3)
    # the genotype really is sparse: cut edges in every cell, pruned nodes in some
    assert any("n0 has no incoming edge left: pruned" in note for note in fixed.plan.notes), fixed.plan.notes
    if kind == "concat":
        assert any("n0 does not reach the cell output: pruned" in note for note in fixed.plan.notes)
    for cell_plan in fixed.plan.cells:
        assert len(cell_plan.edges) < len(cell_plan.spec.edge_list())
    assert_equivalent(space, genotype, (16, 16))


def test_sparse_by_level_genotype_in_3d() -> None:
    space = space_with_output(share="by_level", node_width="split", levels=1, kind="concat", nodes=("n1", "n2"),
                              dims=3)
    keys = space.structure_keys()
    assert keys == ["red[0]", "enc[0]", "exp[0]", "dec[0]"]
    assert_equivalent(space, genotype_of(space, cycle(keys, [UNREACHED, NO_INPUT, CUT])), (8, 8, 8))


@pytest.mark.parametrize("share", ["by_type", "by_level"])
def test_a_pruned_output_node_leaves_the_concatenation(share: str) -> None:
    # every node is an output node and widths are full: the last cell's pruned n0 narrows its concatenation
    # (and the head) in the fixed network, where the supernet concatenates zeros in its place
    space = space_with_output(share=share, node_width="full", levels=1, kind="concat", nodes=None)
    keys = space.structure_keys()
    genotype = genotype_of(space, {**cycle(keys[:-1], [DENSE_ENOUGH, CUT]), keys[-1]: NO_INPUT})
    fixed = build_network(space, genotype, in_channels=2, num_classes=3)
    supernet = build_supernet(space, in_channels=2, num_classes=3)
    last = fixed.plan.cells[-1]
    assert last.output_nodes == ("n1", "n2") and supernet.plan.cells[-1].output_nodes == ("n0", "n1", "n2")
    assert last.out_width == 2 * last.width == fixed.state_dict()["head.conv.weight"].shape[1]
    assert not any(".n0_" in k or "_n0." in k for k in fixed.state_dict() if k.startswith(f"cells.{last.index}."))
    assert_equivalent(space, genotype, (8, 8))


def test_a_dead_node_feeding_a_convolution_adds_nothing() -> None:
    space = space_with_output(share="by_type", node_width="split", levels=1, kind="sum", nodes=None)
    keys = space.structure_keys()
    genotype = genotype_of(space, {**cycle(keys, [CUT]), "enc": DEAD_FEEDS_CONV})
    assert "enc[0]: n0 has no incoming edge left: pruned" in build_network(
        space, genotype, in_channels=2, num_classes=3).plan.notes
    assert_equivalent(space, genotype, (8, 8))


def test_eval_mode_equals_the_derived_network_when_a_node_is_pruned() -> None:
    # the same bug seen from evaluation mode: derive() prunes n0, the supernet's argmax still runs its convs
    space = space_with_output(share="by_type", node_width="full", levels=1, kind="sum", nodes=None)
    supernet = build_supernet(space, in_channels=2, num_classes=3)
    randomise(supernet, 1)
    names = supernet.op_names["enc"]
    with torch.no_grad():
        for key, alpha in supernet.arch.items():
            alpha.zero_()
            alpha[:, names.index("conv3")] = 1.0
            if key == "enc":  # n0 loses both inputs; its edges to n1 and n2 still choose conv3
                for row, (_, dst) in enumerate(supernet.edge_lists[key]):
                    if dst == "n0":
                        alpha[row, names.index("none")] = 5.0
    genotype, report = supernet.derive()
    assert "enc: n0 has no incoming edge left: pruned" in report
    fixed = build_network(space, genotype, in_channels=2, num_classes=3)
    # the fixed network takes the supernet's (random) weights: same keys and shapes with a sum output
    fixed.load_state_dict({k: v for k, v in supernet.state_dict().items() if k in fixed.state_dict()})
    supernet.eval()
    fixed.eval()
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(supernet(x), fixed(x), atol=1e-5)


def test_attention_gated_skips_in_the_supernet_equal_the_fixed_network() -> None:
    # the gates are part of the U-Net, not of a cell's choice: the supernet holds them too, under the same keys
    space = space_with_output(share="by_type", node_width="split", levels=2, kind="concat", nodes=("n1", "n2"))
    space = space.model_copy(update={"unet": space.unet.model_copy(update={"skips": "attention"})})
    genotype = genotype_of(space, cycle(space.structure_keys(), [CUT, NO_INPUT, UNREACHED]))
    fixed = build_network(space, genotype, in_channels=2, num_classes=3)
    assert sum(c.gate is not None for c in fixed.cells) >= 2
    assert_equivalent(space, genotype, (16, 16))
