"""Which weights predict and cv score: the last by default (no model selection on validation, as the paper),
the best only when asked, and always labelled; runs stopped before a checkpoint exists say what to do."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from scnas_dsl.prediction.predict import predict_run
from scnas_dsl.studies import cv as cv_module
from scnas_dsl.training.checkpoint import load_checkpoint, save_checkpoint
from scnas_dsl.training.config import TrainConfig
from scnas_dsl.training.retrain import run_train
from tests.helpers import heart_cases, invoke

pytestmark = pytest.mark.xdist_group("run_cli")

BASELINE = Path(__file__).resolve().parents[2] / "specs" / "baselines" / "unet3d.scn"
TINY = dict(batch_size=2, patch=(16, 16, 16), stem_width=4, batches_per_epoch=1, device="cpu", progress=False,
            augment=False)


def constant_weights(state: dict, label: int) -> dict:
    """``state`` with a head that predicts ``label`` at every voxel (weights 0, a bias of +-10)."""
    model = dict(state["model"])
    model["head.conv.weight"] = torch.zeros_like(model["head.conv.weight"])
    model["head.conv.bias"] = torch.tensor([10.0, -10.0] if label == 0 else [-10.0, 10.0])
    return {**state, "model": model}


def make_last_and_best_differ(run: Path) -> None:
    """last.pt predicts background everywhere, best.pt foreground everywhere: a prediction shows its source."""
    for name, label in (("last", 0), ("best", 1)):
        path = run / "checkpoints" / f"{name}.pt"
        save_checkpoint(path, constant_weights(load_checkpoint(path), label))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("checkpoints")
    raw, pre_root = heart_cases(root)
    return {"root": root, "raw": raw, "pre": pre_root}


@pytest.mark.slow
def test_predict_uses_the_last_weights_unless_asked_and_labels_them(data: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = TrainConfig(genotype=str(BASELINE), data=str(data["pre"]), out=str(run), epochs=2, val_every=2, **TINY)
    assert run_train(cfg, stop_after_epochs=1) is None  # stopped after epoch 1 of 2, before any validation
    image = sorted((data["raw"] / "imagesTr").iterdir())[0]

    # a run stopped before its first validation has no best weights: the message names the file and the way out
    code, output = invoke("predict", run, "--input", image, "--output", tmp_path / "p0", "--checkpoint", "best",
                          "--device", "cpu", "--quiet")
    assert code == 1 and "best.pt" in output and "--checkpoint last" in output and "--resume" in output
    # its last weights (a training state, kind "train") load, labelled with the epoch they reached
    code, output = invoke("predict", run, "--input", image, "--output", tmp_path / "p0", "--device", "cpu", "--quiet")
    assert code == 0, output
    assert "last weights, after epoch 1" in output
    record = json.loads((tmp_path / "p0" / "prediction.json").read_text())
    assert (record["checkpoint"], record["epoch"], record["selected_on_validation"]) == ("last", 1, False)
    assert record["cases"] == [image.name.removesuffix(".nii.gz")]

    assert run_train(cfg, resume=True) is not None  # epoch 2, validated: best.pt now exists
    make_last_and_best_differ(run)
    code, output = invoke("predict", run, "--input", image, "--output", tmp_path / "last", "--device", "cpu",
                          "--quiet")
    assert code == 0, output
    assert not np.asarray(nib.load(str(tmp_path / "last" / image.name)).dataobj).any()  # last.pt's background
    record = json.loads((tmp_path / "last" / "prediction.json").read_text())
    assert (record["checkpoint"], record["file"], record["epoch"], record["step"]) == ("last", "checkpoints/last.pt",
                                                                                       2, 0)
    made = predict_run(run, [image], tmp_path / "api", device="cpu", progress=False)  # the Python API's default
    assert made.weights.checkpoint == "last"
    assert not np.asarray(nib.load(str(made.files[0])).dataobj).any()
    code, output = invoke("predict", run, "--input", image, "--output", tmp_path / "best", "--checkpoint", "best",
                          "--device", "cpu", "--quiet")
    assert code == 0, output
    # best.pt's foreground, everywhere inside the cropped region that the network sees
    assert np.asarray(nib.load(str(tmp_path / "best" / image.name)).dataobj).mean() > 0.5
    record = json.loads((tmp_path / "best" / "prediction.json").read_text())
    assert (record["checkpoint"], record["epoch"], record["selected_on_validation"]) == ("best", 2, True)
    assert record["validation_dice"] is not None and "chosen on the validation cases" in record["label"]
    assert "chosen on the validation cases" in output

    # one folder, one set of weights: best's predictions are not mixed into last's without --force
    other = sorted((data["raw"] / "imagesTr").iterdir())[1]
    code, output = invoke("predict", run, "--input", other, "--output", tmp_path / "last", "--checkpoint", "best",
                          "--device", "cpu", "--quiet")
    assert code == 1 and "other weights" in output and "--force" in output

    (run / "checkpoints" / "last.pt").unlink()
    code, output = invoke("predict", run, "--input", image, "--output", tmp_path / "p1", "--device", "cpu", "--quiet")
    assert code == 1 and "last.pt" in output and "--resume" in output


@pytest.mark.slow
def test_cv_scores_the_last_weights_unless_asked_and_labels_the_table(data: dict[str, Path], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    trained: list[str] = []

    def train_then_make_the_checkpoints_differ(cfg: TrainConfig, **kwargs: object) -> object:
        result = run_train(cfg, **kwargs)  # type: ignore[arg-type]
        make_last_and_best_differ(Path(cfg.out))  # type: ignore[arg-type]
        trained.append(str(cfg.out))
        return result

    monkeypatch.setattr(cv_module, "run_train", train_then_make_the_checkpoints_differ)
    out = tmp_path / "cv"
    options = ["--data", data["pre"], "--out", out, "--fold", "0", "--epochs", "1", "--val-every", "1",
               "--stem-width", "4", "--patch", "16", "16", "16", "--batch-size", "2", "--batches-per-epoch", "1",
               "--device", "cpu", "--quiet", "--no-augment"]
    code, output = invoke("cv", BASELINE, *options)
    assert code == 0, output
    assert "weights: the last of each fold" in output
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["checkpoint"] == "last" and summary["weights"]["0"]["checkpoint"] == "last"
    assert summary["mean_dice"]["left atrium"] == 0.0  # last.pt predicts background: the reference is missed
    rows = list(csv.DictReader((out / "cv_summary.csv").open()))
    assert [(r["fold"], r["checkpoint"], r["epoch"]) for r in rows] == [
        ("0", "last", "1"), ("mean", "last", ""), ("std", "last", ""), ("all", "last", "")]

    # the same folds scored with the best weights: no retraining (last.pt says the fold is done), labelled
    code, output = invoke("cv", BASELINE, *options, "--resume", "--checkpoint", "best")
    assert code == 0, output
    assert trained == [str(out / "fold_0")]
    assert "weights: the best of each fold by validation Dice" in output and "optimistic" in output
    summary = json.loads((out / "cv_summary_best.json").read_text())
    assert summary["checkpoint"] == "best" and summary["weights"]["0"]["selected_on_validation"] is True
    assert summary["mean_dice"]["left atrium"] > 0.0  # best.pt predicts foreground everywhere
    assert {r["checkpoint"] for r in csv.DictReader((out / "cv_summary_best.csv").open())} == {"best"}
    # the last weights' results are still there, untouched
    assert json.loads((out / "cv_summary.json").read_text())["checkpoint"] == "last"
    assert {r["checkpoint"] for r in csv.DictReader((out / "cv_summary.csv").open())} == {"last"}
    assert (out / "fold_0" / "validation").is_dir() and (out / "fold_0" / "validation_best").is_dir()
    # a folder scnas cv did not make is never written into, whatever the flags
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "cv_summary.csv").write_text("my table\n")
    for flag in ("--force", "--resume"):
        code, output = invoke("cv", BASELINE, *[mine if o == out else o for o in options], flag)
        assert code == 1 and "not a folder scnas cv made" in output, output
    assert (mine / "cv_summary.csv").read_text() == "my table\n"

    # the Python API's default
    cfg = TrainConfig(genotype=str(BASELINE), data=str(data["pre"]), epochs=1, val_every=1, **TINY)
    result = cv_module.run_cv(cfg, out, [0], resume=True)
    assert trained == [str(out / "fold_0")]
    assert result.checkpoint == "last" and result.weights[0].checkpoint == "last"
    assert result.pooled.mean_dice()["left atrium"] == 0.0
