"""Choosing the genotype by measured scores (scnas_dsl.training.selection): the supernet score of a fixed genotype,
the projection keeps the candidate whose presence scores best, sampled keeps the best random genotype, the
self-check scores the chosen genotype's own architecture, fair sampling trains every candidate equally often."""

from __future__ import annotations

import math

import pytest
import torch

from scnas_dsl.nn import build_supernet
from scnas_dsl.nn.random_genotypes import draw_genotypes
from scnas_dsl.nn.supernet import Samples, Supernet
from scnas_dsl.training.config import SearchConfig, SelectionConfig
from scnas_dsl.training.data_context import loader, open_data
from scnas_dsl.training.device import Runtime
from scnas_dsl.training.losses import soft_jaccard_loss
from scnas_dsl.training.selection import (
    CostContext,
    Score,
    SupernetScorer,
    score_batches,
    select_projection,
    select_sampled,
    self_check,
)
from tests.helpers import generated_set
from tests.unit.nn.spaces import unet_space

SHAPE = (16, 16, 16)


def _net(seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    return build_supernet(unet_space(dims=3, levels=1, width=4), in_channels=1, num_classes=2, sampling="pair",
                          seed=seed)


def _cost(model: Supernet) -> CostContext:
    return CostContext(patch=SHAPE, in_channels=1, num_classes=2, stem_width=model.plan.stem_width)


def test_scores_order_by_dice_then_loss_or_by_loss() -> None:
    good, worse_dice, nan = Score(loss=0.5, dice=0.8), Score(loss=0.4, dice=0.7), Score(loss=0.1, dice=math.nan)
    assert good.key("dice") > worse_dice.key("dice") > nan.key("dice")
    assert nan.key("loss") > worse_dice.key("loss") > good.key("loss")
    assert Score(0.3, 0.8).key("dice") > Score(0.5, 0.8).key("dice")  # equal Dice: the lower loss


class _Oracle:
    """A scorer whose score is a table of what one edge runs: (structure key, edge row) -> operation -> value;
    every other edge is ignored. Records what it was asked."""

    by = "dice"

    def __init__(self, model: Supernet, key: str, row: int, values: dict[str, float]) -> None:
        self.model, self.key, self.row, self.values = model, key, row, values
        self.calls = 0

    def _value(self, samples: Samples) -> float:
        names, sample = samples[self.key]
        ops = [names[i] for i in sample.indices[self.row].tolist()]
        weights = sample.weights
        if len(set(ops)) == 1 and weights is not None:  # a fixed row: weight one on the first column
            assert weights[self.row].tolist() == [1.0] + [0.0] * (len(ops) - 1)
        return sum(self.values.get(op, 0.0) for op in ops) / len(ops)

    def score(self, architecture, repeats: int = 1) -> Score:  # type: ignore[no-untyped-def]
        self.calls += 1
        values = [self._value(architecture(r) if callable(architecture) else architecture) for r in range(repeats)]
        value = sum(values) / len(values)
        return Score(loss=1.0 - value, dice=value)

    def score_genotype(self, genotype):  # type: ignore[no-untyped-def]
        return self.score(self.model.genotype_samples(genotype))


def test_projection_keeps_the_candidate_whose_presence_scores_best() -> None:
    model = _net()
    key, row = "enc", 0
    names = model.op_names[key]
    with torch.no_grad():  # alpha prefers conv3 everywhere, the measured scores prefer maxpool on one edge
        for alpha in model.arch.values():
            alpha.zero_()
            alpha[:, names.index("conv3")] = 5.0
    values = {op: 0.1 for op in names} | {"maxpool": 0.9, "dil2": 0.5, "conv3": 0.2}
    oracle = _Oracle(model, key, row, values)
    tuned: list[int] = []
    settings = SelectionConfig(method="projection", draws=2, tune_steps=3)
    selection = select_projection(model, oracle, settings, seed=0, name="projected",  # type: ignore[arg-type]
                                  tune=lambda draw: tuned.append(len(draw())))
    chosen = {(c.cell, e.src, n.node): e.op for c in selection.genotype.cells for n in c.nodes for e in n.edges}
    src, dst = model.edge_lists[key][row]
    assert chosen[(key, src, dst)] == "maxpool"
    record = next(r for r in selection.details["edges"] if r["cell"] == key and r["edge"] == f"{src}->{dst}")
    assert record["alpha_choice"] == "conv3" and record["chose"] == "maxpool"
    # every other edge scored alike: the tie goes to the larger logit
    others = [r for r in selection.details["edges"] if not (r["cell"] == key and r["edge"] == f"{src}->{dst}")]
    assert all(r["chose"] == "conv3" for r in others)
    edges = sum(a.shape[0] for a in model.arch.values())
    assert len(tuned) == edges - 1  # fine-tuned after every decision but the last
    assert model.temperature == model.schedule.at(0.0)  # the projection's temperature is put back


def test_sampled_keeps_the_best_scored_random_genotype() -> None:
    model = _net()
    oracle = _Oracle(model, "enc", 0, {"maxpool": 0.9, "skip": 0.6, "conv3": 0.3})
    settings = SelectionConfig(method="sampled", samples=12)
    selection = select_sampled(model, oracle, settings, seed=3, cost=_cost(model), name="best")  # type: ignore[arg-type]
    scores = [s["dice"] for s in selection.details["scores"]]
    assert len(scores) == 12 and selection.details["best"] == scores.index(max(scores))
    assert oracle.score_genotype(selection.genotype).dice == max(scores)
    assert len(set(scores)) > 1  # the draws differ on the scored edge


def test_the_self_check_scores_the_chosen_genotype_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _net()
    model.eval()
    chosen, _ = model.derive(name="chosen")
    asked: list[Samples] = []

    class Recorder(_Oracle):
        def score(self, architecture, repeats: int = 1) -> Score:  # type: ignore[no-untyped-def]
            asked.append(architecture)
            return super().score(architecture, repeats)

    names = model.op_names["enc"]
    recorder = Recorder(model, "enc", 0, {op: (i + 1) / len(names) for i, op in enumerate(names)})
    check = self_check(model, recorder, chosen, SelectionConfig(check_samples=6), seed=0, cost=_cost(model))  # type: ignore[arg-type]
    assert check is not None and check["of"] == 7 and 1 <= check["rank"] <= 7
    own = model.genotype_samples(chosen)
    first = asked[0]
    assert not callable(first)
    for key, (_, sample) in own.items():  # the chosen genotype's fixed architecture, not a draw of the supernet
        assert first[key][1].weights is None
        assert torch.equal(first[key][1].indices, sample.indices)
    assert f"ranks {check['rank']} of 7" in check["text"]
    better = sum(1 for s in check["random_scores"] if s["dice"] > check["score"]["dice"])
    worse = sum(1 for s in check["random_scores"] if s["dice"] < check["score"]["dice"])
    assert better != worse  # the scores differ enough to tell a rank from its reverse
    assert check["rank"] == better + 1
    assert self_check(model, recorder, chosen, SelectionConfig(check_samples=0), seed=0, cost=_cost(model)) is None
    # the line says whether the random genotypes had the chosen one's FLOPs
    assert check["matched"] and "random genotypes of its FLOPs" in check["text"]
    import scnas_dsl.training.selection as selection

    unmatched = [g for g, _ in zip(draw_genotypes(model.space, seed=1), range(6), strict=False)]
    monkeypatch.setattr(selection, "_random", lambda *args: (unmatched, "no 6 genotypes within 10% of its FLOPs"))
    check = self_check(model, recorder, chosen, SelectionConfig(check_samples=6), seed=0, cost=_cost(model))  # type: ignore[arg-type]
    assert check is not None and not check["matched"] and "of its FLOPs:" not in check["text"]
    assert "not FLOPs-matched" in check["text"], check["text"]


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("select")
    _, pre = generated_set(root, "heart", size=20, seed=1)
    cfg = SearchConfig(spec="unused.scn", data=str(pre), batch_size=2, patch=SHAPE, stem_width=4,
                       progress=False)
    runtime = Runtime(device=torch.device("cpu"))
    ctx = open_data(cfg, runtime)
    source = loader(cfg, ctx, runtime, ctx.fold.arch_part, SHAPE, stream=6, augment=False, num_batches=2)
    return score_batches(source, 2), runtime


def test_a_supernet_score_is_the_fixed_genotype_in_evaluation_mode(batches) -> None:  # type: ignore[no-untyped-def]
    fixed, runtime = batches
    model = _net(1)
    model.train()
    genotype, _ = model.derive(name="g")
    score = SupernetScorer(model, fixed, runtime).score_genotype(genotype)
    assert model.training  # the mode is put back
    model.eval()
    assert SupernetScorer(model, fixed, runtime).score_genotype(genotype) == score
    assert not model.training
    model.eval()
    with torch.no_grad():  # by hand: the genotype's architecture, weight one, in evaluation mode
        losses, tp, fp, fn = [], 0.0, 0.0, 0.0
        for x, y in fixed:
            logits = model(x, samples=model.genotype_samples(genotype))
            losses.append(float(soft_jaccard_loss(logits, y)))
            p, g = logits.argmax(1) == 1, y == 1
            tp, fp, fn = tp + float((p & g).sum()), fp + float((p & ~g).sum()), fn + float((~p & g).sum())
    assert score.loss == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    assert score.dice == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-6)
    # another genotype scores otherwise: the score depends on the architecture given
    other = model.derive(name="o")[0]
    with torch.no_grad():
        for alpha in model.arch.values():
            alpha.copy_(torch.randn(alpha.shape, generator=torch.Generator().manual_seed(4)))
    other, _ = model.derive(name="o")
    assert SupernetScorer(model, fixed, runtime).score_genotype(other) != score


def test_fair_sampling_runs_every_candidate_of_every_edge_once_per_cycle() -> None:
    torch.manual_seed(0)
    model = build_supernet(unet_space(dims=3, levels=1, width=4), in_channels=1, num_classes=2, sampling="fair",
                           seed=2)
    model.train()
    before = {k: a.detach().clone() for k, a in model.arch.items()}
    seen: dict[str, list[torch.Tensor]] = {k: [] for k in model.op_names}
    cycle = len(next(iter(model.op_names.values())))
    for _ in range(2 * cycle):
        for key, (_, sample) in model.draw_samples().items():
            assert sample.weights is None and sample.indices.shape[1] == 1
            seen[key].append(sample.indices[:, 0])
    for key, draws in seen.items():
        for start in (0, cycle):
            block = torch.stack(draws[start:start + cycle], dim=1)  # (E, O): each row a permutation
            assert torch.equal(block.sort(dim=1).values, torch.arange(cycle).expand_as(block)), key
        assert not torch.equal(torch.stack(draws[:cycle], 1), torch.stack(draws[cycle:], 1))  # new orders
    counts = model.sample_counts()
    assert all(n == 2 for edges in counts.values() for ops in edges.values() for n in ops.values())
    # resumed in the middle of a cycle, it continues the same cycle
    state = model.sampler_state_dict()
    nxt = model.draw_samples()
    again = build_supernet(unet_space(dims=3, levels=1, width=4), in_channels=1, num_classes=2, sampling="fair",
                           seed=9)
    again.load_sampler_state_dict(state)
    resumed = again.draw_samples()
    assert all(torch.equal(resumed[k][1].indices, nxt[k][1].indices) for k in nxt)
    assert all(torch.equal(model.arch[k].detach(), v) for k, v in before.items())


def test_fair_sampling_needs_a_measured_selection() -> None:
    with pytest.raises(ValueError, match="--select projection or --select sampled"):
        SearchConfig(spec="s.scn", data="d", sampling="fair")
    SearchConfig(spec="s.scn", data="d", sampling="fair", selection=SelectionConfig(method="sampled"))


def test_the_warm_up_architectures_run_every_candidate_of_every_edge_once() -> None:
    model = _net()
    state = model.generator.get_state().clone()
    warm = model.every_operation_samples()
    assert torch.equal(model.generator.get_state(), state)  # the search's draws are not disturbed
    for key, names in model.op_names.items():
        runs = torch.cat([samples[key][1].indices for samples in warm], dim=1)  # (E, steps)
        assert runs.shape[1] == len(names)
        assert torch.equal(runs.sort(dim=1).values, torch.arange(len(names)).expand_as(runs)), key
