"""The budget's cost model (scnas_dsl.nn.budget): the expected cost is the exact cost at one-hot probabilities, its
per-edge costs are the exact cost differences, the penalty's gradient moves probability to cheaper operations only
outside the budget, and fitting keeps the preferred choices while it meets the limits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scnas_dsl.errors import CompileError
from scnas_dsl.loader import load
from scnas_dsl.model import Genotype
from scnas_dsl.nn.budget import METRICS, CostModel, check_reachable, parse_quantity, penalty
from scnas_dsl.nn.derive import derive_genotype
from scnas_dsl.nn.random_genotypes import draw_genotypes

SPECS = Path(__file__).resolve().parents[3] / "specs"


def _model(spec: str, patch: tuple[int, ...], batch: int = 2, width: int = 8) -> CostModel:
    space = load(SPECS / spec).space()
    return CostModel(space, patch=patch, batch_size=batch, in_channels=2, num_classes=3, stem_width=width)


def one_hot(model: CostModel, genotype: Genotype) -> dict[str, torch.Tensor]:
    """Logits whose softmax is exactly the genotype (float64: the other probabilities are 0): its operation on
    every edge it holds, the zero on the others."""
    out = {}
    for key in model.keys:
        names, chosen = model.op_names[key], genotype.cell(key).chosen()  # type: ignore[union-attr]
        zero = next(i for i, n in enumerate(names) if n in model.zeros[key])
        alpha = torch.full((len(model.edges[key]), len(names)), -1e4, dtype=torch.float64)
        for row, edge in enumerate(model.edges[key]):
            alpha[row, names.index(chosen[edge]) if edge in chosen else zero] = 1e4
        out[key] = alpha.requires_grad_()
    return out


def _genotypes(model: CostModel, count: int, seed: int) -> list[Genotype]:
    stream = draw_genotypes(model.space, seed=seed)
    return [next(stream) for _ in range(count)]


@pytest.mark.parametrize("spec, patch", [("unet4cell.scn", (16, 16, 16)), ("tiny_by_level.scn", (8, 8, 8)),
                                         ("unet4cell_2d.scn", (32, 32))])
def test_the_expected_cost_at_one_hot_probabilities_is_the_exact_cost(spec: str, patch: tuple[int, ...]) -> None:
    """Exactly (==) the FLOPs, parameters and training memory `scnas compile` counts, for random genotypes (some
    with pruned nodes, some with whole cells narrowed by node_width split): the paper's space (reduction and
    expansion cells, shared by type), a by-level space and a 2D one."""
    from scnas_dsl.nn.cost import estimate

    model = _model(spec, patch)
    pruned = 0
    for genotype in _genotypes(model, 3, seed=7):
        expected, anchor = model.expected(one_hot(model, genotype))
        report = estimate(model.space, patch=patch, batch_size=2, genotype=genotype, in_channels=2, num_classes=3,
                          stem_width=8)
        assert {m: float(expected[m].detach()) for m in METRICS} == {
            "flops": report.flops, "params": report.params, "memory": report.memory_bytes}
        assert anchor.cells == genotype.cells
        from scnas_dsl.nn.plan import build_plan

        pruned += bool(build_plan(model.space, stem_width=8, genotype=genotype).notes)
    if spec == "unet4cell.scn":
        assert pruned  # the draws include genotypes whose derivation prunes nodes


def _swap(genotype: Genotype, key: str, edge: tuple[str, str], op: str) -> Genotype:
    cells = []
    for cell in genotype.cells:
        if cell.cell == key:
            nodes = []
            for node in cell.nodes:
                edges = tuple(e.model_copy(update={"op": op}) if (e.src, node.node) == edge else e for e in node.edges)
                nodes.append(node.model_copy(update={"edges": edges}))
            cell = cell.model_copy(update={"nodes": tuple(nodes)})
        cells.append(cell)
    return genotype.model_copy(update={"cells": tuple(cells)})


def test_an_edges_cost_is_the_exact_cost_of_changing_its_operation() -> None:
    """The linear term's table: putting another (non-zero) operation on a live edge changes the exact FLOPs and
    parameters by exactly the difference of the table's entries (summed over the cell type's instances)."""
    space, genotype = load(SPECS / "genotypes" / "example.scn").genotype()
    model = CostModel(space, patch=(16, 16, 16), batch_size=2, in_channels=2, num_classes=3, stem_width=8)
    tables = model.tables(genotype)
    before = model.exact(genotype)
    checked = 0
    for key in ("red", "exp"):  # stride-2 edges from the inputs, and an up-sampling cell
        names = model.op_names[key]
        for edge, op in list(genotype.cell(key).chosen().items())[:2]:  # type: ignore[union-attr]
            row = model.edges[key].index(edge)
            for other in ("conv3", "dil3", "skip"):
                if other == op:
                    continue
                after = model.exact(_swap(genotype, key, edge, other))
                for m in ("flops", "params"):
                    change = float(tables[m][key][row, names.index(other)] - tables[m][key][row, names.index(op)])
                    assert after[m] - before[m] == change, (key, edge, op, other, m)
                checked += 1
    assert checked >= 6


def test_the_penalty_moves_probability_to_cheaper_operations_only_outside_the_budget() -> None:
    """The task loss is left out (flat): the penalty alone. Outside the budget, on every edge each operation's
    logit gradient has the sign of its cost minus the edge's expected cost (so a descent step moves probability
    from dearer to cheaper operations, and the expected cost falls); inside the budget the gradient is zero."""
    model = _model("unet4cell.scn", (16, 16, 16))
    generator = torch.Generator().manual_seed(0)
    alphas = {k: (1e-1 * torch.randn(len(model.edges[k]), len(model.op_names[k]), generator=generator,
                                     dtype=torch.float64)).requires_grad_() for k in model.keys}
    expected, anchor = model.expected(alphas)
    value = float(expected["flops"].detach())
    loss = penalty(expected, {"flops": 0.5 * value}, weight=1.0)
    loss.backward()
    tables = model.tables(anchor)["flops"]
    moved = 0
    for key, alpha in alphas.items():
        p = torch.softmax(alpha.detach(), dim=-1)
        mean = (p * tables[key]).sum(dim=1, keepdim=True)
        assert alpha.grad is not None
        sign = torch.sign(tables[key] - mean)
        live = tables[key].abs().sum(dim=1) > 0
        assert torch.equal(torch.sign(alpha.grad)[live], sign[live]), key
        assert torch.count_nonzero(alpha.grad[~live]) == 0  # a pruned node's edges cost nothing either way
        moved += int(live.sum())
    assert moved > 0
    with torch.no_grad():  # one descent step lowers the expected cost
        for alpha in alphas.values():
            alpha -= 10.0 * alpha.grad  # type: ignore[operator]
    assert float(model.expected(alphas)[0]["flops"].detach()) < value
    for alpha in alphas.values():
        alpha.grad = None
    inside = penalty(model.expected(alphas)[0], {"flops": 2 * value}, weight=1.0)
    assert float(inside) == 0.0
    inside.backward()
    assert all(a.grad is None or torch.count_nonzero(a.grad) == 0 for a in alphas.values())


def test_fitting_meets_the_budget_and_gives_up_the_least_preferred_choice_first() -> None:
    space, genotype = load(SPECS / "genotypes" / "example.scn").genotype()
    model = CostModel(space, patch=(16, 16, 16), batch_size=2, in_channels=2, num_classes=3, stem_width=8)
    cost = model.exact(genotype)["flops"]
    preference = {k: torch.zeros(len(model.edges[k]), len(model.op_names[k]), dtype=torch.float64)
                  for k in model.keys}
    names = model.op_names["enc"]
    for key in model.keys:  # every current choice strongly preferred ...
        for edge, op in genotype.cell(key).chosen().items():  # type: ignore[union-attr]
            preference[key][model.edges[key].index(edge), model.op_names[key].index(op)] = 10.0
    row = model.edges["enc"].index(("in1", "n0"))  # ... but enc's conv3(in1) -> n0 barely: it goes first
    preference["enc"][row, names.index("conv3")] = 0.01
    fitted = model.fit(genotype, preference, {"flops": 0.9 * cost})
    assert fitted.within and fitted.costs["flops"] <= 0.9 * cost < cost
    assert fitted.costs == model.exact(fitted.genotype)
    assert fitted.gave_up[0].startswith("enc in1->n0: conv3 -> ")
    # within the budget already: nothing changes
    same = model.fit(genotype, preference, {"flops": cost})
    assert same.genotype.cells == genotype.cells and same.gave_up == [] and same.within


def test_fitting_removes_a_node_whose_edges_cost_nothing_alone() -> None:
    """Pooling and identity weigh nothing, but a node costs the cells after it their input width: from pooling
    on every edge no single edge lowers the parameters, the removal of a whole node does."""
    from scnas_dsl.loader import load_text
    from scnas_dsl.studies.demo import small_space

    space = load_text(small_space("demo", stem_width=8)).space()
    model = CostModel(space, patch=(8, 8, 8), batch_size=2, in_channels=1, num_classes=2, stem_width=8)
    pooling = {k: torch.zeros(len(model.edges[k]), len(model.op_names[k])) for k in model.keys}
    for key in model.keys:
        pooling[key][:, model.op_names[key].index("maxpool")] = 1.0
    start = derive_genotype(space, pooling, "start")[0]
    zero = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in pooling.items()}
    fitted = model.fit(start, zero, {"params": 1.0}, exhaust=True)
    removed = [line for line in fitted.gave_up if ": removed (its" in line]
    assert removed and fitted.costs["params"] < model.exact(start)["params"], fitted.gave_up
    assert fitted.costs == model.exact(fitted.genotype)


def test_a_budget_below_the_cheapest_genotype_is_refused_with_its_cost() -> None:
    model = _model("tiny_by_level.scn", (8, 8, 8))
    cheapest = model.cheapest({"flops": 1.0})
    assert cheapest.costs["flops"] > 0
    with pytest.raises(CompileError, match=r"below the cheapest genotype found in the space \(.*FLOPs") as err:
        check_reachable(model, {"flops": 0.5 * cheapest.costs["flops"]}, "--budget")
    assert "the flops limit of" in str(err.value) and "smaller patch or stem width" in str(err.value)
    check_reachable(model, {"flops": cheapest.costs["flops"]}, "--budget")  # reachable: no error
    any_genotype = _genotypes(model, 1, seed=0)[0]
    assert cheapest.costs["flops"] <= model.exact(any_genotype)["flops"]


@pytest.mark.parametrize("metric, text, value", [
    ("flops", "40G", 40e9), ("flops", "1.5 TFLOPs", 1.5e12), ("flops", "2e9", 2e9), ("params", "5M", 5e6),
    ("params", "300k", 3e5), ("memory", "12GB", 12e9), ("memory", "12GiB", 12 * 2**30), ("memory", "512MiB", 2**29),
    ("memory", "1000", 1000.0)])
def test_quantities_with_units(metric: str, text: str, value: float) -> None:
    assert parse_quantity(metric, text) == value


@pytest.mark.parametrize("metric, text, words", [
    ("flops", "40X", "unknown unit 'X'"), ("memory", "12GBB", "unknown unit"), ("flops", "-1G", "positive"),
    ("params", "0", "positive"), ("flops", "lots", "not a number"), ("memory", "nan", "not a number")])
def test_bad_quantities_say_what_to_write(metric: str, text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_quantity(metric, text)


def test_costs_counted_under_no_grad_are_a_training_steps() -> None:
    """The per-epoch report counts under ``torch.no_grad``: the memory must still be a training step's (autograd's
    saved activations), not the weights alone (a defect a review found: the report then cached the wrong cost)."""
    from scnas_dsl.nn.cost import estimate

    model = _model("tiny_by_level.scn", (8, 8, 8))
    genotype = _genotypes(model, 1, seed=3)[0]
    with torch.no_grad():
        under = model.exact(genotype)
        table = model.tables(genotype)["memory"]
        report = estimate(model.space, patch=(8, 8, 8), batch_size=2, genotype=genotype, in_channels=2,
                          num_classes=3, stem_width=8)
    fresh = _model("tiny_by_level.scn", (8, 8, 8))
    assert under == fresh.exact(genotype) and report.memory_bytes == under["memory"]
    again = fresh.tables(genotype)["memory"]
    assert all(torch.equal(table[k], again[k]) for k in model.keys)
    assert report.steps["network"].activation_bytes > 0
