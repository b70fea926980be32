"""The trainer's commands end to end on generated data, at tiny sizes (width 4, patch 16^3, few steps)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from scnas_dsl.data.loader import ignore_stop_signals
from scnas_dsl.data.synth import synthesize
from scnas_dsl.errors import RunError
from scnas_dsl.loader import load
from scnas_dsl.nn import build_supernet
from scnas_dsl.stopping import RunInterrupted
from scnas_dsl.studies.demo import small_space
from scnas_dsl.training import retrain as retrain_module
from scnas_dsl.training import search as search_module
from scnas_dsl.training.config import SearchConfig, TrainConfig
from scnas_dsl.training.retrain import run_train
from scnas_dsl.training.search import run_search
from tests.helpers import TINY, generated_set, invoke

pytestmark = pytest.mark.xdist_group("run_cli")

TINY_SPACE = small_space("tiny", levels=1, ops=("conv3", "dil2", "maxpool", "skip", "none"), stem_width=4)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated heart-like data (6 cases, 24^3), preprocessed once at its own voxel size, and the space."""
    torch.set_num_threads(1)  # tiny tensors: threads only cost, and other tests share the cores
    root = tmp_path_factory.mktemp("run_cli")
    data, pre = generated_set(root, "heart", cases=6)
    spec = root / "tiny.scn"
    spec.write_text(TINY_SPACE)
    return {"root": root, "data": data, "pre": pre, "spec": spec}


@pytest.mark.slow
def test_search_train_predict_evaluate(workspace: dict[str, Path]) -> None:
    root, data = workspace["root"], workspace["data"]
    code, output = invoke("search", workspace["spec"], "--data", workspace["pre"], "--out", root / "search",
                          "--epochs", "2", *TINY)
    assert code == 0, output
    run = root / "search"
    for name in ("config.json", "space.scn", "genotype.scn", "metrics.jsonl", "alphas.jsonl", "environment.json",
                 "checkpoints/last.pt", "plots/losses.png", "plots/temperature.png", "plots/probabilities.png",
                 "plots/cells.png"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["weight_optimizer"] == {"lr": 0.025, "betas": [0.9, 0.999], "weight_decay": 0.0}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert records[1]["temperature"] < records[0]["temperature"]
    first = records[0]
    for key in ("weight_loss", "arch_loss", "lr_weights", "lr_arch", "temperature", "mean_entropy", "edges",
                "changed_edges", "parameter_free_share", "argmax_loss", "argmax_dice", "sampled_loss",
                "sampled_dice", "elapsed", "estimated_total", "sample_counts", "genotype"):
        assert key in first, key
    assert set(first["edges"]["enc"]["in0->n0"]) == {"op", "p", "entropy"}
    for name in ("gap.png", "entropy.png"):
        assert (run / "plots" / name).is_file(), name
    log = (run / "log.txt").read_text()
    assert "\r" not in log and "search epoch 1/2 |" in log and "search epoch 2/2 |" in log
    counts = first["sample_counts"]["enc"]["in0->n0"]
    assert sum(counts.values()) == 2 * 2 * 2  # 2 steps x 2 forwards x a pair of operations
    space, genotype = load(run / "genotype.scn").genotype()
    assert space.name == "tiny" and genotype.name == "tiny_fold0"

    code, output = invoke("search", workspace["spec"], "--data", workspace["pre"], "--out", run, "--epochs", "2",
                          *TINY)
    assert code == 1 and "already exists" in output and "--resume" in output

    code, output = invoke("train", run / "genotype.scn", "--data", workspace["pre"], "--out", root / "train",
                          "--epochs", "2", "--val-every", "1", *TINY)
    assert code == 0, output
    assert (root / "train" / "checkpoints" / "best.pt").is_file()
    records = [json.loads(line) for line in (root / "train" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["val_dice"] <= 1.0 for r in records)

    images = sorted((data / "imagesTr").iterdir())[:2]
    code, output = invoke("predict", root / "train", "--input", images[0], "--input", images[1], "--output",
                          root / "pred", "--probabilities", "--mirror", "--device", "cpu", "--quiet")
    assert code == 0, output
    for image in images:
        original = nib.load(str(image))
        predicted = nib.load(str(root / "pred" / image.name))
        assert predicted.shape == original.shape[:3]  # the inverse of preprocessing: the original grid
        assert np.allclose(predicted.affine, original.affine)
        probs = nib.load(str(root / "pred" / "probabilities" / image.name))
        assert probs.shape == (*original.shape[:3], 2)
        assert np.allclose(np.asarray(probs.dataobj).sum(-1), 1.0, atol=1e-4)
    code, output = invoke("predict", root / "train", "--input", images[0], "--output", root / "pred", "--quiet")
    assert code == 1 and "overwrite" in output
    # never into the data set, not even with --force: images and reference labels stay as they were
    before = {p: p.read_bytes() for p in sorted((data / "labelsTr").iterdir()) + images}
    for target, message in ((data / "imagesTr", "folder of the input images"),
                            (data / "labelsTr", "inside the data set"), (data, "inside the data set")):
        code, output = invoke("predict", root / "train", "--input", data / "imagesTr", "--output", target,
                              "--force", "--quiet")
        assert code == 1 and message in output, output
    assert all(p.read_bytes() == content for p, content in before.items())
    assert not (data / "prediction.json").exists()
    code, output = invoke("predict", root / "train", "--input", images[0], "--output", root / "b0", "--batch-size",
                          "0", "--quiet")
    assert code == 1 and "at least 1" in output and "Traceback" not in output
    broken = root / "broken" / "heart_099.nii.gz"  # unreadable: the call fails on its first case
    broken.parent.mkdir()
    broken.write_bytes(b"not a nifti file")
    code, output = invoke("predict", root / "train", "--input", broken, "--output", root / "none", "--quiet")
    assert code == 1 and "Traceback" not in output, output
    assert not (root / "none").exists()  # no empty folder left behind
    code, output = invoke("predict", root / "train", "--input", images[0], "--output", root / "constant", "--quiet",
                          "--blend", "constant", "--checkpoint", "last")
    assert code == 0, output
    assert nib.load(str(root / "constant" / images[0].name)).shape == nib.load(str(images[0])).shape[:3]

    code, output = invoke("evaluate", "--pred", root / "pred", "--ref", data / "labelsTr", "--dataset", data)
    assert code == 0, output
    result = json.loads((root / "pred" / "dice.json").read_text())
    assert set(result["mean_dice"]) == {"left atrium"} and result["cases"] == 2
    assert 0.0 <= result["foreground_mean"] <= 1.0
    # without --dataset, the dataset.json above labelsTr names the labels
    code, output = invoke("evaluate", "--pred", root / "pred", "--ref", data / "labelsTr", "--out", root / "auto")
    assert code == 0, output
    assert set(json.loads((root / "auto" / "dice.json").read_text())["mean_dice"]) == {"left atrium"}


@pytest.mark.slow
def test_resume_after_a_signal_ends_like_an_uninterrupted_search(workspace: dict[str, Path], tmp_path: Path) -> None:
    def config(out: str) -> SearchConfig:
        return SearchConfig(spec=str(workspace["spec"]), data=str(workspace["pre"]), out=str(tmp_path / out),
                            epochs=2, batch_size=2, patch=(16, 16, 16), stem_width=4, batches_per_epoch=2,
                            device="cpu", progress=False)

    whole = run_search(config("whole"))
    assert whole is not None

    def terminate(epoch: int, step: int) -> None:
        if (epoch, step) == (0, 0):
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler stopping the job

    with pytest.raises(RunInterrupted, match="epoch 1, step 1.*--resume"):
        run_search(config("parts"), on_step=terminate)
    assert run_search(config("parts"), resume=True, stop_after_epochs=1) is None  # ends after epoch 1 of 2
    parts = run_search(config("parts"), resume=True)
    assert parts is not None
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "parts" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert parts.genotype == whole.genotype
    assert (tmp_path / "whole" / "genotype.scn").read_text() == (tmp_path / "parts" / "genotype.scn").read_text()
    history = (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [0, 1]


def two_epoch_baseline(workspace: dict[str, Path], out: Path) -> TrainConfig:
    """Two tiny epochs of the 3D U-Net baseline, validated after each (the resume tests' run)."""
    spec = Path(__file__).resolve().parents[2] / "specs" / "baselines" / "unet3d.scn"
    return TrainConfig(genotype=str(spec), data=str(workspace["pre"]), out=str(out), epochs=2, batch_size=2,
                       patch=(16, 16, 16), stem_width=4, batches_per_epoch=2, device="cpu", progress=False,
                       val_every=1)


def test_a_resumed_retraining_ends_like_an_uninterrupted_one(workspace: dict[str, Path], tmp_path: Path) -> None:
    def config(out: str) -> TrainConfig:
        return two_epoch_baseline(workspace, tmp_path / out)

    whole = run_train(config("whole"))
    assert run_train(config("parts"), stop_after_epochs=1) is None
    parts = run_train(config("parts"), resume=True)
    assert whole is not None and parts is not None
    assert (parts.best_dice, parts.best_epoch) == (whole.best_dice, whole.best_epoch)
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "parts" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stop_during_validation_is_answered_between_windows_and_resumes(
        workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def config(out: str) -> TrainConfig:
        return two_epoch_baseline(workspace, tmp_path / out)

    whole = run_train(config("whole"))
    real = retrain_module.sliding_window_inference
    windows_after_signal: list[int] = []

    def terminated(model: torch.nn.Module, *args: object, **kwargs: object) -> torch.Tensor:
        os.kill(os.getpid(), signal.SIGTERM)  # a batch system stopping the job as validation begins
        model.register_forward_hook(lambda *_: windows_after_signal.append(1))
        return real(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(retrain_module, "sliding_window_inference", terminated)
    with pytest.raises(RunInterrupted, match="during the validation of epoch 1.*--resume"):
        run_train(config("parts"))
    assert windows_after_signal == []  # abandoned before the next batch of windows, not after the case
    state = torch.load(tmp_path / "parts" / "checkpoints" / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 2)  # every step of epoch 1 done, its validation not
    monkeypatch.setattr(retrain_module, "sliding_window_inference", real)
    parts = run_train(config("parts"), resume=True)
    assert whole is not None and parts is not None
    assert (parts.best_dice, parts.best_epoch) == (whole.best_dice, whole.best_epoch)
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "parts" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [0, 1]


def test_loader_workers_ignore_stop_signals() -> None:
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        ignore_stop_signals(0)  # the one worker policy: SIGINT ignored, the first SIGTERM too, a later one ends it
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        first = signal.getsignal(signal.SIGTERM)
        assert callable(first) and first not in (signal.SIG_DFL, signal.SIG_IGN)
        first(signal.SIGTERM, None)  # the process group's SIGTERM: the worker goes on
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_a_nan_loss_stops_the_run_with_advice(workspace: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_loss(logits: torch.Tensor, target: torch.Tensor, **options: object) -> torch.Tensor:
        return logits.sum() * float("nan")

    monkeypatch.setattr(search_module, "soft_jaccard_loss", nan_loss)
    cfg = SearchConfig(spec=str(workspace["spec"]), data=str(workspace["pre"]), out=str(tmp_path / "nan"),
                       epochs=1, batch_size=2, patch=(16, 16, 16), stem_width=4, batches_per_epoch=2, device="cpu",
                       progress=False)
    with pytest.raises(RunError, match=r"weight loss became nan at epoch 1, step 1 of 2.*lower learning rate"
                                       r".*scnas data check"):
        run_search(cfg)


def test_an_architecture_warm_up_trains_only_the_weights_first(workspace: dict[str, Path], tmp_path: Path) -> None:
    cfg = SearchConfig(spec=str(workspace["spec"]), data=str(workspace["pre"]), out=str(tmp_path / "warm"),
                       epochs=3, batch_size=2, patch=(16, 16, 16), stem_width=4, batches_per_epoch=2, device="cpu",
                       progress=False, augment=False, arch_warmup_epochs=1, gap_batches=1)
    result = run_search(cfg)
    assert result is not None
    alphas = [json.loads(line) for line in (tmp_path / "warm" / "alphas.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in (tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()]
    initial = build_supernet(load(workspace["spec"]).space(), in_channels=1, num_classes=2, stem_width=4, seed=0)
    for key, alpha in initial.arch.items():  # the warm-up epoch left the logits as they were made
        assert torch.equal(torch.tensor(alphas[0]["logits"][key]), alpha.detach()), key
    assert alphas[1]["logits"] != alphas[0]["logits"]  # then they learn
    assert [r["warm_up"] for r in records] == [True, False, False]
    # the temperature is annealed over the epochs after the warm-up: initial during it and at its end
    assert records[0]["temperature"] == records[1]["temperature"] == 5.0 and records[2]["temperature"] == 0.1
    assert records[0]["weight_loss"] != records[1]["weight_loss"]
    with pytest.raises(RunError, match="leaves no epoch"):
        run_search(cfg.model_copy(update={"arch_warmup_epochs": 3, "out": str(tmp_path / "none")}))
    # resuming a finished run with the same --epochs runs nothing and says so
    assert run_search(cfg, resume=True) is not None
    assert "done 3 epoch(s) already, --epochs is 3: nothing more to run" in (tmp_path / "warm" / "log.txt").read_text()
    assert len((tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()) == 3


def test_bad_inputs_are_clear_errors(workspace: dict[str, Path], tmp_path: Path) -> None:
    code, output = invoke("search", workspace["spec"], "--data", workspace["pre"], "--out", tmp_path / "x",
                          "--patch", "15", "16", "16", "--epochs", "1", "--device", "cpu", "--quiet")
    assert code == 1 and "patch 15" in output
    assert not (tmp_path / "x").exists()  # bad settings leave no run folder behind
    code, output = invoke("train", tmp_path / "missing.scn", "--data", workspace["pre"], "--out", tmp_path / "y")
    assert code == 1 and "missing.scn" in output
    code, output = invoke("search", workspace["spec"], "--data", workspace["pre"], "--out", tmp_path / "z",
                          "--resume", "--device", "cpu")
    assert code == 1 and "nothing" not in output and "no scnas run here to resume" in output
    code, output = invoke("predict", tmp_path, "--input", workspace["data"] / "imagesTr", "--output", tmp_path / "p")
    assert code == 1 and "not a folder written by `scnas train`" in output


@pytest.mark.slow
def test_transfer_and_cross_validation_of_a_baseline(workspace: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A genotype found on the 1-channel heart task retrained on a 4-channel, 3-label task (the paper's
    transfer), and a hand-designed baseline cross-validated there (nnU-Net layout: one file per channel).
    The raw data set is preprocessed by the commands themselves, into the cache."""
    monkeypatch.setenv("SCNAS_CACHE", str(tmp_path / "cache"))
    brain = synthesize(tmp_path / "brain", "brain", cases=5, shape=(24, 24, 24), seed=1, layout="nnunet")
    code, output = invoke("search", workspace["spec"], "--data", workspace["pre"], "--out", tmp_path / "heart",
                          "--epochs", "1", *TINY)
    assert code == 0, output
    code, output = invoke("train", tmp_path / "heart" / "genotype.scn", "--data", brain, "--out",
                          tmp_path / "transfer", "--epochs", "1", "--median-spacing", *TINY)
    assert code == 0, output
    network = json.loads((tmp_path / "transfer" / "network.json").read_text())
    assert (network["genotype"], network["in_channels"], network["num_classes"]) == ("tiny_fold0", 4, 4)

    spec = Path(__file__).resolve().parents[2] / "specs" / "baselines" / "unet3d.scn"
    code, output = invoke("cv", spec, "--data", brain, "--out", tmp_path / "cv", "--fold", "0", "--fold", "1",
                          "--epochs", "1", "--median-spacing", *TINY)
    assert code == 0, output
    assert "all" in output and "edema" in output
    summary = json.loads((tmp_path / "cv" / "cv_summary.json").read_text())
    assert set(summary["folds"]) == {"0", "1"}
    assert set(summary["mean_dice"]) == {"edema", "non-enhancing tumor", "enhancing tumour"}
    assert summary["cases"] == 2  # five cases make five folds of one validation case; two folds were run
    for fold in (0, 1):
        assert len(list((tmp_path / "cv" / f"fold_{fold}" / "validation").glob("*.nii.gz"))) == 1
    assert any((tmp_path / "cache").iterdir())


@pytest.mark.slow
def test_demo_with_a_small_budget(tmp_path: Path) -> None:
    code, output = invoke("demo", tmp_path / "demo", "--quick", "--device", "cpu", "--quiet")
    assert code == 0, output
    assert "foreground mean Dice" in output
    assert "evaluated:   the last weights, after epoch 1" in output  # no choice of weights on the scored cases
    record = json.loads((tmp_path / "demo" / "predictions" / "prediction.json").read_text())
    assert record["checkpoint"] == "last" and record["mirror"] is True  # as scnas predict by default
    assert json.loads((tmp_path / "demo" / "train" / "config.json").read_text())["mirror_validation"] is False
    assert (tmp_path / "demo" / "search" / "genotype.scn").is_file()
    assert json.loads((tmp_path / "demo" / "predictions" / "dice.json").read_text())["cases"] >= 1
    code, output = invoke("demo", tmp_path / "demo", "--quick")
    assert code == 1 and "already exists" in output


def test_evaluate_command_with_labels_and_another_output_folder(tmp_path: Path) -> None:
    pred, ref, out = tmp_path / "pred", tmp_path / "ref", tmp_path / "scores"
    pred.mkdir()
    ref.mkdir()
    volume = np.zeros((6, 6, 6), np.uint8)
    volume[:3] = 1
    volume[4:, 4:, 4:] = 2
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(ref / "case_a.nii.gz"))
    guess = volume.copy()
    guess[guess == 2] = 0  # label 2 missed
    nib.save(nib.Nifti1Image(guess, np.eye(4)), str(pred / "case_a.nii.gz"))
    code, output = invoke("evaluate", "--pred", pred, "--ref", ref, "--labels", "1", "--labels", "2", "--out", out)
    assert code == 0, output
    assert "label_1" in output and "label_2" in output
    result = json.loads((out / "dice.json").read_text())
    assert result["mean_dice"] == {"label_1": 1.0, "label_2": 0.0} and result["foreground_mean"] == 0.5
    assert not (pred / "dice.json").exists()
    nib.save(nib.Nifti1Image(guess[:5], np.eye(4)), str(pred / "case_a.nii.gz"))
    code, output = invoke("evaluate", "--pred", pred, "--ref", ref)
    assert code == 1 and "case case_a" in output and "shape" in output


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(workspace: dict[str, Path], tmp_path: Path) -> None:
    """A real process and a real SIGINT: exit status 130, a checkpoint, and --resume completes the run."""
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    command = [sys.executable, "-m", "scnas_dsl", "search", str(workspace["spec"]), "--data", str(workspace["pre"]),
               "--out", str(run), *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([*command, "--epochs", "100"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (run / "metrics.jsonl").is_file() and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err[-2000:]
    assert "checkpoint saved" in err and "--resume" in err
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] >= 1
    done = subprocess.run([*command, "--epochs", str(state["epoch"] + 1), "--resume"], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load(run / "genotype.scn").genotype()[1].name == "tiny_fold0"


def test_a_stop_while_the_genotype_is_chosen_is_a_clean_stop_and_resume_chooses_again(
        workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM after the last epoch, while the self-check scores (minutes under a budget): status 130 and how
    to continue, no genotype written; --resume makes the choice."""
    run = tmp_path / "run"
    real = search_module.select_genotype

    def signalled(*args: object, **kwargs: object) -> object:
        os.kill(os.getpid(), signal.SIGTERM)  # answered at the scorer's next batch
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(search_module, "select_genotype", signalled)
    command = ("search", workspace["spec"], "--data", workspace["pre"], "--out", run, *TINY, "--epochs", "1")
    code, output = invoke(*command)
    assert code == 130, output
    assert "SIGTERM: stopped while choosing the genotype after the last epoch" in output and "--resume" in output
    assert not (run / "genotype.scn").exists()
    monkeypatch.setattr(search_module, "select_genotype", real)
    code, output = invoke(*command, "--resume")
    assert code == 0, output
    assert load(run / "genotype.scn").genotype()[1].name == "tiny_fold0"


def test_a_resume_takes_the_settings_it_is_not_given_again_from_the_run(
        workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--out RUN --resume` with only --data and a larger --epochs: the run's patch, batch, width, budget and the
    rest come from its config.json, not the defaults (which a resume would refuse as other settings)."""
    run = tmp_path / "run"
    code, output = invoke("search", workspace["spec"], "--data", workspace["pre"], "--out", run, *TINY,
                          "--epochs", "1", "--budget", "flops=1T")
    assert code == 0, output
    code, output = invoke("search", workspace["spec"], "--data", workspace["pre"], "--out", run, "--resume",
                          "--epochs", "2")
    assert code == 0, output
    assert [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    recorded = json.loads((run / "config.json").read_text())
    # the length it now runs to: a bare --resume of this run, stopped again, continues to 2 epochs, not 1
    assert recorded["budget"]["flops"] == 1e12 and recorded["epochs"] == 2
    # a setting given again that differs is still refused, naming it, before the data are prepared (minutes)
    def no_data(*_: object) -> None:
        raise AssertionError("the data were opened before the settings were checked")

    monkeypatch.setattr(search_module, "open_data", no_data)
    code, output = invoke("search", workspace["spec"], "--data", workspace["pre"], "--out", run, "--resume",
                          "--epochs", "3", "--batch-size", "4")
    assert code == 1 and "batch_size: 2 -> 4" in output, output


def test_an_edited_space_record_is_refused_by_resume_and_named_by_derive(workspace: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    """The run's space.scn with another node count: the genotype a resume writes would import it, and derive's
    supernet would not fit the checkpoint. Both say which file, in words, not a torch error."""
    run = tmp_path / "run"
    common = ("--data", workspace["pre"], "--out", run)
    code, output = invoke("search", workspace["spec"], *common, *TINY, "--epochs", "1")
    assert code == 0, output
    record = run / "space.scn"
    record.write_text(record.read_text().replace("nodes 2", "nodes 3"))
    before = (run / "genotype.scn").read_text()
    code, output = invoke("search", workspace["spec"], *common, "--resume", "--epochs", "2")
    assert code == 1 and "space.scn: is not the space 'tiny'" in output and "edited" in output, output
    assert (run / "genotype.scn").read_text() == before
    code, output = invoke("derive", run, "--select", "alpha")
    assert code == 1 and "does not fit the space of" in output and "was space.scn edited" in output, output
    assert "Error(s) in loading state_dict" not in output
    settings = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**settings, "budget": {"flops": "abc"}}))
    code, output = invoke("derive", run, "--select", "alpha")  # the setting named, not pydantic's count
    assert code == 1 and "config.json: settings this scnas cannot read (budget" in output, output
    assert "validation error for" not in output


def test_a_finished_search_resumed_with_nothing_to_run_keeps_its_choice(
        workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The choice and its self-check take minutes: a resume with no more epochs and the same --select settings
    reports the genotype it chose; other --select settings choose again."""
    run = tmp_path / "run"
    common = ("search", workspace["spec"], "--data", workspace["pre"], "--out", run)
    code, output = invoke(*common, *TINY, "--epochs", "1")
    assert code == 0, output
    before = (run / "genotype.scn").read_text()
    chosen: list[object] = []
    real = search_module.select_genotype

    def counting(*args: object, **kwargs: object) -> object:
        chosen.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(search_module, "select_genotype", counting)
    code, again = invoke(*common, "--resume")
    assert code == 0 and not chosen, again
    assert "chosen after these 1 epoch(s) already" in (run / "log.txt").read_text()  # (--quiet from the run)
    assert (run / "genotype.scn").read_text() == before
    if "self-check:" in output:  # the report is the run's, as printed the first time
        assert output.split("self-check:")[1].splitlines()[0] in again
    code, other = invoke(*common, "--resume", "--select", "sampled")
    assert code == 0 and chosen == [1], other


def test_a_training_resumed_with_an_edited_genotype_is_refused_naming_it(workspace: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    """maxpool -> avgpool changes no weight: the checkpoint would load and another network train on, silently."""
    source = Path(__file__).resolve().parents[2] / "specs" / "genotypes" / "example.scn"
    spec_dir = tmp_path / "g"
    spec_dir.mkdir()
    genotype = spec_dir / "example.scn"
    genotype.write_text(source.read_text().replace('import "../unet4cell.scn"', f'import "{source.parent.parent}/unet4cell.scn"'))
    cfg = TrainConfig(genotype=str(genotype), data=str(workspace["pre"]), out=str(tmp_path / "run"), epochs=1,
                      batch_size=2, patch=(16, 16, 16), stem_width=4, batches_per_epoch=1, device="cpu",
                      progress=False, val_every=1, augment=False)
    assert run_train(cfg) is not None
    genotype.write_text(genotype.read_text().replace("maxpool", "avgpool", 1))
    with pytest.raises(RunError, match=r"example\.scn: not the network this run trains .*genotype\.scn.*edited"):
        run_train(cfg.model_copy(update={"epochs": 2}), resume=True)
