"""What ``scnas predict`` and ``scnas train`` do by default, as nnU-Net: test-time mirroring along every spatial
axis (``--no-mirror`` turns it off), and the label map made on the original grid from the probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from scnas_dsl.data.preprocess import (
    preprocess_image,
    restore_probabilities,
    restore_segmentation,
)
from scnas_dsl.inference.sliding_window import sliding_window_inference
from scnas_dsl.prediction.predict import load_trained, predict_run
from scnas_dsl.training.config import TrainConfig
from scnas_dsl.training.retrain import run_train
from tests.helpers import heart_cases, invoke

BASELINE = Path(__file__).resolve().parents[2] / "specs" / "baselines" / "unet3d.scn"
FLIPS = [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run trained for one step on data preprocessed to another spacing than the images' (so that the
    prediction is resampled on its way back)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predict_defaults")
    raw, pre_root = heart_cases(root, (1.0, 1.1, 1.6))
    cfg = TrainConfig(genotype=str(BASELINE), data=str(pre_root), out=str(root / "run"), epochs=1, val_every=1,
                      batch_size=2, patch=(16, 16, 16), stem_width=4, batches_per_epoch=1, device="cpu",
                      progress=False, augment=False)
    assert cfg.mirror_validation  # validation during training mirrors by default
    assert run_train(cfg) is not None
    return {"root": root, "raw": raw, "run": root / "run"}


def _by_hand(run: Path, image: Path) -> tuple[np.ndarray, np.ndarray, object]:
    """(mean of the 8 flipped predictions, the unflipped one, meta): each flip done here around the network."""
    model = load_trained(run)
    data, meta = preprocess_image([image], model.pre)
    net = model.network.eval()
    passes = []
    for flip in FLIPS:
        dims = [a + 2 for a in flip]

        def flipped(x: torch.Tensor, dims: list[int] = dims) -> torch.Tensor:
            return net(x.flip(dims)).flip(dims) if dims else net(x)

        wrapper = torch.nn.Module()
        wrapper.forward = flipped  # type: ignore[method-assign]
        wrapper.net = net
        passes.append(sliding_window_inference(wrapper, torch.from_numpy(data), model.patch, blend=model.blend,
                                               mirror=False, device="cpu").numpy())
    return np.mean(passes, axis=0), passes[0], meta


@pytest.mark.slow
def test_predict_mirrors_by_default_and_restores_from_probabilities(trained: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    image = sorted((trained["raw"] / "imagesTr").iterdir())[0]
    made = predict_run(trained["run"], [image], tmp_path / "pred", probabilities=True, device="cpu", progress=False)
    assert json.loads(made.record.read_text())["mirror"] is True
    mirrored, plain, meta = _by_hand(trained["run"], image)
    assert np.abs(mirrored - plain).max() > 1e-3  # the network is not symmetric: the flips matter

    written = nib.load(str(tmp_path / "pred" / "probabilities" / image.name)).get_fdata()
    np.testing.assert_allclose(written, restore_probabilities(mirrored, meta).get_fdata(), atol=2e-5)
    label = nib.load(str(made.files[0]))
    original = nib.load(str(image))
    assert label.shape == original.shape[:3]
    np.testing.assert_allclose(label.affine, original.affine, atol=1e-6)
    expected = np.asarray(restore_segmentation(mirrored, meta).dataobj)
    assert (np.asarray(label.dataobj) != expected).mean() < 1e-4  # float rounding may split a tie


@pytest.mark.slow
def test_no_mirror_options_of_predict_and_train(trained: dict[str, Path], tmp_path: Path) -> None:
    image = sorted((trained["raw"] / "imagesTr").iterdir())[1]
    code, output = invoke("predict", trained["run"], "--input", image, "--output", tmp_path / "plain",
                          "--probabilities", "--no-mirror", "--device", "cpu", "--quiet")
    assert code == 0, output
    assert json.loads((tmp_path / "plain" / "prediction.json").read_text())["mirror"] is False
    _, plain, meta = _by_hand(trained["run"], image)
    written = nib.load(str(tmp_path / "plain" / "probabilities" / image.name)).get_fdata()
    np.testing.assert_allclose(written, restore_probabilities(plain, meta).get_fdata(), atol=2e-5)
    code, output = invoke("predict", trained["run"], "--input", image, "--output", tmp_path / "mirrored",
                          "--device", "cpu", "--quiet")
    assert code == 0, output
    assert json.loads((tmp_path / "mirrored" / "prediction.json").read_text())["mirror"] is True

    common = ["--data", trained["root"] / "pre", "--epochs", "1", "--batches-per-epoch", "1", "--batch-size", "1",
              "--patch", "16", "16", "16", "--stem-width", "4", "--device", "cpu", "--quiet", "--no-augment"]
    for flag, expected in (("--no-mirror", False), ("--mirror", True), (None, True)):
        out = tmp_path / f"train_{flag}"
        code, output = invoke("train", BASELINE, *common, "--out", out, *([flag] if flag else []))
        assert code == 0, output
        assert json.loads((out / "config.json").read_text())["mirror_validation"] is expected


@pytest.mark.slow
def test_compile_option_of_train_and_predict(trained: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``--compile`` compiles the network (here with the ``aot_eager`` backend: inductor's C++ build takes
    minutes on the CPU) and computes what the eager network computes, in training and in prediction."""
    monkeypatch.setenv("SCNAS_COMPILE_BACKEND", "aot_eager")
    calls: list[str] = []
    real = torch.compile

    def counting(module: torch.nn.Module, **kwargs: object):  # noqa: ANN202
        calls.append(str(kwargs.get("backend")))
        return real(module, **kwargs)

    monkeypatch.setattr(torch, "compile", counting)
    common = ["--data", trained["root"] / "pre", "--epochs", "1", "--batches-per-epoch", "2", "--batch-size", "1",
              "--patch", "16", "16", "16", "--stem-width", "4", "--device", "cpu", "--quiet", "--no-augment",
              "--val-every", "5", "--seed", "3"]
    losses = {}
    for flag in ("--compile", "--no-compile"):
        out = tmp_path / flag
        code, output = invoke("train", BASELINE, *common, "--out", out, flag)
        assert code == 0, output
        assert json.loads((out / "config.json").read_text())["compile"] is (flag == "--compile")
        losses[flag] = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["train_loss"]
    assert calls == ["aot_eager"]  # only the --compile run compiled
    assert losses["--compile"] == pytest.approx(losses["--no-compile"], abs=1e-5)

    image = sorted((trained["raw"] / "imagesTr").iterdir())[2]
    for flag in ("--compile", "--no-compile"):
        code, output = invoke("predict", trained["run"], "--input", image, "--output", tmp_path / f"p{flag}",
                              "--probabilities", "--no-mirror", "--device", "cpu", "--quiet", flag)
        assert code == 0, output
    assert calls == ["aot_eager", "aot_eager"]
    compiled = nib.load(str(tmp_path / "p--compile" / "probabilities" / image.name)).get_fdata()
    eager = nib.load(str(tmp_path / "p--no-compile" / "probabilities" / image.name)).get_fdata()
    np.testing.assert_allclose(compiled, eager, atol=1e-5)


@pytest.mark.slow
def test_checkpoint_cells_option_of_train(trained: dict[str, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``scnas train --checkpoint-cells`` recomputes every cell in its backward and trains exactly as
    without (the same losses); ``auto`` (the default) leaves it off on the CPU."""
    from scnas_dsl.nn import cells

    calls = [0]
    real = cells.checkpoint

    def counting(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cells, "checkpoint", counting)
    common = ["--data", trained["root"] / "pre", "--epochs", "1", "--batches-per-epoch", "2", "--batch-size", "1",
              "--patch", "16", "16", "16", "--stem-width", "4", "--device", "cpu", "--quiet", "--no-augment",
              "--val-every", "5", "--seed", "4"]
    losses, counted = {}, {}
    for flag in ("--checkpoint-cells", None):
        out = tmp_path / str(flag)
        calls[0] = 0
        code, output = invoke("train", BASELINE, *common, "--out", out, *([flag] if flag else []))
        assert code == 0, output
        assert json.loads((out / "config.json").read_text())["checkpoint_cells"] == (True if flag else "auto")
        losses[flag], counted[flag] = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["train_loss"], calls[0]
    assert counted["--checkpoint-cells"] > 0 and counted[None] == 0
    assert losses["--checkpoint-cells"] == pytest.approx(losses[None], abs=1e-5)


def test_a_damaged_preprocessing_record_of_a_run_says_what_can_repair_it(trained: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    import shutil

    run = Path(shutil.copytree(trained["run"], tmp_path / "run"))
    (run / "preprocessing" / "preprocessed.json").write_text("{broken")
    code, output = invoke("predict", run, "--input", trained["raw"] / "imagesTr", "--output", tmp_path / "out")
    assert code == 1 and "preprocessing" in output and "cannot remake it" in output
    assert "Traceback" not in output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                                                "can't allocate memory: you tried to allocate 4000000 bytes")])
def test_a_case_out_of_memory_is_a_message_and_the_same_command_continues(
        trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: RuntimeError) -> None:
    """Out of memory on the second case (the device's, or the CPU allocator's): a message naming the case and what
    to change, the first case kept, and the same command (with --batch-size 1) does only the rest."""
    import scnas_dsl.prediction.predict as predict

    real = predict.sliding_window_inference
    calls: list[int] = []

    def second_runs_out(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise error
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(predict, "sliding_window_inference", second_runs_out)
    images = trained["raw"] / "imagesTr"
    out = tmp_path / "out"
    args = ("predict", trained["run"], "--input", images, "--output", out, "--no-mirror", "--quiet")
    code, output = invoke(*args)
    assert code == 1 and "case 'heart_001': out of memory predicting it on cpu" in output, output
    assert "--batch-size 1" in output and "network.json" in output and "the 1 case(s) before it" in output
    assert [p.name for p in out.glob("*.nii.gz")] == ["heart_000.nii.gz"]
    calls[:] = [1, 1]  # from here on every call runs
    code, output = invoke(*args, "--batch-size", "1")
    assert code == 0, output
    cases = len(list(images.glob("*.nii.gz")))
    assert len(calls) - 2 == cases - 1 and len(list(out.glob("*.nii.gz"))) == cases  # the first was kept
