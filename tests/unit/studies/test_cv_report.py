"""cv's Table-1 summary (per fold, mean and sd over folds, pooled, per case) and its leakage check, on
hand-made evaluations and search records (no training)."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from scnas_dsl.data.splits import FoldSplit
from scnas_dsl.errors import RunError
from scnas_dsl.evaluation.metrics import Evaluation
from scnas_dsl.prediction.predict import Weights
from scnas_dsl.studies.cv import (
    CV_MARKER,
    CVResult,
    _prepare_out,
    cv_settings,
    leakage,
    search_cases,
    write_summary,
)

NAN = float("nan")
LABELS = {1: "edema", 2: "enhancing"}
FOLDS = {
    0: {"c0": {1: 0.9, 2: 0.5}, "c1": {1: 0.7, 2: NAN}},
    1: {"c2": {1: 0.6, 2: 0.4}, "c3": {1: 0.8, 2: 0.2}},
    2: {"c4": {1: 0.5, 2: 0.1}},
}


def result() -> CVResult:
    folds = {k: Evaluation(labels=LABELS, per_case=cases) for k, cases in FOLDS.items()}
    pooled = Evaluation(labels=LABELS, per_case={c: s for cases in FOLDS.values() for c, s in cases.items()})
    weights = {k: Weights(run=Path(f"fold_{k}"), checkpoint="last", epoch=3) for k in FOLDS}
    return CVResult(folds=folds, pooled=pooled, weights=weights, folds_total=5)


def fold_mean(fold: int, label: int) -> float:
    return statistics.mean(v[label] for v in FOLDS[fold].values() if v[label] == v[label])


def test_summary_has_the_papers_table_layout_and_the_per_case_scores(tmp_path: Path) -> None:
    write_summary(tmp_path, result(), "", spec="space.scn")
    rows = {r["fold"]: r for r in csv.DictReader((tmp_path / "cv_summary.csv").open())}
    assert list(rows) == ["0", "1", "2", "mean", "std", "all"]
    for k in FOLDS:  # every fold row under the right label
        assert float(rows[str(k)]["edema"]) == pytest.approx(fold_mean(k, 1), abs=1e-6)
        assert float(rows[str(k)]["enhancing"]) == pytest.approx(fold_mean(k, 2), abs=1e-6)
        assert rows[str(k)]["epoch"] == "3"
    for n, label in LABELS.items():
        means = [fold_mean(k, n) for k in FOLDS]
        assert float(rows["mean"][label]) == pytest.approx(statistics.mean(means), abs=1e-6)
        assert float(rows["std"][label]) == pytest.approx(statistics.stdev(means), abs=1e-6)  # n - 1, over folds
    averages = [statistics.mean([fold_mean(k, 1), fold_mean(k, 2)]) for k in FOLDS]
    assert float(rows["mean"]["foreground_mean"]) == pytest.approx(statistics.mean(averages), abs=1e-6)
    assert float(rows["std"]["foreground_mean"]) == pytest.approx(statistics.stdev(averages), abs=1e-6)
    assert float(rows["all"]["enhancing"]) == pytest.approx(statistics.mean([0.5, 0.4, 0.2, 0.1]))  # NaN left out

    cases = list(csv.DictReader((tmp_path / "cv_cases.csv").open()))
    assert [(r["fold"], r["case"]) for r in cases] == [("0", "c0"), ("0", "c1"), ("1", "c2"), ("1", "c3"), ("2", "c4")]
    assert cases[1]["enhancing"] == "" and float(cases[3]["enhancing"]) == pytest.approx(0.2, abs=1e-6)
    assert float(cases[3]["edema"]) == pytest.approx(0.8, abs=1e-6)

    summary = json.loads((tmp_path / "cv_summary.json").read_text())
    assert summary["case_scores"][1] == {"fold": 0, "case": "c1", "dice": {"edema": 0.7, "enhancing": None}}
    assert (summary["folds_run"], summary["folds_total"], summary["label_names"]) == ([0, 1, 2], 5, ["edema", "enhancing"])
    assert summary["over_folds"]["std"]["edema"] == pytest.approx(statistics.stdev([fold_mean(k, 1) for k in FOLDS]))
    assert summary["leakage"] is None and summary["mean_dice"]["edema"] == pytest.approx(0.7)  # pooled kept

    md = (tmp_path / "cv_summary.md").read_text()
    assert "| fold | edema | enhancing | average | epoch |" in md
    sd = 100 * statistics.stdev([fold_mean(k, 1) for k in FOLDS])
    assert f"| mean ± sd (3 of 5 folds) | {100 * statistics.mean(fold_mean(k, 1) for k in FOLDS):.2f} ± {sd:.2f}" in md
    assert "| pooled (5 cases) |" in md
    table = result().table()
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["0", "1", "2", "mean", "sd", "all"]


def search_run(folder: Path, kind: str = "search") -> Path:
    folder.mkdir(parents=True)
    (folder / ".scnas-run").write_text(kind + "\n")
    (folder / "split.json").write_text(json.dumps({"fold": 0, "weight_part": ["c1", "c2", "c3"], "arch_part": ["c4"],
                                                   "val": ["c5"]}))
    (folder / "config.json").write_text(json.dumps({"data": "msd/Task02_Heart"}))
    genotype = folder / "genotype.scn"
    genotype.write_text("# a genotype\n")
    return genotype


SPLITS = {k: FoldSplit(fold=k, train=[], val=val, weight_part=[], arch_part=[], source=Path("splits.json"))
          for k, val in {0: ["c5"], 1: ["c1", "c6"], 2: ["c4"], 3: ["c6", "c7"]}.items()}


def test_a_searched_genotype_leaks_the_cases_its_search_trained_on(tmp_path: Path) -> None:
    genotype = search_run(tmp_path / "search")
    leak = leakage(genotype, SPLITS)
    assert leak is not None
    assert leak.folds == {1: (1, 2), 2: (1, 1)}  # weight part (c1) and architecture part (c4); c5 was not seen
    message = leak.message(genotype)
    assert "fold 1 (1 of 2 cases), fold 2 (1 of 1 cases)" in message and "scnas cv SPACE" in message
    assert "msd/Task02_Heart" in message
    assert leak.to_json()["cases"] == 2
    assert leakage(genotype, {0: SPLITS[0], 3: SPLITS[3]}) is None  # folds that share nothing with the search

    # the copy that cv of a space keeps in OUT/genotypes carries the same record
    copies = tmp_path / "genotypes"
    copies.mkdir()
    (copies / "fold_0.scn").write_text(genotype.read_text())
    record = json.loads((tmp_path / "search" / "split.json").read_text())
    (copies / "fold_0.search.json").write_text(json.dumps({**record, "search": "S", "data": "D"}))
    assert search_cases(copies / "fold_0.scn") == search_cases(genotype).__class__(  # type: ignore[union-attr]
        run="S", data="D", fold=0, cases=frozenset({"c1", "c2", "c3", "c4"}))
    assert leakage(copies / "fold_0.scn", SPLITS).folds == {1: (1, 2), 2: (1, 1)}  # type: ignore[union-attr]


def test_genotypes_no_search_recorded_get_no_warning(tmp_path: Path) -> None:
    baseline = Path(__file__).resolve().parents[3] / "specs" / "baselines" / "unet3d.scn"
    assert search_cases(baseline) is None and leakage(baseline, SPLITS) is None
    in_a_training_run = search_run(tmp_path / "train", kind="train")
    assert leakage(in_a_training_run, SPLITS) is None


def test_table_and_markdown_say_which_folds_ran(tmp_path: Path) -> None:
    one = result()
    one.folds = {0: one.folds[0]}
    table = one.table()
    mean_row = next(line for line in table.splitlines() if line.startswith("mean"))
    assert "1 of 5 folds: 0" in mean_row, table
    write_summary(tmp_path, one, "")
    md = (tmp_path / "cv_summary.md").read_text()
    assert "every fold" not in md and "retrained on fold 0 (1 of 5 folds)" in md, md
    three = result()  # folds 0, 1, 2 of 5
    write_summary(tmp_path, three, "")
    assert "retrained on folds 0, 1, 2 (3 of 5 folds)" in (tmp_path / "cv_summary.md").read_text()
    assert "3 of 5 folds: 0, 1, 2" in three.table()
    three.folds_total = 3
    write_summary(tmp_path, three, "")
    assert "retrained on every fold (3 of 3)" in (tmp_path / "cv_summary.md").read_text()


def fold_run(folder: Path, *, stem: int = 68, epochs: int = 500, deep: list[int] | None = None) -> Path:
    """A retraining run folder, as far as cv reads its settings."""
    (folder / "preprocessing").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "data": "pre", "epochs": epochs, "stem_width": None, "patch": [32, 32, 32], "spacing": None,
        "deep_supervision": None, "batch_size": 2, "batches_per_epoch": 5, "augment": True, "seed": 0,
        "splits_seed": 12345}))
    (folder / "network.json").write_text(json.dumps({"stem_width": stem, "patch": [32, 32, 32],
                                                     "deep_supervision": deep or []}))
    (folder / "preprocessing" / "preprocessed.json").write_text(json.dumps({"spacing": [1.5, 1.0, 1.0]}))
    return folder


def test_the_summary_records_the_settings_that_define_the_cv(tmp_path: Path) -> None:
    runs = {0: fold_run(tmp_path / "fold_0"), 1: fold_run(tmp_path / "fold_1", stem=32, deep=[1, 2])}
    settings = cv_settings(runs, data_name="Heart", data_path=tmp_path / "data", mirror=False)
    assert settings["data"] == {"name": "Heart", "path": str((tmp_path / "data").resolve())}
    assert settings["mirror"] is False and settings["epochs"] == 500 and settings["patch"] == [32, 32, 32]
    assert settings["spacing"] == [1.5, 1.0, 1.0]  # the spacing the data was preprocessed at, not the request
    assert settings["stem_width"] == {"0": 68, "1": 32}  # resolved (network.json); per fold where folds differ
    assert settings["deep_supervision"] == {"0": [], "1": [1, 2]}
    assert settings["per_fold"]["1"]["batch_size"] == 2
    cv = result()
    cv.settings = settings
    write_summary(tmp_path, cv, "")
    assert json.loads((tmp_path / "cv_summary.json").read_text())["settings"] == settings


def test_a_folder_holding_only_the_marker_is_reused(tmp_path: Path) -> None:
    out = tmp_path / "cv"
    out.mkdir()
    (out / CV_MARKER).write_text("scnas cv\ngenotype\n")  # what a failed cv left behind
    _prepare_out(out, "space", resume=False, force=False)
    assert (out / CV_MARKER).read_text() == "scnas cv\nspace\n"
    (out / "fold_0").mkdir()
    with pytest.raises(RunError, match="already exists"):
        _prepare_out(out, "space", resume=False, force=False)
