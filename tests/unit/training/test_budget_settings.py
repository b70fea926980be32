"""The budget's settings (``BudgetConfig``): from the command line's strings, a config file's table or string, and
the schedule of the penalty's weight (``SearchBudget.weight_at``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scnas_dsl.errors import RunError
from scnas_dsl.ops.library import default_library
from scnas_dsl.training.budgeting import SearchBudget
from scnas_dsl.training.config import BudgetConfig, SearchConfig, resolve_config


@pytest.mark.parametrize("given", [
    {"budget": {"flops": "40G", "memory": "12GiB", "weight": 0.5}},
    {"budget": "flops=40G,memory=12GiB,weight=0.5"},
    {"budget": {"flops": 4e10, "memory": 12 * 2**30, "weight": "0.5"}}])
def test_a_config_file_gives_the_budget_as_a_table_or_a_string(tmp_path: Path, given: dict[str, object]) -> None:
    file = tmp_path / "search.json"
    file.write_text(json.dumps(given))
    cfg = resolve_config(SearchConfig, file, spec="s.scn", data="d")
    assert cfg.budget is not None and cfg.budget.limits() == {"flops": 4e10, "memory": 12 * 2**30}
    assert (cfg.budget.weight, cfg.budget.ramp, cfg.budget.width) == (0.5, 0.25, None)
    # the command line's --budget replaces the file's
    cli = resolve_config(SearchConfig, file, spec="s.scn", data="d", budget=["params=5M"])
    assert cli.budget is not None and cli.budget.limits() == {"params": 5e6}


def test_a_bad_budget_in_a_config_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    file = tmp_path / "search.json"
    file.write_text(json.dumps({"budget": {"flops": "40G", "latency": "3ms"}}))
    with pytest.raises(RunError, match=r"search\.json.*unknown budget key 'latency'"):
        resolve_config(SearchConfig, file, spec="s.scn", data="d")


@pytest.mark.parametrize("name, text, key", [
    ("search.json", '{"budget": {"flops": 4e7, "flops": 1}}', "flops"),
    ("search.json", '{"epochs": 3, "epochs": 4}', "epochs"),
    ("search.yaml", "budget: {flops: 1}\nbudget: {flops: 2}\n", "budget")])
def test_a_setting_given_twice_in_a_config_file_is_refused(tmp_path: Path, name: str, text: str, key: str) -> None:
    """json and PyYAML keep the last of two equal keys silently: the budget of the file would not be the one read."""
    pytest.importorskip("yaml")
    file = tmp_path / name
    file.write_text(text)
    with pytest.raises(RunError, match=rf"{name}: the setting '{key}' is given twice in one table; keep one"):
        resolve_config(SearchConfig, file, spec="s.scn", data="d")


def test_the_weight_ramps_up_after_the_warm_up() -> None:
    budget = SearchBudget(BudgetConfig(flops=1e9, weight=2.0, ramp=0.25), costs=None, epochs=42,  # type: ignore[arg-type]
                          warmup=2)
    weights = [budget.weight_at(e) for e in range(42)]
    assert weights[:2] == [0.0, 0.0]  # the warm-up: the logits do not learn
    assert weights[2] == pytest.approx(0.2) and weights[11] == 2.0 and weights[-1] == 2.0  # 10 ramp epochs
    assert all(b >= a for a, b in zip(weights, weights[1:], strict=False))
    flat = SearchBudget(BudgetConfig(flops=1e9, ramp=0), costs=None, epochs=5, warmup=0)  # type: ignore[arg-type]
    assert [flat.weight_at(e) for e in range(5)] == [0.1] * 5  # the default weight, at once


def test_with_fair_sampling_the_budget_acts_by_the_fitting_alone() -> None:
    """Fair sampling trains no logits: no penalty (and its record says weight 0), only the chosen genotype's fitting."""
    from scnas_dsl.training.budgeting import search_budget

    cfg = SearchConfig(spec="s.scn", data="d", sampling="fair", selection={"method": "sampled"},
                       budget="flops=1G,weight=1,ramp=0")
    space = _tiny_space()
    budget = search_budget(cfg, space, (8, 8, 8), 1, 2, default_library())
    assert budget is not None and not budget.learns and budget.weight_at(3) == 0.0
    paired = search_budget(cfg.model_copy(update={"sampling": "pair"}), space, (8, 8, 8), 1, 2, default_library())
    assert paired is not None and paired.weight_at(3) == 1.0


def _tiny_space():  # type: ignore[no-untyped-def]
    from scnas_dsl.loader import load

    return load(Path(__file__).resolve().parents[3] / "specs" / "tiny_by_level.scn").space()


def test_a_choice_the_descent_cannot_fit_falls_back_to_the_cheapest_genotype_found(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The start's check passed (a genotype within the budget exists), so the derived one must be within it even
    when the descent from the search's choice stops above (it did for memory budgets near the cheapest)."""
    import torch

    from scnas_dsl.nn.budget import CostModel, Fitted
    from scnas_dsl.nn.random_genotypes import draw_genotypes

    space = _tiny_space()
    costs = CostModel(space, patch=(8, 8, 8), batch_size=2, in_channels=1, num_classes=2, stem_width=4)
    limit = costs.cheapest({"memory": 1e18}, enough=True).costs["memory"]  # the first descent's start: cheap
    budget = SearchBudget(BudgetConfig(memory=limit), costs=costs, epochs=2, warmup=0)
    choice = next(draw_genotypes(space, seed=0))
    stuck = Fitted(choice, costs.exact(choice), False, [])
    real, calls = costs.fit, []

    def first_stuck(*args, **kwargs):  # type: ignore[no-untyped-def]  # the choice's descent; not the cheapest's
        calls.append(1)
        return stuck if len(calls) == 1 else real(*args, **kwargs)

    monkeypatch.setattr(costs, "fit", first_stuck)
    preference = {k: torch.zeros(len(costs.edges[k]), len(costs.op_names[k])) for k in costs.keys}
    fitted = budget.fit(choice, preference, "chosen")
    record = fitted["record"]
    assert record["within"] and record["costs"]["memory"] <= limit and fitted["genotype"].name == "chosen"
    assert "the cheapest genotype found in the space within the budget instead" in record["gave_up"][-1]
