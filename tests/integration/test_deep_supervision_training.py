"""Retraining with deep supervision and attention gates: the heads train, the run records them, prediction
rebuilds the same network and uses the full-resolution head; the command line switches them off."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pytest
import torch
from typer.testing import CliRunner

from scnas_dsl.cli import app
from scnas_dsl.loader import load
from scnas_dsl.nn.network import build_network
from scnas_dsl.prediction.predict import load_trained
from scnas_dsl.training.checkpoint import load_checkpoint
from scnas_dsl.training.config import TrainConfig
from scnas_dsl.training.retrain import run_train
from tests.helpers import heart_cases

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("deep_supervision")]

BASELINE = Path(__file__).resolve().parents[2] / "specs" / "baselines" / "uresnet_paper.scn"
TINY = dict(batch_size=2, patch=(16, 16, 16), stem_width=4, batches_per_epoch=2, device="cpu", progress=False,
            augment=False, epochs=2, val_every=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ds")
    raw, pre_root = heart_cases(root)
    return {"root": root, "raw": raw, "pre": pre_root}


def test_heads_train_and_prediction_rebuilds_the_network(data: dict[str, Path]) -> None:
    out = data["root"] / "run_ds"
    cfg = TrainConfig(genotype=str(BASELINE), data=str(data["pre"]), out=str(out), fold=0, **TINY)
    run_train(cfg)
    first = (out / "log.txt").read_text().splitlines()[0]
    assert "deep supervision at levels 0, 1, 2" in first
    assert "stem width 4: --stem-width" in first
    recipe = json.loads((out / "network.json").read_text())
    assert recipe["deep_supervision"] == [1, 2]
    trained = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    # the heads' weights moved from their initial values: only the deep-supervision loss reaches them
    space, geno = load(BASELINE).genotype()
    torch.manual_seed(cfg.seed)
    initial = build_network(space, geno, in_channels=1, num_classes=2, stem_width=4).state_dict()
    for key in ("ds_heads.1.conv.weight", "ds_heads.2.conv.weight"):
        assert not torch.equal(trained[key], initial[key]), key
    assert any(".gate." in k for k in trained)
    model = load_trained(out)  # strict load: the heads and gates are rebuilt from the run's record
    assert model.network.plan.deep_supervision == (1, 2)
    assert model.network.deep_supervision is False  # prediction: the full-resolution head only
    # predict through the command line: one label map per case on the case's own grid
    image = sorted((data["raw"] / "imagesTr").glob("*.nii.gz"))[0]
    result = CliRunner().invoke(app, ["predict", str(out), "--input", str(image), "--output",
                                      str(data["root"] / "pred_ds"), "--quiet", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    (written,) = sorted((data["root"] / "pred_ds").glob("*.nii.gz"))
    assert nib.load(str(written)).shape == nib.load(str(image)).shape[:3]


def test_the_switch_turns_the_heads_off(data: dict[str, Path]) -> None:
    out = data["root"] / "run_plain"
    result = CliRunner().invoke(app, [
        "train", str(BASELINE), "--data", str(data["pre"]), "--out", str(out), "--epochs", "1",
        "--batch-size", "2", "--patch", "16", "16", "16", "--stem-width", "4", "--batches-per-epoch", "1",
        "--device", "cpu", "--no-augment", "--quiet", "--no-deep-supervision", "--no-amp"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "network.json").read_text())["deep_supervision"] == []
    assert json.loads((out / "config.json").read_text())["deep_supervision"] is False
    assert json.loads((out / "config.json").read_text())["amp"] is False  # --no-amp reaches the settings
    assert not any(k.startswith("ds_heads") for k in load_checkpoint(out / "checkpoints" / "last.pt")["model"])
    assert load_trained(out).network.plan.deep_supervision == ()


def test_a_hand_written_network_trains_at_its_own_width(data: dict[str, Path]) -> None:
    # no --stem-width: the baseline's file defines its network, so its width (32) is kept, not the paper's
    # retraining width for searched genotypes (68)
    out = data["root"] / "run_width"
    cfg = TrainConfig(genotype=str(BASELINE), data=str(data["pre"]), out=str(out), fold=0,
                      **{**{k: v for k, v in TINY.items() if k != "stem_width"}, "epochs": 1, "batches_per_epoch": 1})
    assert cfg.stem_width is None
    run_train(cfg)
    assert json.loads((out / "network.json").read_text())["stem_width"] == 32
    assert json.loads((out / "config.json").read_text())["stem_width"] == 32
    assert "stem width 32: the spec's" in (out / "log.txt").read_text().splitlines()[0]


@pytest.mark.parametrize("switch", ["--no-deep-supervision", "--deep-supervision"])
def test_compile_a_run_emits_the_network_it_trained(data: dict[str, Path], switch: str) -> None:
    # the baseline trained without its heads, or the plain example genotype trained with heads: the source
    # emitted from the run folder loads the run's weights with strict=True and computes what predict computes
    import types

    spec = BASELINE if switch == "--no-deep-supervision" else BASELINE.parents[1] / "genotypes" / "example.scn"
    out = data["root"] / f"run_emit{switch}"
    runner = CliRunner()
    result = runner.invoke(app, [
        "train", str(spec), "--data", str(data["pre"]), "--out", str(out), "--epochs", "1", "--batch-size", "2",
        "--patch", "16", "16", "16", "--stem-width", "4", "--batches-per-epoch", "1", "--device", "cpu",
        "--no-augment", "--quiet", "--no-mirror", switch])
    assert result.exit_code == 0, result.output
    source = data["root"] / f"net{switch}.py"
    result = runner.invoke(app, ["compile", str(out), "--emit", "torch", "-o", str(source)])
    assert result.exit_code == 0, result.output
    module = types.ModuleType("emitted")
    exec(compile(source.read_text(), str(source), "exec"), module.__dict__)  # noqa: S102
    network = module.Network().eval()
    network.load_state_dict(load_checkpoint(out / "checkpoints" / "last.pt")["model"], strict=True)
    trained = load_trained(out).network.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(network(x), trained(x), atol=1e-4, rtol=1e-4)
    assert bool(len(network.ds_heads)) == (switch == "--deep-supervision")
