"""``scnas cv SPACE`` (a search per fold, on that fold's training cases only), resuming it, the leakage
warning of ``scnas cv GENOTYPE``, and ``scnas compare`` on two real cross-validations; tiny sizes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from scnas_dsl.loader import load
from scnas_dsl.stopping import RunInterrupted
from scnas_dsl.studies import cv as cv_module
from tests.helpers import heart_cases, invoke, tiny_space

BASELINES = Path(__file__).resolve().parents[2] / "specs" / "baselines"
TRAIN = ["--epochs", "1", "--stem-width", "4", "--patch", "16", "16", "16", "--batch-size", "2",
         "--batches-per-epoch", "1", "--device", "cpu", "--quiet", "--no-augment", "--no-mirror"]
SEARCH = ["--search-epochs", "1", "--search-batch-size", "2", "--search-patch", "16", "16", "16",
          "--search-stem-width", "4", "--search-batches-per-epoch", "1"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Five generated heart-like cases (five folds of one validation case), preprocessed, and a tiny space."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cv_space")
    data, pre_root = heart_cases(root)
    spec = tiny_space(root)
    return {"root": root, "pre": pre_root, "spec": spec}


@pytest.mark.slow
@pytest.mark.xdist_group("cv_space")
def test_cv_of_a_space_searches_each_fold_apart_and_resumes(workspace: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cv"
    searched: list[int] = []
    trained: list[str] = []
    real_search, real_train = cv_module.run_search, cv_module.run_train

    def fold_of(cfg) -> int:  # type: ignore[no-untyped-def]
        return int(Path(cfg.out).parent.name.removeprefix("fold_"))  # OUT/fold_K/search

    def search_stopped_in_fold_1(cfg, **kwargs):  # type: ignore[no-untyped-def]
        if fold_of(cfg) == 1:  # Ctrl-C during fold 1's search, after fold 0 is done
            raise RunInterrupted("stopped by SIGINT; continue with scnas search ... --resume")
        searched.append(fold_of(cfg))
        return real_search(cfg, **kwargs)

    def train(cfg, **kwargs):  # type: ignore[no-untyped-def]
        trained.append(Path(cfg.out).relative_to(out).as_posix() if out in Path(cfg.out).parents else cfg.out)
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(cv_module, "run_search", search_stopped_in_fold_1)
    monkeypatch.setattr(cv_module, "run_train", train)
    options = ["--data", workspace["pre"], "--out", out, "--fold", "0", "--fold", "1", *TRAIN, *SEARCH]
    code, output = invoke("cv", workspace["spec"], *options)
    assert code == 130 and f"scnas cv ... --out {out} --resume" in output, output
    assert (searched, trained) == ([0], ["fold_0/train"])

    def search(cfg, **kwargs):  # type: ignore[no-untyped-def]
        searched.append(fold_of(cfg))
        return real_search(cfg, **kwargs)

    monkeypatch.setattr(cv_module, "run_search", search)
    code, output = invoke("cv", workspace["spec"], *options, "--resume")
    assert code == 0, output
    assert (searched, trained) == ([0, 1], ["fold_0/train", "fold_1/train"])  # fold 0 was neither searched nor
    # trained again
    assert "(2 of 5 folds: 0, 1)" in output  # the terminal table says which folds its mean covers
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["mode"] == "space" and summary["folds_run"] == [0, 1] and summary["leakage"] is None
    for fold in (0, 1):
        search_split = json.loads((out / f"fold_{fold}" / "search" / "split.json").read_text())
        train_split = json.loads((out / f"fold_{fold}" / "train" / "split.json").read_text())
        seen = set(search_split["weight_part"]) | set(search_split["arch_part"])
        assert seen == set(train_split["train"]) and not seen & set(train_split["val"])  # the fold's own cases
        assert json.loads((out / f"fold_{fold}" / "train" / "config.json").read_text())["genotype"] == str(
            out / f"fold_{fold}" / "search" / "genotype.scn")
        assert load(out / "genotypes" / f"fold_{fold}.scn").genotype()[1].name == f"tiny_fold{fold}"
        assert [r["case"] for r in summary["case_scores"] if r["fold"] == fold] == train_split["val"]
        assert (out / f"fold_{fold}" / "validation" / f"{train_split['val'][0]}.nii.gz").is_file()
    assert (out / "genotypes" / "genotypes.png").stat().st_size > 10_000
    assert "mean ± sd (2 of 5 folds)" in (out / "cv_summary.md").read_text()

    # fold 0's genotype cross-validated on fold 1: its search trained on fold 1's validation case
    code, output = invoke("cv", out / "genotypes" / "fold_0.scn", "--data", workspace["pre"], "--out",
                          tmp_path / "leaky", "--fold", "1", *TRAIN)
    assert code == 0, output
    assert "warning:" in output and "fold 1 (1 of 1 cases)" in output and "scnas cv SPACE" in output
    leak = json.loads((tmp_path / "leaky" / "cv_summary.json").read_text())["leakage"]
    assert leak["folds"] == {"1": {"seen": 1, "validation_cases": 1}}
    changed = [o if o != "4" or options[i - 1] != "--search-stem-width" else "8" for i, o in enumerate(options)]
    code, output = invoke("cv", workspace["spec"], *changed, "--resume")
    assert code == 1 and "other settings" in output, output  # a finished search is not kept under new settings
    assert searched == [0, 1]


@pytest.mark.slow
@pytest.mark.xdist_group("cv_compare")  # apart from the test above: they share no files (each worker makes its data)
def test_compare_two_real_cross_validations(workspace: dict[str, Path], tmp_path: Path) -> None:
    for name in ("unet3d", "resunet3d"):
        code, output = invoke("cv", BASELINES / f"{name}.scn", "--data", workspace["pre"], "--out", tmp_path / name,
                              *TRAIN)
        assert code == 0, output
        assert "warning" not in output  # hand-written baselines: no search, no leakage
    code, output = invoke("compare", tmp_path / "unet3d", tmp_path / "resunet3d", "--names", "unet,resunet",
                          "-o", tmp_path / "report")
    assert code == 0, output
    assert "note:" not in output  # the same data and settings: nothing to note
    settings = json.loads((tmp_path / "unet3d" / "cv_summary.json").read_text())["settings"]
    assert settings["data"]["name"] == "SynthHeart" and settings["data"]["path"] == str(
        Path(json.loads((workspace["pre"] / "preprocessed.json").read_text())["dataset"]["source_root"]).resolve())
    assert (settings["mirror"], settings["stem_width"], settings["epochs"], settings["patch"]) == (
        False, 4, 1, [16, 16, 16])
    assert len(settings["spacing"]) == 3 and set(settings["per_fold"]) == {"0", "1", "2", "3", "4"}
    rows = {r["run"]: r for r in csv.DictReader((tmp_path / "report" / "report.csv").open())}
    cases = {r["case"]: r for r in csv.DictReader((tmp_path / "unet3d" / "cv_cases.csv").open())}
    other = {r["case"]: r for r in csv.DictReader((tmp_path / "resunet3d" / "cv_cases.csv").open())}
    assert len(cases) == 5 and set(cases) == set(other)
    diffs = [float(other[c]["left atrium"]) - float(cases[c]["left atrium"]) for c in cases]
    assert float(rows["resunet"]["mean_difference"]) == pytest.approx(sum(diffs) / 5, abs=1e-5)
    assert rows["resunet"]["pairs"] == "5" and rows["unet"]["pairs"] == ""
    assert (tmp_path / "report" / "box_left_atrium.png").is_file()
    assert "| unet | 5 |" in (tmp_path / "report" / "report.md").read_text()
