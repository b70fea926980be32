"""``scnas export``: a trained run to ONNX (static and dynamic, run in onnxruntime) and to torch.export, each
compared with PyTorch; a genotype file with a state dict; a run with deep supervision and attention gates;
clear messages for bad inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from scnas_dsl.cli import app
from scnas_dsl.deployment.export import TOLERANCE
from scnas_dsl.prediction.predict import load_trained
from scnas_dsl.training.config import TrainConfig
from scnas_dsl.training.retrain import run_train
from tests.helpers import heart_cases

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("export")]

SPECS = Path(__file__).resolve().parents[2] / "specs"
BASELINE = SPECS / "baselines" / "uresnet_paper.scn"
PLAIN = SPECS / "baselines" / "unet3d.scn"
TINY = dict(batch_size=1, patch=(16, 16, 16), stem_width=4, batches_per_epoch=1, device="cpu", progress=False,
            augment=False, epochs=1, val_every=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    raw, pre_root = heart_cases(root)
    out = {"root": root}
    for name, spec in (("plain", PLAIN), ("ds", BASELINE)):
        out[name] = root / f"run_{name}"
        run_train(TrainConfig(genotype=str(spec), data=str(pre_root), out=str(out[name]), fold=0, **TINY))
    return out


def _export(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["export", *args])
    return result.exit_code, result.output


def _reference(run: Path, shape: tuple[int, ...], which: str = "last") -> tuple[np.ndarray, np.ndarray]:
    x = torch.randn((1, 1, *shape), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return x.numpy(), load_trained(run, which).network.eval()(x).numpy()


def _onnx_run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]


def test_onnx_static_and_dynamic(runs: dict[str, Path]) -> None:
    import onnx

    static = runs["root"] / "static.onnx"
    code, output = _export(str(runs["plain"]), "--format", "onnx", "-o", str(static))
    assert code == 0, output
    assert "onnxruntime vs PyTorch at 16x16x16: max abs difference" in output
    model = onnx.load(str(static))
    onnx.checker.check_model(model)
    assert any(o.domain in ("", "ai.onnx") and o.version == 17 for o in model.opset_import)
    x, expected = _reference(runs["plain"], (16, 16, 16))
    assert np.abs(_onnx_run(static, x) - expected).max() <= TOLERANCE
    record = json.loads(static.with_name("static.onnx.json").read_text())
    assert record["input"]["shape"] == [1, 1, 16, 16, 16] and record["checks"][0]["max_abs_difference"] <= TOLERANCE

    dynamic = runs["root"] / "dynamic.onnx"
    code, output = _export(str(runs["plain"]), "--format", "onnx", "-o", str(dynamic), "--dynamic")
    assert code == 0, output
    for shape in ((16, 16, 16), (32, 32, 32), (32, 16, 24)):
        x, expected = _reference(runs["plain"], shape)
        got = _onnx_run(dynamic, x)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= TOLERANCE, shape


def test_torch_export_loads_back(runs: dict[str, Path]) -> None:
    path = runs["root"] / "model.pt2"
    code, output = _export(str(runs["plain"]), "--format", "torch-export", "-o", str(path), "--dynamic")
    assert code == 0, output
    program = torch.export.load(str(path)).module()
    for shape in ((16, 16, 16), (32, 32, 16)):
        x, expected = _reference(runs["plain"], shape)
        with torch.no_grad():
            got = program(torch.from_numpy(x)).numpy()
        assert np.abs(got - expected).max() <= TOLERANCE, shape


def test_deep_supervision_and_gates_export(runs: dict[str, Path]) -> None:
    assert json.loads((runs["ds"] / "network.json").read_text())["deep_supervision"]
    path = runs["root"] / "ds.onnx"
    code, output = _export(str(runs["ds"]), "--format", "onnx", "-o", str(path), "--dynamic", "--checkpoint", "best")
    assert code == 0, output
    x, expected = _reference(runs["ds"], (32, 16, 16), "best")
    got = _onnx_run(path, x)
    assert got.shape == (1, 2, 32, 16, 16)  # the full-resolution logits only
    assert np.abs(got - expected).max() <= TOLERANCE
    code, output = _export(str(runs["ds"]), "--format", "torch-export", "-o", str(runs["root"] / "ds.pt2"))
    assert code == 0, output


def test_genotype_with_state_dict(runs: dict[str, Path]) -> None:
    state = runs["root"] / "state.pt"
    network = load_trained(runs["ds"]).network
    torch.save(network.state_dict(), state)
    path = runs["root"] / "geno.onnx"
    code, output = _export(str(runs["ds"] / "genotype.scn"), "--weights", str(state), "--in-channels", "1",
                           "--classes", "2", "--stem-width", "4", "--patch", "16", "16", "16",
                           "--format", "onnx", "-o", str(path))
    assert code == 0, output
    x, expected = _reference(runs["ds"], (16, 16, 16))
    assert np.abs(_onnx_run(path, x) - expected).max() <= TOLERANCE
    # a wrong stem width: the weights do not fit, a message
    code, output = _export(str(runs["ds"] / "genotype.scn"), "--weights", str(state), "--in-channels", "1",
                           "--classes", "2", "--stem-width", "8", "--patch", "16", "16", "16",
                           "--format", "onnx", "-o", str(runs["root"] / "bad.onnx"))
    assert code == 1 and "does not fit" in output and "Traceback" not in output


def test_bad_inputs(runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root = runs["root"]
    code, output = _export(str(root / "data"), "--format", "onnx", "-o", str(root / "x.onnx"))
    assert code == 1 and "not a folder written by `scnas train`" in output
    code, output = _export(str(root / "nothing"), "--format", "onnx", "-o", str(root / "x.onnx"))
    assert code == 2 and "no such run folder or genotype file" in output
    code, output = _export(str(runs["plain"]), "--format", "onnx", "-o", str(root / "x.onnx"), "--patch", "20",
                           "16", "16")
    assert code == 1 and "not divisible by 8" in output
    code, output = _export(str(runs["plain"]), "--format", "tflite", "-o", str(root / "x.onnx"))
    assert code == 2 and "choose onnx, torch-export or monai-bundle" in output
    existing = root / "exists.onnx"
    existing.write_text("")
    code, output = _export(str(runs["plain"]), "--format", "onnx", "-o", str(existing))
    assert code == 2 and "--force" in output
    code, output = _export(str(runs["plain"] / "genotype.scn"), "--format", "onnx", "-o", str(root / "x.onnx"))
    assert code == 2 and "--weights" in output
    monkeypatch.setitem(sys.modules, "onnx", None)  # onnx not installed
    code, output = _export(str(runs["plain"]), "--format", "onnx", "-o", str(root / "y.onnx"))
    assert code == 1 and "pip install 'scnas_dsl[export]'" in output and "Traceback" not in output
    assert not (root / "x.onnx").exists() and not (root / "y.onnx").exists()


def test_force_never_replaces_an_input_or_a_file_export_did_not_write(runs: dict[str, Path]) -> None:
    run = runs["plain"]
    weights = (run / "checkpoints" / "last.pt").read_bytes()
    genotype = (run / "genotype.scn").read_text()
    for target in (run / "checkpoints" / "last.pt", run / "genotype.scn", run):
        code, output = _export(str(run), "--format", "onnx", "-o", str(target), "--force")
        assert code == 1 and "one of this command's inputs" in output and "Traceback" not in output, target
    assert (run / "checkpoints" / "last.pt").read_bytes() == weights and (run / "genotype.scn").read_text() == genotype
    # the record (<-o>.json) would replace a data set's dataset.json: refused, with or without --force
    dataset = runs["root"] / "Task99" / "dataset.json"
    dataset.parent.mkdir()
    dataset.write_text('{"name": "mine"}')
    for force in ([], ["--force"]):
        code, output = _export(str(run), "--format", "onnx", "-o", str(dataset.with_suffix("")), *force)
        assert code != 0 and "dataset.json" in output, output
    assert dataset.read_text() == '{"name": "mine"}' and not dataset.with_suffix("").exists()


def test_export_nnunet_never_replaces_its_genotype(runs: dict[str, Path], tmp_path: Path) -> None:
    genotype = tmp_path / "g.scn"
    genotype.write_text((runs["plain"] / "genotype.scn").read_text().replace('import "space.scn"', f'import "{runs["plain"] / "space.scn"}"'))
    plans = tmp_path / "plans.json"
    plans.write_text('{"configurations": {"3d_fullres": {"patch_size": [16, 16, 16]}}}')
    before = genotype.read_text()
    result = CliRunner().invoke(app, ["export-nnunet", str(genotype), "--plans", str(plans), "-o", str(genotype),
                                      "--force"])
    assert result.exit_code == 1 and "one of this command's inputs" in result.output
    assert genotype.read_text() == before


def test_an_opset_torch_cannot_use_is_a_message(runs: dict[str, Path]) -> None:
    out = runs["root"] / "opset5.onnx"
    code, output = _export(str(runs["plain"]), "--format", "onnx", "-o", str(out), "--opset", "5")
    assert code == 1 and "--opset 5" in output and "Traceback" not in output
    assert not out.exists()


def test_no_command_writes_into_a_data_set(runs: dict[str, Path]) -> None:
    dataset = runs["root"] / "data"  # the generated data set the runs trained on (dataset.json, imagesTr/)
    assert (dataset / "dataset.json").is_file()
    code, output = _export(str(runs["plain"]), "--format", "onnx", "-o", str(dataset / "net.onnx"))
    assert code == 1 and "lies inside the data set" in output and not (dataset / "net.onnx").exists()
    spec = Path(__file__).resolve().parents[2] / "specs" / "unet4cell.scn"
    result = CliRunner().invoke(app, ["sample", str(spec), "-n", "1", "-o", str(dataset / "samples")])
    assert result.exit_code == 1 and "lies inside the data set" in result.output
    assert not (dataset / "samples").exists()
