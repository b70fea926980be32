"""A target spacing much finer than the data's gets a note (not an error) in plan, preprocess, search, train."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from scnas_dsl.data.resample import spacing_note
from scnas_dsl.data.synth import synthesize
from scnas_dsl.training.config import SearchConfig
from scnas_dsl.training.data_context import open_data
from scnas_dsl.training.device import Runtime
from tests.helpers import scnas_process


def test_the_note_says_how_many_more_voxels_and_names_median_spacing() -> None:
    note = spacing_note((2.0, 2.0, 2.0), (0.7, 0.7, 0.7))
    assert note is not None and "23.3 times as many voxels" in note and "`--median-spacing`" in note
    assert "along D, H, W" in note
    lung = spacing_note((0.8, 0.8, 2.5), (0.7, 0.7, 0.7))
    assert lung is not None and "along W:" in lung and "4.7 times" in lung
    assert spacing_note((1.4, 1.4, 1.4), (0.7, 0.7, 0.7)) is None  # a factor of 2 exactly: no note
    assert spacing_note((1.0, 1.0, 1.0), (2.0, 2.0, 2.0)) is None  # coarser: no note


@pytest.fixture(scope="module")
def heart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 1.25 x 1.25 x 2 mm: 0.5 mm is 2.5 and 4 times finer
    return synthesize(tmp_path_factory.mktemp("note") / "heart", task="heart", cases=5, shape=(16, 16, 16), seed=2)


def _scnas(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return scnas_process("data", *args, env={"SCNAS_CACHE": str(cache)})


def test_plan_and_preprocess_print_the_note(heart: Path, tmp_path: Path) -> None:
    raw_plan = _scnas("plan", str(heart), cache=tmp_path)  # raw data: what the default 0.7 mm would do
    assert raw_plan.returncode == 0, raw_plan.stderr
    assert "finer than the data's median spacing 1.25 x 1.25 x 2 mm" in raw_plan.stderr
    done = _scnas("preprocess", str(heart), "--spacing", "0.5", "0.5", "0.5", "--no-progress", cache=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "25.0 times as many voxels" in done.stderr and "`--median-spacing`" in done.stderr
    planned = _scnas("plan", str(heart), cache=tmp_path)
    assert planned.returncode == 0 and "25.0 times as many voxels" in planned.stderr
    median = _scnas("preprocess", str(heart), "--median-spacing", "--no-progress", cache=tmp_path)
    assert median.returncode == 0 and "note:" not in median.stderr


def test_search_and_train_print_the_note_when_they_open_the_data(
    heart: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCNAS_CACHE", str(tmp_path))
    runtime = Runtime(device=torch.device("cpu"))
    cfg = SearchConfig(spec="unused.scn", data=str(heart), spacing=(0.5, 0.5, 0.5), progress=False)
    open_data(cfg, runtime)
    assert "25.0 times as many voxels" in capsys.readouterr().err
    open_data(cfg.model_copy(update={"spacing": None}), runtime)
    assert "note:" not in capsys.readouterr().err
