"""``scnas compare`` on cv folders made by hand: the statistics, the undefined-Dice rule, the files, and a clear
message (no traceback) for every input it refuses."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
from scipy import stats

from scnas_dsl.errors import RunError
from scnas_dsl.studies.compare import compare_runs
from tests.helpers import invoke

LABELS = ["edema", "enhancing"]
CASES = [f"case_{i}" for i in range(10)]
FOLD = {case: i % 5 for i, case in enumerate(CASES)}
#: what cv_summary.json records of the settings that define a cross-validation
SETTINGS: dict[str, object] = {
    "data": {"name": "BRATS", "path": "/data/Task01_BrainTumour"}, "mirror": True, "epochs": 500,
    "stem_width": 68, "patch": [128, 128, 128], "spacing": [0.7, 0.7, 0.7], "deep_supervision": [],
    "batch_size": 8}


def fake_cv(folder: Path, scores: dict[str, dict[str, float | None]], *, folds_run: list[int] | None = None,
            fold_of: dict[str, int] | None = None, per_case: bool = True, labels: list[str] | None = None,
            settings: dict[str, object] | None = None, no_settings: bool = False) -> Path:
    """A folder as ``scnas cv`` leaves it, as far as compare reads it."""
    folder.mkdir(parents=True)
    (folder / ".scnas-cv").write_text("scnas cv\ngenotype\n")
    fold_of = fold_of or FOLD
    summary: dict[str, object] = {"checkpoint": "last", "mode": "genotype", "spec": "x.scn",
                                  "folds_run": folds_run if folds_run is not None else [0, 1, 2, 3, 4],
                                  "folds_total": 5, "label_names": labels or LABELS, "leakage": None}
    if not no_settings:
        summary["settings"] = {**SETTINGS, **(settings or {})}
    if per_case:
        summary["case_scores"] = [{"fold": fold_of[c], "case": c, "dice": d} for c, d in scores.items()]
    (folder / "cv_summary.json").write_text(json.dumps(summary))
    return folder


def reference_scores() -> dict[str, dict[str, float | None]]:
    return {c: {"edema": 0.5 + 0.04 * i, "enhancing": 0.3 + 0.05 * i} for i, c in enumerate(CASES)}


# edema: better on 8 of 10 cases, by differing amounts; enhancing: worse on all
DELTA_EDEMA = [0.05, 0.02, 0.07, -0.01, 0.03, 0.04, 0.06, 0.01, 0.08, -0.02]
DELTA_ENHANCING = [-0.1 - 0.01 * i for i in range(10)]


def other_scores() -> dict[str, dict[str, float | None]]:
    ref = reference_scores()
    return {c: {"edema": ref[c]["edema"] + DELTA_EDEMA[i],  # type: ignore[operator]
                "enhancing": ref[c]["enhancing"] + DELTA_ENHANCING[i]}  # type: ignore[operator]
            for i, c in enumerate(CASES)}


def rows_of(report: Path) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["label"], r["run"]): r for r in csv.DictReader((report / "report.csv").open())}


def test_paired_difference_is_run_minus_reference_with_scipy_wilcoxon(tmp_path: Path) -> None:
    ref = fake_cv(tmp_path / "ref", reference_scores())
    run = fake_cv(tmp_path / "run", other_scores())
    result = compare_runs([ref, run], tmp_path / "report", names=["searched", "unet"])
    rows = {(r.label, r.run): r for r in result.rows}
    edema = rows[("edema", "unet")]
    assert edema.pairs == 10 and edema.pairs_excluded == 0
    assert edema.mean_difference == pytest.approx(statistics.mean(DELTA_EDEMA))
    assert edema.median_difference == pytest.approx(statistics.median(DELTA_EDEMA))
    expected = stats.wilcoxon(DELTA_EDEMA)
    assert edema.p_value == pytest.approx(expected.pvalue) and edema.statistic == pytest.approx(expected.statistic)
    enhancing = rows[("enhancing", "unet")]
    assert enhancing.mean_difference == pytest.approx(statistics.mean(DELTA_ENHANCING))  # negative: worse
    assert enhancing.p_value == pytest.approx(stats.wilcoxon(DELTA_ENHANCING).pvalue)
    assert rows[("edema", "searched")].pairs is None  # the reference has no difference to itself
    # the same numbers in the CSV, each under its own label and column
    csv_rows = rows_of(tmp_path / "report")
    assert float(csv_rows[("enhancing", "unet")]["mean_difference"]) == pytest.approx(statistics.mean(DELTA_ENHANCING))
    assert float(csv_rows[("edema", "unet")]["p_value"]) == pytest.approx(expected.pvalue, rel=1e-5)
    assert csv_rows[("edema", "searched")]["p_value"] == ""


def test_spread_over_cases_and_over_folds(tmp_path: Path) -> None:
    ref = fake_cv(tmp_path / "ref", reference_scores())
    run = fake_cv(tmp_path / "run", other_scores())
    compare_runs([ref, run], tmp_path / "report")
    row = rows_of(tmp_path / "report")[("enhancing", "ref")]
    values = [s["enhancing"] for s in reference_scores().values()]
    assert float(row["mean_cases"]) == pytest.approx(statistics.mean(values), rel=1e-5)  # type: ignore[arg-type]
    assert float(row["sd_cases"]) == pytest.approx(statistics.stdev(values), rel=1e-5)  # type: ignore[arg-type]
    fold_means = [statistics.mean(v for c, v in zip(CASES, values, strict=True) if FOLD[c] == k) for k in range(5)]
    assert float(row["sd_folds"]) == pytest.approx(statistics.stdev(fold_means), rel=1e-5)  # type: ignore[arg-type]
    assert (row["cases"], row["folds"]) == ("10", "5")


def test_undefined_dice_is_left_out_of_the_pairs_and_counted(tmp_path: Path) -> None:
    ref_scores, run_scores = reference_scores(), other_scores()
    ref_scores["case_0"]["edema"] = None  # both masks empty in the reference run
    run_scores["case_3"]["edema"] = None  # and another case in the other run
    ref = fake_cv(tmp_path / "ref", ref_scores)
    run = fake_cv(tmp_path / "run", run_scores)
    result = compare_runs([ref, run], tmp_path / "report")
    edema = next(r for r in result.rows if (r.label, r.run) == ("edema", "run"))
    kept = [d for i, d in enumerate(DELTA_EDEMA) if i not in (0, 3)]
    assert (edema.pairs, edema.pairs_excluded) == (8, 2)
    assert edema.mean_difference == pytest.approx(statistics.mean(kept))
    assert edema.p_value == pytest.approx(stats.wilcoxon(kept).pvalue)
    reference = next(r for r in result.rows if (r.label, r.run) == ("edema", "ref"))
    assert reference.cases == 9 and not math.isnan(reference.mean_cases)
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["per_case"]["edema"]["case_0"] == {"ref": None, "run": pytest.approx(0.55)}
    assert "left out" in saved["rules"]["undefined_dice"]


def test_identical_runs_have_no_p_value_and_the_report_files_are_written(tmp_path: Path) -> None:
    ref = fake_cv(tmp_path / "ref", reference_scores())
    same = fake_cv(tmp_path / "same", reference_scores())
    result = compare_runs([ref, same], tmp_path / "report", names=["a", "b"])
    row = next(r for r in result.rows if r.run == "b")
    assert row.mean_difference == 0 and math.isnan(row.p_value)  # type: ignore[arg-type]
    names = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert names == [".scnas-compare", "box_edema.png", "box_enhancing.png", "report.csv", "report.json", "report.md"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## edema" in md and "mean ± sd over cases" in md and "Wilcoxon" in md


def test_refusals_are_messages_without_traceback(tmp_path: Path) -> None:
    ref = fake_cv(tmp_path / "ref", reference_scores())
    run = fake_cv(tmp_path / "run", other_scores())
    report = tmp_path / "report"
    plain = tmp_path / "plain"
    plain.mkdir()
    unfinished = fake_cv(tmp_path / "unfinished", reference_scores(), folds_run=[0, 1])
    old = fake_cv(tmp_path / "old", reference_scores(), per_case=False)
    fewer = fake_cv(tmp_path / "fewer", {c: s for c, s in reference_scores().items() if c != "case_7"})
    relabelled = fake_cv(tmp_path / "relabelled", {c: {"edema": 0.5, "necrosis": 0.5} for c in CASES},
                         labels=["edema", "necrosis"])
    cases = [
        ((plain, run), "not a cross-validation folder"),
        ((ref, unfinished), "unfinished, 2 of 5 folds scored"),
        ((ref, old), "no per-case scores"),
        ((ref, fewer), "case_7"),
        ((fewer, ref), "case_7"),
        ((ref, relabelled), "lacks enhancing"),
        ((ref,), "at least 2 cv folders"),
    ]
    for folders, message in cases:
        code, output = invoke("compare", *folders, "-o", report)
        assert code == 1 and message in output and "Traceback" not in output, (folders, output)
    code, output = invoke("compare", ref, run, "--names", "a", "-o", report)
    assert code == 1 and "1 name(s) for 2 cv folders" in output
    assert not report.exists()
    # the report folder: never someone else's, replaced only with --force
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, output = invoke("compare", ref, run, "-o", mine, "--force")
    assert code == 1 and "not a report folder scnas compare made" in output
    assert (mine / "notes.txt").read_text() == "mine"
    code, output = invoke("compare", ref, run, "--names", "a,b", "-o", report)
    assert code == 0, output
    code, output = invoke("compare", ref, run, "-o", report)
    assert code == 1 and "--force" in output
    code, output = invoke("compare", ref, run, "--names", "x", "--names", "y", "-o", report, "--force")
    assert code == 0 and {r["run"] for r in csv.DictReader((report / "report.csv").open())} == {"x", "y"}
    with pytest.raises(RunError, match="not distinct"):
        compare_runs([ref, run], tmp_path / "r2", names=["a", "a"])


def test_settings_that_differ_get_a_note_and_another_data_set_is_refused(tmp_path: Path) -> None:
    ref = fake_cv(tmp_path / "ref", reference_scores())
    same = fake_cv(tmp_path / "same", other_scores())
    assert compare_runs([ref, same], tmp_path / "r0").notes == []  # the same setup: nothing to say
    other = fake_cv(tmp_path / "other", other_scores(), settings={
        "stem_width": 32, "mirror": False, "epochs": 50, "patch": [64, 64, 64], "spacing": [1.0, 1.0, 1.0],
        "deep_supervision": [1, 2], "data": {"name": "BRATS", "path": "/elsewhere/Task01_BrainTumour"}})
    result = compare_runs([ref, other], tmp_path / "r1")
    assert len(result.notes) == 1, result.notes
    note = result.notes[0]
    for what in ("stem width 32 vs 68", "test-time mirroring off vs on", "epochs 50 vs 500",
                 "patch 64x64x64 vs 128x128x128", "spacing 1x1x1 vs 0.7x0.7x0.7", "deep supervision",
                 "data set folder /elsewhere/Task01_BrainTumour vs /data/Task01_BrainTumour"):
        assert what in note, (what, note)
    assert "batch" not in note  # recorded, but not one of the settings compare checks
    saved = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert saved["notes"] == result.notes and saved["runs"][1]["settings"]["stem_width"] == 32
    assert f"note: {note}" in (tmp_path / "r1" / "report.md").read_text()
    # on stderr too
    code, output = invoke("compare", ref, other, "-o", tmp_path / "r2")
    assert code == 0 and "note: other differs from ref in" in output

    heart = fake_cv(tmp_path / "heart", other_scores(), settings={"data": {"name": "Heart", "path": "/data/heart"}})
    with pytest.raises(RunError, match="different data sets.*'Heart'.*'BRATS'"):
        compare_runs([ref, heart], tmp_path / "r3")
    assert not (tmp_path / "r3").exists()


def test_the_same_folder_twice_and_unrecorded_settings_get_a_note(tmp_path: Path) -> None:
    ref = fake_cv(tmp_path / "ref", reference_scores())
    result = compare_runs([ref, tmp_path / "." / "ref"], tmp_path / "r0", names=["a", "b"])
    assert any("the same folder" in n for n in result.notes), result.notes
    old = fake_cv(tmp_path / "old", other_scores(), no_settings=True)
    result = compare_runs([ref, old], tmp_path / "r1")
    assert any("old: its cv_summary.json records no settings" in n for n in result.notes), result.notes


def test_a_folder_that_does_not_exist_is_named_so(tmp_path: Path) -> None:
    ref = fake_cv(tmp_path / "ref", reference_scores())
    code, output = invoke("compare", ref, tmp_path / "typo", "-o", tmp_path / "report")
    assert code == 1 and "no such folder" in output and "not a cross-validation" not in output, output


def test_the_box_plot_draws_each_case_once(tmp_path: Path) -> None:
    from scnas_dsl.studies.compare import _box_figure, read_cv

    scores = reference_scores()
    scores["case_0"]["edema"] = 0.95  # flat cases and one outlier: a box plot's flier
    for case in CASES[1:]:
        scores[case]["edema"] = 0.5
    run = read_cv(fake_cv(tmp_path / "ref", scores), "ref")
    figure = _box_figure([run, run], "edema")
    axes = figure.axes[0]
    drawn = sum(len(c.get_offsets()) for c in axes.collections)
    # markers without lines, but the means (triangles): the fliers
    fliers = sum(len(line.get_xdata()) for line in axes.lines
                 if line.get_linestyle() == "None" and line.get_marker() != "^")
    assert drawn == 2 * len(CASES) and fliers == 0, (drawn, fliers)


def test_a_malformed_cv_summary_names_the_file_and_the_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json as _json

    from scnas_dsl.errors import RunError
    from scnas_dsl.studies.compare import read_cv
    from scnas_dsl.studies.cv import CV_MARKER

    folder = tmp_path / "cv"
    folder.mkdir()
    (folder / CV_MARKER).write_text("scnas cv\ngenotype\n")
    good = {"label_names": ["heart"], "folds_run": [0], "folds_total": 1,
            "case_scores": [{"case": "a", "fold": 0, "dice": {"heart": 0.9}}]}
    for broken in ([1, 2], {**good, "case_scores": [{"case": "a", "fold": "zero", "dice": {"heart": 0.9}}]},
                   {**good, "label_names": "heart", "case_scores": 3}):
        (folder / "cv_summary.json").write_text(_json.dumps(broken))
        with pytest.raises(RunError, match=r"cv_summary.json: not a cross-validation summary.*(case_scores|label|the file)"):
            read_cv(folder, "x")
    (folder / "cv_summary.json").write_text(_json.dumps(good))
    assert read_cv(folder, "x").fold_of == {"a": 0}
