"""A search's budget in the run: the cost model at the search's patch and batch, the penalty's weight over the
epochs, the per-epoch record, and the chosen genotype fitted into the limits (``scnas_dsl.nn.budget`` holds the
cost model itself; docs/training.md explains the settings)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from scnas_dsl.model import Genotype, SearchSpace
from scnas_dsl.nn.budget import CostModel, check_reachable, describe_costs, format_quantity, penalty
from scnas_dsl.nn.supernet import Supernet
from scnas_dsl.ops.library import Library
from scnas_dsl.training.config import BudgetConfig, SearchConfig


@dataclass
class SearchBudget:
    """The budget of one search: its settings, the limits and the cost model."""

    settings: BudgetConfig
    costs: CostModel
    epochs: int  # the search's epochs
    warmup: int  # epochs before the logits learn
    learns: bool = True  # False with fair sampling: the logits never learn, the budget acts by the fitting alone

    @property
    def limits(self) -> dict[str, float]:
        return self.settings.limits()

    def where(self) -> str:
        """What the costs are measured at, in words."""
        return (f"stem width {self.costs.stem_width}, patch {'x'.join(map(str, self.costs.patch))}, "
                f"batch {self.costs.batch_size}")

    def check_reachable(self) -> None:
        """A CompileError naming the cheapest genotype's cost when a limit is below it."""
        width = "budget width=" if self.settings.width is not None else "stem width"
        check_reachable(self.costs, self.limits, "budget", width)

    def weight_at(self, epoch: int) -> float:
        """The penalty's weight in ``epoch`` (0-based): 0 in the warm-up, then growing linearly to the full
        weight over the first ``ramp`` share of the architecture epochs (reached in the ramp's last epoch)."""
        if epoch < self.warmup or not self.learns:
            return 0.0
        ramp_epochs = math.ceil(self.settings.ramp * (self.epochs - self.warmup))
        if ramp_epochs <= 1:
            return self.settings.weight
        return self.settings.weight * min(1.0, (epoch - self.warmup + 1) / ramp_epochs)

    def penalty(self, model: Supernet, epoch: int) -> torch.Tensor | None:
        """The penalty on the supernet's logits in ``epoch`` (None with weight 0: nothing to add)."""
        weight = self.weight_at(epoch)
        if weight <= 0:
            return None
        expected, _ = self.costs.expected(dict(model.arch.items()))
        return penalty(expected, self.limits, weight).float()

    def record(self, model: Supernet, epoch: int) -> tuple[dict[str, Any], str]:
        """The epoch's record (per limited metric: the limit, the expected cost under the logits and the exact
        cost of the most likely genotype; the penalty's weight) and a summary for the epoch line."""
        with torch.no_grad():
            expected, anchor = self.costs.expected({k: a.detach().cpu() for k, a in model.arch.items()})
        exact = self.costs.exact(anchor)
        record: dict[str, Any] = {"weight": self.weight_at(epoch)}
        for m, lim in self.limits.items():
            record[m] = {"limit": lim, "expected": float(expected[m]), "argmax": exact[m]}
        summary = "; ".join(f"{m} {format_quantity(m, float(expected[m]))} (argmax "
                           f"{format_quantity(m, exact[m])}) of {format_quantity(m, lim)}"
                           for m, lim in self.limits.items())
        return record, summary

    def fit(self, genotype: Genotype, preference: dict[str, torch.Tensor], name: str) -> dict[str, Any]:
        """``genotype`` fitted into the limits (``CostModel.fit``) with the record the selection keeps."""
        before = self.costs.exact(genotype)
        fitted = self.costs.fit(genotype, preference, self.limits, name)
        if not fitted.within:  # the descent from the choice stopped above the budget: the check's cheapest may not
            cheapest = self.costs.cheapest(self.limits, enough=True)
            if cheapest.within:
                fitted = replace(cheapest, genotype=cheapest.genotype.model_copy(update={"name": name}),
                                 gave_up=[*fitted.gave_up, "no cheaper change of the choice was found: the cheapest "
                                          "genotype found in the space within the budget instead (its choices are "
                                          "not the search's)"])
        return {"genotype": fitted.genotype, "record": {
            "limits": self.limits, "measured_at": self.where(), "costs": fitted.costs, "within": fitted.within,
            "costs_before": before, "gave_up": fitted.gave_up, "compile_options": self.compile_options(),
            "stem_width": self.costs.stem_width,
            "text": budget_text(self.limits, self.where(), fitted.costs, fitted.within, len(fitted.gave_up))}}

    def compile_options(self) -> str:
        """The options of the ``scnas compile`` call that counts a genotype of this search as the budget does."""
        return (f"--patch {' '.join(map(str, self.costs.patch))} --batch-size {self.costs.batch_size} "
                f"--in-channels {self.costs.in_channels} --classes {self.costs.num_classes} "
                f"--stem-width {self.costs.stem_width}")


def retrain_hint(budget: dict[str, Any] | None) -> str:
    """The ``scnas train`` options that retrain a budgeted genotype at the width its costs were measured at (the
    retraining's default is the paper's 68, which costs about twice the FLOPs of 48); empty without a budget."""
    width = (budget or {}).get("stem_width")
    return f" --stem-width {width}" if isinstance(width, int) else ""


def retrain_line(genotype_file: str, budget: dict[str, Any] | None) -> str:
    """The genotype file header's last line: how to retrain it (at the budget's width, when it has one)."""
    width = retrain_hint(budget)
    return (f"Retrain it with: scnas train {genotype_file} --data DATA{width}"
            + (" (the width its budget was measured at)" if width else ""))


def budget_text(limits: dict[str, float], where: str, costs: dict[str, float], within: bool, gave_up: int) -> str:
    """The budget's result in one line (without the file names: :func:`budget_line` adds them)."""
    line = f"budget: {describe_costs(costs, limits)} at {where}"
    if gave_up:
        line += f"; fitted by giving up {gave_up} choice(s)"
    if not within:
        line += "; NOT within the budget: no cheaper change was found"
    return line


def search_budget(cfg: SearchConfig, space: SearchSpace, patch: tuple[int, ...], in_channels: int,
                  num_classes: int, library: Library) -> SearchBudget | None:
    """The budget of a search as configured (None without ``--budget``)."""
    if cfg.budget is None:
        return None
    costs = CostModel(space, patch=patch, batch_size=cfg.batch_size, in_channels=in_channels,
                      num_classes=num_classes, stem_width=cfg.budget.width or cfg.stem_width, library=library)
    return SearchBudget(cfg.budget, costs, cfg.epochs, cfg.arch_warmup_epochs, learns=cfg.sampling != "fair")


def budget_line(details: dict[str, Any], genotype_file: str, record_file: str) -> str:
    """The budget's line for the report and a genotype file's header, from a selection's ``details`` ('' without a
    budget): the result, where the choices given up are listed, and the ``scnas compile`` call that counts the
    genotype file as the budget does."""
    record = details.get("budget")
    if not record:
        return ""
    text = record["text"]
    if record["gave_up"]:
        text += f" (listed in {record_file})"
    return f"{text}; `scnas compile {genotype_file} {record['compile_options']}` counts the same"
