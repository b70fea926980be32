"""``scnas search --budget`` and ``scnas cv SPACE --budget`` end to end at tiny sizes: the chosen genotype is within
the budget by the compiler's own count, the report, genotype header, metrics and plot say so, ``scnas derive``
keeps the run's budget, and bad or impossible budgets are a message before any folder is made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scnas_dsl.loader import load
from scnas_dsl.nn.budget import CostModel
from scnas_dsl.nn.cost import estimate
from scnas_dsl.stopping import RunInterrupted
from scnas_dsl.studies import cv as cv_module
from tests.helpers import TINY, heart_cases, invoke, tiny_space

pytestmark = pytest.mark.xdist_group("budget_cli")



@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("budget_cli")
    _, pre = heart_cases(root)
    spec = tiny_space(root)
    # no self-check: its FLOPs-matched random draws are slow for a cheap genotype, and not what is tested here
    config = root / "search.json"
    config.write_text(json.dumps({"selection": {"check_samples": 0}}))
    space = load(spec).space()
    costs = CostModel(space, patch=(16, 16, 16), batch_size=2, in_channels=1, num_classes=2, stem_width=4)
    cheapest = costs.cheapest({"flops": 1.0}).costs["flops"]
    return {"root": root, "pre": pre, "spec": spec, "config": config, "cheapest": cheapest}  # type: ignore[dict-item]


def _flops(genotype_file: Path) -> float:
    space, genotype = load(genotype_file).genotype()
    return float(estimate(space, genotype=genotype, patch=(16, 16, 16), batch_size=2, in_channels=1, num_classes=2,
                          stem_width=4).flops)


@pytest.mark.slow
@pytest.mark.parametrize("method, weight", [("alpha", 0.0), ("sampled", 2.0)])
def test_a_budgeted_search_chooses_a_genotype_within_the_budget_and_reports_it(
        workspace: dict[str, Path], tmp_path: Path, method: str, weight: float) -> None:
    """Weight 0 (no penalty): the alpha genotype is over the budget and the fitting brings it in."""
    limit = 1.15 * float(workspace["cheapest"])  # type: ignore[arg-type]
    run = tmp_path / "search"
    code, output = invoke("search", workspace["spec"], "--data", workspace["pre"], "--out", run, "--epochs", "2",
                          *TINY, "--config", workspace["config"], "--select", method,
                          "--budget", f"flops={limit / 1e6:.4f}M", "--budget", f"weight={weight},ramp=0")
    assert code == 0, output
    assert _flops(run / "genotype.scn") <= limit  # by the compiler's own count
    assert "budget: flops " in output and f"of {limit / 1e6:.3g} MFLOPs" in output, output
    header = (run / "genotype.scn").read_text().split("import")[0]
    assert "budget: flops" in header and "stem width 4, patch 16x16x16, batch 2" in header
    # retrained at the width the budget was measured at, not the retraining's default 68
    assert "scnas train genotype.scn --data DATA --stem-width 4 (the width its budget" in header
    assert "--data " + str(workspace["pre"]) + " --stem-width 4  (the width the budget" in output, output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        entry = record["budget"]["flops"]
        assert entry["limit"] == pytest.approx(limit, rel=1e-4) and entry["expected"] > 0 and entry["argmax"] > 0
        assert record["budget"]["weight"] == weight
        assert (record["budget_penalty"] >= 0) if weight else ("budget_penalty" not in record)
    result = records[-1]["budget_result"]
    assert result["within"] and result["costs"]["flops"] == _flops(run / "genotype.scn")
    command = header.split("budget:")[1].split("`")[1].split()  # the compile call the header names counts exactly the same
    assert command[:3] == ["scnas", "compile", "genotype.scn"]
    code, counted = invoke("compile", run / "genotype.scn", *command[3:], "--json")
    assert code == 0, counted
    compiled = json.loads(counted)
    assert (compiled["flops"], compiled["params"], compiled["memory_bytes"]) == tuple(
        result["costs"][m] for m in ("flops", "params", "memory"))
    if weight == 0:  # the logits knew nothing of the budget: the fitting gave up choices, each line says which
        assert result["costs_before"]["flops"] > limit and result["gave_up"], result
        assert all(" -> " in line and "flops" in line for line in result["gave_up"])
        assert "fitted by giving up" in header
    assert json.loads((run / "selection.json").read_text())["details"]["budget"]["within"]
    assert (run / "plots" / "budget.png").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["budget"]["flops"] == pytest.approx(limit, rel=1e-4) and config["budget"]["weight"] == weight
    if method == "alpha":  # another method chosen later keeps the run's budget
        code, output = invoke("derive", run, "--select", "sampled", "--samples", "3", "--check-samples", "0",
                              "--device", "cpu", "--score-batches", "1")
        assert code == 0, output
        assert _flops(run / "genotype_sampled.scn") <= limit
        assert "budget: flops" in (run / "genotype_sampled.scn").read_text().split("import")[0]


@pytest.mark.parametrize("budget, words", [
    ("flop=3G", "unknown budget key 'flop'"), ("flops=3X", "unknown unit 'X'"), ("flops=-1G", "positive"),
    ("width=8", "needs a limit"), ("flops", "KEY=VALUE"), ("flops=1", "below the cheapest genotype")])
def test_a_bad_or_impossible_budget_is_a_message_and_makes_no_folder(
        workspace: dict[str, Path], tmp_path: Path, budget: str, words: str) -> None:
    run = tmp_path / "search"
    code, output = invoke("search", workspace["spec"], "--data", workspace["pre"], "--out", run, "--epochs", "1",
                          *TINY, "--budget", budget)
    assert code != 0 and words in output, output
    assert "Traceback" not in output and not run.exists()
    if words.startswith("below"):  # the cheapest genotype's cost is named
        assert f"{float(workspace['cheapest']) / 1e6:.3g} MFLOPs" in output, output  # type: ignore[arg-type]


def test_cv_of_a_space_hands_the_budget_to_every_fold_search(workspace: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def search(cfg, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(cfg.budget)
        raise RunInterrupted("stopped by SIGINT; continue with scnas cv ... --resume")

    monkeypatch.setattr(cv_module, "run_search", search)
    code, output = invoke("cv", workspace["spec"], "--data", workspace["pre"], "--out", tmp_path / "cv", "--fold", "0",
                          "--device", "cpu", "--budget", "params=2k,memory=1GiB")
    assert code == 130, output
    assert [(b.params, b.memory, b.flops) for b in seen] == [(2000.0, 2.0**30, None)]
    baseline = Path(__file__).resolve().parents[2] / "specs" / "baselines" / "unet3d.scn"
    code, output = invoke("cv", baseline, "--data", workspace["pre"], "--out", tmp_path / "cv2", "--budget",
                          "flops=1G")
    assert code != 0 and "--budget" in output and "genotype" in output, output


def test_cv_refusing_an_impossible_budget_leaves_a_folder_the_corrected_command_can_use(
        workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cv"
    options = ["--data", workspace["pre"], "--out", out, "--fold", "0", "--device", "cpu", "--search-patch", "16", "16",
               "16", "--search-stem-width", "4", "--search-batch-size", "2"]
    code, output = invoke("cv", workspace["spec"], *options, "--budget", "flops=1")
    assert code != 0 and "below the cheapest genotype" in output, output
    assert sorted(p.name for p in out.iterdir()) == [".scnas-cv"]  # no empty fold folder left behind

    def search(cfg, **kwargs):  # type: ignore[no-untyped-def]
        raise RunInterrupted("stopped by SIGINT; continue with scnas cv ... --resume")

    monkeypatch.setattr(cv_module, "run_search", search)  # the corrected command gets past the folder's check
    code, output = invoke("cv", workspace["spec"], *options, "--budget", "flops=1G")
    assert code == 130, output
