"""What the trained supernet says about genotypes: scores, the choice of the genotype, and the self-check.

A genotype's **supernet score** is its loss (soft Jaccard) and mean foreground Dice on a fixed set of
un-augmented batches of the fold's architecture part, computed by the trained supernet with that genotype's
architecture fixed (each chosen edge runs its operation with weight one, the others are cut), inherited weights,
evaluation mode. Nothing is trained for a score. With several processes each scores its share of the batches and
the counts are averaged, so every rank sees the same numbers.

Three ways to choose the genotype at the end of a search (``SelectionConfig.method``):

* ``alpha``: the paper's, the largest logit on every edge (``Supernet.derive``).
* ``projection`` (perturbation-based, after DARTS-PT, Wang et al. ICLR 2021): the edges are taken one at a time
  (seeded random order, or the network's); for an edge every candidate is put alone on it while the edges already
  decided keep their choice and the undecided ones are drawn by the search's sampler (``draws`` architectures per
  score at ``temperature``; the same draws for every candidate, so they are compared on equal terms); the
  candidate whose presence scores best is kept; then the shared weights are fine-tuned for ``tune_steps`` steps
  on the weight part with the decided edges fixed. Ties go to the larger logit.
* ``sampled`` (random search with weight sharing, Li and Talwalkar 2019): ``samples`` random genotypes of the
  space (optionally within 10% of the alpha genotype's FLOPs) are scored; the best is kept. A selection method
  that does not beat it adds nothing.

The **self-check** scores the chosen genotype next to ``check_samples`` random genotypes of its FLOPs, on the
weights as the search left them (a projection's fine-tuning is undone first), and says where the choice ranks:
"ranks 2 of 21 on the supernet".
"""

from __future__ import annotations

import copy
import functools
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from scnas_dsl.errors import RunError
from scnas_dsl.model import Genotype
from scnas_dsl.nn.derive import derive_genotype
from scnas_dsl.nn.random_genotypes import SamplingError, sample_genotypes
from scnas_dsl.nn.sampler import EdgeSample
from scnas_dsl.nn.supernet import Samples, Supernet
from scnas_dsl.stopping import check_stop
from scnas_dsl.training.budgeting import SearchBudget
from scnas_dsl.training.config import CommonConfig, SelectionConfig
from scnas_dsl.training.data_context import DataContext, loader
from scnas_dsl.training.device import Runtime
from scnas_dsl.training.losses import soft_jaccard_loss
from scnas_dsl.training.search_report import DiceCounts

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Score:
    """A supernet score: mean soft Jaccard loss over the batches and the mean foreground Dice of the summed
    counts (NaN when no batch holds any foreground, predicted or true)."""

    loss: float
    dice: float

    def key(self, by: str) -> tuple[float, float]:
        """Larger is better: ``(Dice, -loss)`` for ``by="dice"`` (a NaN Dice counts as -1), ``(-loss, Dice)``."""
        dice = -1.0 if math.isnan(self.dice) else self.dice
        return (dice, -self.loss) if by == "dice" else (-self.loss, dice)

    def value(self, by: str) -> float:
        """The number ``by`` names."""
        return self.dice if by == "dice" else self.loss

    def to_dict(self) -> dict[str, float]:
        return {"loss": self.loss, "dice": self.dice}


class SupernetScorer:
    """Scores architectures of ``model`` on fixed batches (kept on the device), in evaluation mode."""

    def __init__(self, model: Supernet, batches: Sequence[Batch], runtime: Runtime, by: str = "dice") -> None:
        if not batches:
            raise RunError("no batches to score the supernet on")
        self.model, self.batches, self.runtime, self.by = model, list(batches), runtime, by

    @torch.no_grad()
    def score(self, architecture: Samples | Callable[[int], Samples], repeats: int = 1) -> Score:
        """The score of one architecture (``Samples``), or of ``repeats`` architectures given by
        ``architecture(r)`` pooled (each on every batch)."""
        model, runtime = self.model, self.runtime
        was_training = model.training
        model.eval()
        counts = DiceCounts(model.num_classes)
        loss: torch.Tensor | float = 0.0  # summed on the device, read once
        n = 0
        try:
            for r in range(repeats):
                samples = architecture(r) if callable(architecture) else architecture
                for x, y in self.batches:
                    check_stop()
                    with runtime.autocast():
                        logits = model(x, samples=samples)
                    loss = loss + soft_jaccard_loss(logits.float(), y).detach()
                    n += 1
                    counts.add(logits, y)
        finally:
            model.train(was_training)
        reduced = runtime.mean_values([float(loss) / max(n, 1), *counts.values()])  # means of sums keep Dice's ratios
        return Score(loss=reduced[0], dice=DiceCounts.mean_dice(reduced[1:], model.num_classes))

    def score_genotype(self, genotype: Genotype) -> Score:
        """The score of ``genotype``'s architecture (``Supernet.genotype_samples``)."""
        return self.score(self.model.genotype_samples(genotype))


def architecture_scorer(model: Supernet, cfg: CommonConfig, data: DataContext, runtime: Runtime, patch: tuple[int, int, int],
                        settings: SelectionConfig) -> SupernetScorer:
    """The scorer of a search's supernet: ``settings.score_batches`` fixed un-augmented batches of the fold's
    architecture part (a loader stream of their own, so scoring never changes the search's batches)."""

    source = loader(cfg, data, runtime, data.fold.arch_part, patch, stream=6, augment=False,
                    num_batches=settings.score_batches)
    return SupernetScorer(model, score_batches(source, settings.score_batches), runtime, settings.by)


def score_batches(source: Any, count: int) -> list[Batch]:
    """The first ``count`` batches of a loader's epoch 0, kept (the same batches for every score)."""
    source.set_epoch(0)
    out: list[Batch] = []
    for x, y in source:
        out.append((x, y))
        if len(out) >= count:
            break
    close = getattr(source, "close", None)
    if close is not None:
        close()
    return out


@dataclass
class Selection:
    """A chosen genotype, what derivation cut and pruned, and the method's own record."""

    method: str
    genotype: Genotype
    pruning: list[str]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class CostContext:
    """What FLOPs-matched random genotypes are measured at: the run's patch, channels, classes and width."""

    patch: tuple[int, ...]
    in_channels: int
    num_classes: int
    stem_width: int


def _random(model: Supernet, n: int, seed: int, cost: CostContext, like: Genotype | None, prefix: str
            ) -> tuple[list[Genotype], str | None]:
    """``n`` random genotypes of the supernet's space, within 10% of ``like``'s FLOPs when given; when no such
    set can be drawn, unmatched ones and the reason."""
    kwargs: dict[str, Any] = {"seed": seed, "patch": cost.patch, "in_channels": cost.in_channels,
                              "num_classes": cost.num_classes, "stem_width": cost.stem_width,
                              "name_prefix": prefix, "library": model.library}
    note = None
    if like is not None:
        try:
            return [s.genotype for s in sample_genotypes(model.space, n, like=like, match="flops",
                                                         give_up_early=True, **kwargs)], None
        except SamplingError as err:
            note = f"no {n} genotypes within 10% of the FLOPs of '{like.name}' ({err}); unmatched ones instead"
    try:
        return [s.genotype for s in sample_genotypes(model.space, n, **kwargs)], note
    except SamplingError as err:  # e.g. a space with fewer distinct genotypes than asked for
        return [s.genotype for s in sample_genotypes(model.space, n, unique=False, **kwargs)], (
            (note + "; " if note else "") + str(err))


def select_alpha(model: Supernet, name: str) -> Selection:
    """The paper's choice: the largest logit on every edge."""
    genotype, pruning = model.derive(name=name)
    return Selection("alpha", genotype, pruning)


def select_sampled(model: Supernet, scorer: SupernetScorer, settings: SelectionConfig, seed: int,
                   cost: CostContext, name: str, budget: SearchBudget | None = None) -> Selection:
    """The best of ``settings.samples`` random genotypes on the supernet (with a budget: the best of those
    within it, when any is)."""
    like = model.derive(name="alpha")[0] if settings.match == "flops" else None
    candidates, note = _random(model, settings.samples, seed, cost, like, "sampled")
    scored = [(g, scorer.score_genotype(g)) for g in candidates]
    allowed = list(range(len(scored)))
    if budget is not None:
        within = [i for i in allowed
                  if all(budget.costs.exact(scored[i][0])[m] <= lim for m, lim in budget.limits.items())]
        allowed = within or allowed
    best_index = max(allowed, key=lambda i: scored[i][1].key(settings.by))
    best = scored[best_index][0]
    genotype = Genotype(name=name, space=best.space, cells=best.cells)
    details: dict[str, Any] = {
        "candidates": len(scored), "best": best_index, "match": settings.match,
        "scores": [s.to_dict() for _, s in scored]}
    if note:
        details["note"] = note
    return Selection("sampled", genotype, [], details)


def _fixed(sample: EdgeSample, row: int, index: int) -> EdgeSample:
    """``sample`` with edge ``row`` running only operation ``index`` with weight one (the other columns run the
    same operation with weight zero, so that the sample keeps its shape)."""
    indices = sample.indices.clone()
    indices[row] = index
    weights = sample.weights
    if weights is not None:
        weights = weights.detach().clone()
        weights[row] = 0.0
        weights[row, 0] = 1.0
    values = sample.values
    if values is not None:
        values = values.clone()
        values[row] = 0.0
        values[row, 0] = 1.0
    return EdgeSample(indices, weights, sample.complementary, values)


def _with_decisions(samples: Samples, decided: dict[tuple[str, int], int]) -> Samples:
    out = dict(samples)
    for (key, row), index in decided.items():
        names, sample = out[key]
        out[key] = (names, _fixed(sample, row, index))
    return out


def _tuning_draw(model: Supernet, generator: torch.Generator, decided: dict[tuple[str, int], int]) -> Samples:
    return _with_decisions(model.draw_samples(generator, arch_grad=False), decided)


def select_projection(model: Supernet, scorer: SupernetScorer, settings: SelectionConfig, seed: int,
                      name: str, tune: Callable[[Callable[[], Samples]], None] | None = None,
                      progress: Callable[[str], None] | None = None) -> Selection:
    """Edge by edge, the candidate whose presence scores best (module docstring). ``tune(draw)`` runs the
    fine-tuning steps of the shared weights, each on an architecture from ``draw()``; None: no fine-tuning."""
    rng = random.Random(seed)
    edges = [(key, row) for key, alpha in model.arch.items() for row in range(alpha.shape[0])
             if alpha.shape[1] > 1]
    if settings.order == "random":
        rng.shuffle(edges)
    else:  # the network's order: the structures as the U-Net first uses them
        first = {cell_plan.key: i for i, cell_plan in reversed(list(enumerate(model.plan.cells)))}
        edges.sort(key=lambda e: (first.get(e[0], len(first)), e[1]))
    decided: dict[tuple[str, int], int] = {}
    saved_temperature = model.temperature
    model.temperature = settings.temperature
    record: list[dict[str, Any]] = []
    draw_seed = seed * 7919 + 17
    try:
        for number, (key, row) in enumerate(edges):
            names = model.op_names[key]
            logits = model.arch[key].detach()[row].cpu()
            base = draw_seed + number * 1000

            def architecture(r: int, index: int, base: int = base, key: str = key, row: int = row) -> Samples:
                drawn = model.draw_samples(torch.Generator().manual_seed(base + r), arch_grad=False)
                return _with_decisions(drawn, {**decided, (key, row): index})

            scores = {i: scorer.score(functools.partial(architecture, index=i), repeats=settings.draws)
                      for i in range(len(names))}
            order = sorted(range(len(names)), key=lambda i: -float(logits[i]))  # ties: the larger logit
            best = order[0]
            for i in order[1:]:
                if scores[i].key(settings.by) > scores[best].key(settings.by):
                    best = i
            decided[(key, row)] = best
            src, dst = model.edge_lists[key][row]
            record.append({"cell": key, "edge": f"{src}->{dst}", "chose": names[best],
                           "alpha_choice": names[order[0]],
                           "scores": {names[i]: scores[i].to_dict() for i in range(len(names))}})
            if progress is not None:
                progress(f"projection {number + 1}/{len(edges)}: {key} {src}->{dst}: {names[best]} "
                         f"({settings.by} {scores[best].value(settings.by):.4f}; alpha: {names[order[0]]})")
            if tune is not None and settings.tune_steps and number + 1 < len(edges):
                generator = torch.Generator().manual_seed(base + 999)
                tune(functools.partial(_tuning_draw, model, generator, dict(decided)))
    finally:
        model.temperature = saved_temperature
    # the decisions as logits: derivation then cuts zeros and prunes as for alpha; a cell left without a path
    # to its output falls back to the largest logits among the non-zero operations
    chosen = {}
    for key, alpha in model.arch.items():
        table = alpha.detach().cpu().clone()
        for row in range(table.shape[0]):
            if (key, row) in decided:
                table[row, decided[(key, row)]] += 1e6
        chosen[key] = table
    genotype, pruning = derive_genotype(model.space, chosen, name)
    changed = sum(1 for r in record if r["chose"] != r["alpha_choice"])
    return Selection("projection", genotype, pruning, {
        "order": settings.order, "tune_steps": settings.tune_steps, "draws": settings.draws,
        "temperature": settings.temperature, "edges": record, "changed_from_alpha": changed})


def self_check(model: Supernet, scorer: SupernetScorer, genotype: Genotype, settings: SelectionConfig, seed: int,
               cost: CostContext) -> dict[str, Any] | None:
    """The chosen genotype's supernet score next to ``check_samples`` random genotypes of its FLOPs; None when
    switched off. ``rank`` 1 means no random genotype scores better."""
    n = settings.check_samples
    if n <= 0:
        return None
    others, note = _random(model, n, seed + 104729, cost, genotype, "check")
    own = scorer.score_genotype(genotype)
    scores = [scorer.score_genotype(g) for g in others]
    better = sum(1 for s in scores if s.key(settings.by) > own.key(settings.by))
    values = sorted(s.value(settings.by) for s in scores)
    rank, of = better + 1, len(scores) + 1
    unit = "Dice" if settings.by == "dice" else "loss"
    which = "of its FLOPs" if note is None else "(too few of its FLOPs in the draws: not FLOPs-matched)"
    text = (f"self-check: the chosen genotype ranks {rank} of {of} on the supernet ({unit} "
            f"{own.value(settings.by):.4f}; {len(scores)} random genotypes {which}: median "
            f"{values[len(values) // 2]:.4f}, best {values[-1] if settings.by == 'dice' else values[0]:.4f})")
    out: dict[str, Any] = {"rank": rank, "of": of, "by": settings.by, "score": own.to_dict(),
                           "random_scores": [s.to_dict() for s in scores], "text": text,
                           "matched": note is None}
    if note:
        out["note"] = note
    return out


def weight_tuner(model: Supernet, optimizer: torch.optim.Optimizer, batches: Iterator[Batch], runtime: Runtime,
                 steps: int) -> Callable[[Callable[[], Samples]], None]:
    """``tune(draw)``: ``steps`` weight steps of the search's kind (soft Jaccard loss, only what ran is updated),
    each on the next batch of ``batches`` and an architecture from ``draw()``."""
    from scnas_dsl.training.search import update

    weights = model.weight_parameters()
    scaler = runtime.grad_scaler()

    def tune(draw: Callable[[], Samples]) -> None:
        model.train()
        for _ in range(steps):
            x, y = next(batches)
            x, y = runtime.to_device(x), runtime.to_device(y)
            with runtime.autocast():
                loss = soft_jaccard_loss(model(x, samples=draw()), y, reduce_over_ranks=True)
            update(weights, optimizer, scaler, loss, runtime)

    return tune


def _preference(model: Supernet, selection: Selection, by: str) -> dict[str, torch.Tensor]:
    """What the selection method prefers on every edge, larger better, ``(E, O)`` per structure key: the logits
    (alpha, sampled), or a projection's scores on the edges it decided (its logits, scaled far below any score
    difference, break ties and fill the rest)."""
    logits = {k: a.detach().cpu().double() for k, a in model.arch.items()}
    if selection.method != "projection":
        return logits
    table = {k: 1e-9 * v for k, v in logits.items()}
    for row_record in selection.details.get("edges", []):
        key = row_record["cell"]
        src, dst = row_record["edge"].split("->")
        row = model.edge_lists[key].index((src, dst))
        for op, score in row_record["scores"].items():
            value = Score(float(score["loss"]), float(score["dice"])).key(by)[0]
            table[key][row, model.op_names[key].index(op)] += value
    return table


def fit_to_budget(model: Supernet, selection: Selection, budget: SearchBudget | None, by: str = "dice"
                  ) -> Selection:
    """``selection`` with its genotype within ``budget`` (unchanged without one, or when it is within): one edge
    at a time, the change that gives up the least of what the method preferred per unit of cost saved
    (``CostModel.fit``). The record (costs, limits, what was given up) goes to ``details["budget"]``."""
    if budget is None:
        return selection
    fitted = budget.fit(selection.genotype, _preference(model, selection, by), selection.genotype.name)
    return Selection(selection.method, fitted["genotype"], selection.pruning,
                     {**selection.details, "budget": fitted["record"]})


def choose(model: Supernet, scorer: SupernetScorer, settings: SelectionConfig, *, seed: int, cost: CostContext,
           name: str, tune: Callable[[Callable[[], Samples]], None] | None = None,
           progress: Callable[[str], None] | None = None, budget: SearchBudget | None = None
           ) -> tuple[Selection, dict[str, Any] | None]:
    """The genotype by ``settings.method``, fitted into ``budget`` (:func:`fit_to_budget`), and its self-check
    (on the weights the search left: a projection's fine-tuning is undone before the check, and afterwards)."""
    if settings.method == "alpha" and model.sampling == "fair":
        raise RunError("the logits of a search with fair sampling are not trained: choose the genotype with "
                       "--select projection or --select sampled")
    kept = copy.deepcopy(model.state_dict()) if settings.method == "projection" else None
    if settings.method == "alpha":
        selection = select_alpha(model, name)
    elif settings.method == "sampled":
        selection = select_sampled(model, scorer, settings, seed, cost, name, budget)
    elif settings.method == "projection":
        selection = select_projection(model, scorer, settings, seed, name, tune, progress)
    else:
        raise RunError(f"unknown selection method '{settings.method}': use alpha, projection or sampled")
    if kept is not None:
        model.load_state_dict(kept)
    selection = fit_to_budget(model, selection, budget, settings.by)
    check = self_check(model, scorer, selection.genotype, settings, seed, cost)
    return selection, check
