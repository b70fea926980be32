"""Random genotypes (``scnas sample``): uniform over the valid choices, valid and compiling, repeatable for a
seed, matched within the tolerance, costed exactly like ``estimate``, written as loadable files."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from scipy.stats import chisquare
from torch import nn

from scnas_dsl import model as m
from scnas_dsl.errors import RunError
from scnas_dsl.graph.printer import print_document
from scnas_dsl.loader import load, load_text
from scnas_dsl.nn import build_network
from scnas_dsl.nn.cost import estimate
from scnas_dsl.nn.random_genotypes import (
    CostCounter,
    SamplingError,
    draw_genotypes,
    sample_genotypes,
    sample_names,
    write_samples,
)
from scnas_dsl.ops.library import default_library
from scnas_dsl.ops.signatures import OpSignature
from tests.unit.nn.spaces import baseline_genotype, baseline_space, call, unet_space

CONV, SKIP, NONE = ("conv3", "conv", {"kernel": 3}), ("skip", "identity", {}), ("none", "zero", {})
SMALL = (CONV, ("dil2", "sep_conv", {"kernel": 3, "dilation": 2}), SKIP, NONE)


def _cell_categories(ops: list[str], zeros: set[str]) -> Counter[frozenset]:
    """For a two-node, two-input cell whose output concatenates n0 and n1: how many of the operation
    assignments of its five edges give each pruned cell (its live edges and their operations). Worked out
    here without the code under test: n0 lives if an input edge into it is non-zero, n1 if an edge from an
    input or from a live n0 is; a cell with neither is invalid and left out."""
    edges = [("in0", "n0"), ("in1", "n0"), ("in0", "n1"), ("in1", "n1"), ("n0", "n1")]
    counts: Counter[frozenset] = Counter()
    for assignment in itertools.product(ops, repeat=len(edges)):
        chosen = dict(zip(edges, assignment, strict=True))
        into_n0 = {e: op for e, op in chosen.items() if e[1] == "n0" and op not in zeros}
        into_n1 = {e: op for e, op in chosen.items() if e[1] == "n1" and op not in zeros and
                   (e[0] != "n0" or into_n0)}
        if into_n0 or into_n1:
            counts[frozenset({**into_n0, **into_n1}.items())] += 1
    return counts


def test_draws_are_uniform_over_valid_choices() -> None:
    # every edge uniform over {conv3, skip, none}, cells without a live path drawn again: each of the 240 valid
    # assignments of a cell equally likely, so each pruned cell has the probability of its assignments
    space = unet_space(nodes=2, dims=2, levels=1, bridge=False, ops=(CONV, SKIP, NONE))
    expected = _cell_categories(["conv3", "skip", "none"], {"none"})
    assert sum(expected.values()) == 240 and len(expected) == 224
    stream = draw_genotypes(space, seed=0)
    draws = 2000
    observed: dict[str, Counter[frozenset]] = {key: Counter() for key in space.structure_keys()}
    for genotype in itertools.islice(stream, draws):
        for cell in genotype.cells:
            observed[cell.cell][frozenset(cell.chosen().items())] += 1
    categories = list(expected)
    for key, counts in observed.items():
        assert set(counts) <= set(expected), f"{key}: a draw outside the valid cells"
        f_obs = [counts[c] for c in categories]
        f_exp = [draws * expected[c] / 240 for c in categories]
        assert chisquare(f_obs, f_exp).pvalue > 1e-3, key
    # the cells of one genotype are drawn independently (not the same choice for every cell)
    same = sum(1 for g in itertools.islice(draw_genotypes(space, seed=1), 200)
               if g.cells[0].chosen() == g.cells[1].chosen())
    assert same < 10


def test_zero_is_drawn_and_dead_cells_are_redrawn() -> None:
    # two zero operations out of three: a cell of one node is dead in 4/9 of the raw draws
    ops = (CONV, NONE, ("none2", "zero", {}))
    space = unet_space(nodes=1, dims=2, levels=1, bridge=False, ops=ops)
    kinds: Counter[int] = Counter()
    for genotype in itertools.islice(draw_genotypes(space, seed=0), 900):
        for cell in genotype.cells:
            assert cell.chosen(), "a cell without a live edge"
            kinds[len(cell.chosen())] += 1
    # valid assignments of the two edges: 1 with both conv3, 4 with one conv3 and one zero
    total = sum(kinds.values())
    assert abs(kinds[1] / total - 4 / 5) < 0.03 and abs(kinds[2] / total - 1 / 5) < 0.03


@pytest.mark.parametrize("share", ["by_type", "by_level"])
def test_every_sample_is_valid_and_compiles(share: str) -> None:
    space = unet_space(nodes=3, dims=3, width=4, levels=1, share=share, ops=SMALL)
    samples = sample_genotypes(space, 3, seed=3, patch=(8, 8, 8))
    assert [s.genotype.name for s in samples] == ["random_000", "random_001", "random_002"]
    assert len({s.genotype.cells for s in samples}) == 3
    for s in samples:
        assert [c.cell for c in s.genotype.cells] == space.structure_keys()
        loaded = load_text(print_document(m.Document(spaces=(space,), genotypes=(s.genotype,))), "s.scn")
        assert not [w for w in loaded.warnings if "no live path" in w.message]
        net = build_network(space, s.genotype, in_channels=1, num_classes=2)
        assert net(torch.randn(1, 1, 4, 4, 4)).shape == (1, 2, 4, 4, 4)
        assert s.params == sum(p.numel() for p in net.parameters())
        assert s.draws == 1 and s.settings.patch == (8, 8, 8) and s.settings.stem_width == 4


def test_a_seed_gives_the_same_genotypes_and_more_keeps_the_first() -> None:
    space = unet_space(nodes=2, dims=2, width=4, levels=1, ops=SMALL)
    three = [s.genotype for s in sample_genotypes(space, 3, seed=7, patch=(8, 8))]
    assert [s.genotype for s in sample_genotypes(space, 3, seed=7, patch=(8, 8))] == three
    assert [s.genotype for s in sample_genotypes(space, 2, seed=7, patch=(8, 8))] == three[:2]
    other = [s.genotype for s in sample_genotypes(space, 3, seed=8, patch=(8, 8))]
    assert all(g.cells != h.cells for g, h in zip(other, three, strict=True))


def _like(space: m.SearchSpace) -> m.Genotype:
    """A DARTS-like genotype: conv3 on the edges from the inputs into n0 and from n0 into n1."""
    cells = []
    for key in space.structure_keys():
        cells.append(m.CellChoice(cell=key, nodes=(
            m.NodeChoice(node="n0", edges=(m.ChosenEdge(op="conv3", src="in0"), m.ChosenEdge(op="dil2", src="in1"))),
            m.NodeChoice(node="n1", edges=(m.ChosenEdge(op="conv3", src="n0"), m.ChosenEdge(op="skip", src="in1"))),
        )))
    return m.Genotype(name="found", space=space.name, cells=tuple(cells))


@pytest.mark.parametrize("match", ["flops", "params"])
def test_matched_samples_are_within_the_tolerance(match: str) -> None:
    space = unet_space(nodes=2, dims=2, width=4, levels=1, ops=SMALL)
    like = _like(space)
    report = estimate(space, genotype=like, patch=(16, 16), in_channels=1, num_classes=2)
    target = report.flops if match == "flops" else report.params
    counter = CostCounter(space, (16, 16))
    free = [dict(zip(("flops", "params"), counter(g), strict=True))[match]
            for g in itertools.islice(draw_genotypes(space, seed=0), 6)]
    assert any(abs(value - target) > 0.1 * target for value in free)  # so the filter has work to do
    samples = sample_genotypes(space, 4, seed=0, like=like, match=match, patch=(16, 16))  # type: ignore[arg-type]
    for s in samples:
        assert abs(getattr(s, match) - target) <= 0.1 * target
        assert s.relative_difference == pytest.approx((getattr(s, match) - target) / target)
        assert s.settings.target == target and s.settings.like == "found" and s.settings.tolerance == 0.1
    assert sum(s.draws for s in samples) > 4
    tight = sample_genotypes(space, 2, seed=0, like=like, match=match, patch=(16, 16), tolerance=0.02)  # type: ignore[arg-type]
    assert all(abs(getattr(s, match) - target) <= 0.02 * target for s in tight)


def test_like_without_match_matches_flops() -> None:
    space = unet_space(nodes=2, dims=2, width=4, levels=1, ops=SMALL)
    samples = sample_genotypes(space, 1, like=_like(space), patch=(16, 16))
    assert samples[0].settings.match == "flops"


class _GatedConv(nn.Module):
    """A convolution rescaled by a gate computed with a matrix product: FLOPs beyond the convolutions."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dims: int = 3) -> None:
        super().__init__()
        self.conv = (nn.Conv3d if dims == 3 else nn.Conv2d)(c_in, c_out, 3, stride=stride, padding=1)
        self.gate = nn.Linear(c_out, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        gate = torch.sigmoid(self.gate(y.flatten(2).mean(dim=2)))
        return y * gate.view(*gate.shape, *([1] * (y.dim() - 2)))


@pytest.mark.parametrize("case", ["split3d", "by_level", "full", "sum", "baseline", "custom"])
def test_cost_counter_equals_estimate(case: str) -> None:
    library = None
    patch: tuple[int, ...] = (16, 8, 24)
    if case == "split3d":
        space = unet_space(nodes=3, dims=3, width=6, levels=1, ops=SMALL)
    elif case == "by_level":
        space = unet_space(nodes=2, dims=3, width=4, levels=1, share="by_level", ops=SMALL)
    elif case == "full":
        space = unet_space(nodes=3, dims=2, width=4, levels=1, node_width="full")
        patch = (24, 16)
    elif case == "sum":
        space = unet_space(nodes=2, dims=2, width=4, levels=1, output="sum", ops=SMALL)
        patch = (8, 12)
    elif case == "baseline":
        space = baseline_space(dims=2, width=4)
        patch = (16, 8)
    else:
        library = default_library().register(OpSignature("gated_conv", (), "conv with a linear gate"), _GatedConv)
        space = unet_space(nodes=2, dims=3, width=4, levels=1, ops=(CONV, ("gated", "gated_conv", {}), NONE))
        space = space.model_copy(update={"opsets": (m.OpSet(name="paper", ops=(
            m.OpSpec(name="conv3", call=call("conv", kernel=3)), m.OpSpec(name="gated", call=call("gated_conv")),
            m.OpSpec(name="none", call=call("zero")))),)})
    counter = CostCounter(space, patch, in_channels=3, num_classes=4, stem_width=6, library=library)
    genotypes = [baseline_genotype()] if case == "baseline" else []
    genotypes += list(itertools.islice(draw_genotypes(space, seed=2), 4))
    for genotype in genotypes:
        report = estimate(space, genotype=genotype, patch=patch, in_channels=3, num_classes=4, stem_width=6,
                          library=library)
        assert counter(genotype) == (report.flops, report.params)
    # the gate's matrix product is not a convolution: that space is costed by estimate itself
    assert counter.exact == (case != "custom")
    runs = counter.runs
    assert [counter(g) for g in genotypes[::-1]]
    assert counter.runs == runs  # known names: nothing runs again


def test_warm_up_records_every_operation_at_once() -> None:
    # stem width 9, three output nodes: the supernet's level-0 cells output ceil(9 / 3) * 3 = 9 channels, as
    # many as the stem, but a genotype whose expansion cell keeps two nodes outputs 10, so its decoder
    # cell has a skip projection the supernet lacks
    space = unet_space(nodes=3, dims=3, width=9, levels=1, ops=SMALL)
    counter = CostCounter(space, (16, 16, 16))
    counter.warm_up()
    for genotype in itertools.islice(draw_genotypes(space, seed=1), 4):  # the third is such a genotype
        report = estimate(space, genotype=genotype, patch=(16, 16, 16), in_channels=1, num_classes=2)
        assert counter(genotype) == (report.flops, report.params)
    assert counter.runs == 2  # the supernet, then the first genotype with that skip projection (cells.3.skip)


def test_errors_say_what_to_do() -> None:
    space = unet_space(nodes=2, dims=2, width=4, levels=1, ops=SMALL)
    with pytest.raises(SamplingError, match="at least one genotype"):
        sample_genotypes(space, 0)
    dead = unet_space(nodes=2, dims=2, width=4, levels=1, ops=(NONE, ("none2", "zero", {})))
    with pytest.raises(SamplingError, match=r"no valid genotype: cell 'red'.*every operation .* is zero.*"
                                            r"add a non-zero operation"):
        sample_genotypes(dead, 1)
    with pytest.raises(SamplingError, match="no valid genotype"):
        draw_genotypes(dead)  # at once, not at the first draw
    other = _like(space).model_copy(update={"space": "elsewhere"})
    with pytest.raises(SamplingError, match="of space 'elsewhere', not 'tiny'.*give a genotype of 'tiny'"):
        sample_genotypes(space, 1, like=other)
    with pytest.raises(SamplingError, match="needs a genotype to match"):
        sample_genotypes(space, 1, match="flops")
    with pytest.raises(SamplingError, match="name prefix 'my-net'"):
        sample_genotypes(space, 1, name_prefix="my-net")


def test_a_target_out_of_reach_names_draws_range_and_tolerance() -> None:
    space = unet_space(nodes=2, dims=2, width=4, levels=1, ops=SMALL)
    like = _like(space)
    with pytest.raises(SamplingError) as info:
        sample_genotypes(space, 3, like=like, match="params", tolerance=0.0, max_draws=20, patch=(16, 16))
    message = str(info.value)
    assert "in 20 draws" in message and "found 0 of 3" in message
    assert "parameters ranged" in message and "M parameters to" in message and "median" in message
    assert "a tolerance of 0." in message and "--tolerance" in message and "--max-draws" in message


def test_few_distinct_genotypes_say_so() -> None:
    # one node fed by one input edge with one operation: a single architecture per cell
    space = unet_space(nodes=1, inputs=1, dims=2, width=4, levels=1, ops=(CONV,))
    assert len(sample_genotypes(space, 1, patch=(8, 8))) == 1
    with pytest.raises(SamplingError, match="found 1 of 2 .* repeated earlier samples.*allow duplicates"):
        sample_genotypes(space, 2, patch=(8, 8), max_draws=5)
    twice = sample_genotypes(space, 2, patch=(8, 8), unique=False)
    assert twice[0].genotype.cells == twice[1].genotype.cells


def test_sample_names_grow_with_n() -> None:
    assert sample_names(2) == ["random_000", "random_001"]
    assert sample_names(1001, "b")[-1] == "b_1000"


def test_written_files_load_and_refuse_to_be_overwritten(tmp_path: Path) -> None:
    text = print_document(m.Document(spaces=(unet_space(nodes=2, dims=2, width=4, levels=1, ops=SMALL),)))
    spec = tmp_path / "tiny.scn"
    spec.write_text("# my space, with a comment\n" + text)
    space = load(spec).space()
    samples = sample_genotypes(space, 2, seed=1, like=_like(space), match="params", patch=(16, 16))
    out = tmp_path / "samples"
    files = write_samples(spec, samples, out)
    assert files == [out / "random_000.scn", out / "random_001.scn"]
    assert (out / "space.scn").read_text() == spec.read_text()  # the space alone: copied, comments kept
    for path, s in zip(files, samples, strict=True):
        loaded_space, genotype = load(path).genotype()
        assert genotype == s.genotype and loaded_space == space
        assert 'import "space.scn"' in path.read_text() and "Matched to 'found'" in path.read_text()
    summary = json.loads((out / "samples.json").read_text())
    assert summary["match"] == "params" and summary["target"] == samples[0].settings.target
    assert summary["tolerance"] == 0.1 and summary["patch"] == [16, 16] and summary["seed"] == 1
    assert [(r["file"], r["flops"], r["params"]) for r in summary["samples"]] == \
        [(p.name, s.flops, s.params) for p, s in zip(files, samples, strict=True)]
    files[0].write_text("# my notes\n")
    with pytest.raises(RunError, match="random_000.scn.*exist.*already.*force"):
        write_samples(spec, samples, out)
    assert files[0].read_text() == "# my notes\n"
    write_samples(spec, samples, out, force=True)
    assert load(files[0]).genotype()[1] == samples[0].genotype
    # fewer samples with --force: the earlier set's other files go, the user's own files stay
    (out / "notes.scn").write_text("# mine\n")
    write_samples(spec, samples[:1], out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.scn", "random_000.scn", "samples.json", "space.scn"]


def test_a_space_given_as_a_model_is_printed(tmp_path: Path) -> None:
    space = unet_space(nodes=2, dims=2, width=4, levels=1, ops=SMALL)
    samples = sample_genotypes(space, 1, patch=(8, 8))
    [path] = write_samples(space, samples, tmp_path)
    assert (tmp_path / "space.scn").read_text() == print_document(m.Document(spaces=(space,)))
    assert load(path).genotype()[1] == samples[0].genotype


def test_a_nan_tolerance_is_refused() -> None:
    import math

    import pytest as _pytest

    from scnas_dsl.nn.random_genotypes import SamplingError, sample_genotypes
    from tests.unit.nn.spaces import unet_space

    space = unet_space(dims=3, levels=1)
    like = sample_genotypes(space, 1, patch=(16, 16, 16))[0].genotype
    with _pytest.raises(SamplingError, match="tolerance nan"):
        sample_genotypes(space, 2, like=like, tolerance=math.nan, patch=(16, 16, 16))


def test_hopeless_needs_even_an_optimistic_rate_to_fall_short() -> None:
    from scnas_dsl.nn.random_genotypes import _hopeless

    assert not _hopeless(0, 99, 4000, 20)  # too few draws to judge
    assert not _hopeless(0, 500, 4000, 20)  # 3/500 of 3500 draws left is 21: still within reach
    assert _hopeless(0, 530, 4000, 20)
    assert not _hopeless(19, 3000, 4000, 20)  # 22/3000 of 1000 draws left is 7
    assert _hopeless(1, 3000, 4000, 20)
    assert not _hopeless(10, 1000, 4000, 20)  # at its own rate, 30 more in the 3000 left


def test_giving_up_early_stops_a_hopeless_match_and_keeps_a_reachable_one() -> None:
    space = unet_space(nodes=2, dims=2, width=4, levels=1, ops=SMALL)
    conv = m.ChosenEdge(op="conv3", src="in0"), m.ChosenEdge(op="conv3", src="in1")
    largest = m.Genotype(name="largest", space=space.name, cells=tuple(  # conv3 everywhere: one of its kind
        m.CellChoice(cell=key, nodes=(m.NodeChoice(node="n0", edges=conv), m.NodeChoice(
            node="n1", edges=(*conv, m.ChosenEdge(op="conv3", src="n0"))))) for key in space.structure_keys()))
    with pytest.raises(SamplingError) as info:
        sample_genotypes(space, 3, like=largest, match="params", tolerance=0.0, max_draws=2000, patch=(16, 16),
                         give_up_early=True)
    assert "found 0 of 3" in str(info.value) or "found 1 of 3" in str(info.value)
    drawn = int(str(info.value).split(" draws")[0].rsplit(" ", 1)[1])
    assert 100 <= drawn < 2000 and "stopped there: at that rate, 2000 draws would not find 3" in str(info.value)
    kwargs: dict[str, Any] = {"like": _like(space), "match": "flops", "patch": (16, 16), "seed": 3}
    assert ([s.genotype for s in sample_genotypes(space, 4, give_up_early=True, **kwargs)]
            == [s.genotype for s in sample_genotypes(space, 4, **kwargs)])
