"""The cache cannot hand out mixed data: every case is checked against the manifest on load, and writers lock."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from scnas_dsl.data import preprocess
from scnas_dsl.data.preprocess import Preprocessed, preprocess_dataset
from scnas_dsl.data.synth import synthesize
from scnas_dsl.errors import DataError


@pytest.fixture(scope="module")
def heart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth") / "heart", task="heart", cases=3, shape=(16, 16, 16), seed=7)


@pytest.fixture
def pre(heart: Path, tmp_path: Path) -> Preprocessed:
    return preprocess_dataset(heart, out=tmp_path / "pre", spacing=None, progress=False)


def _record(pre: Preprocessed, case_id: str) -> Path:
    return pre.root / "cases" / f"{case_id}.json"


def test_an_untouched_cache_loads(pre: Preprocessed) -> None:
    for case_id in pre.case_ids:
        image, label = pre.load(case_id)
        assert label is not None and image.shape[1:] == label.shape
        assert pre.foreground_locations(case_id)


def test_a_case_array_of_another_shape_is_refused(pre: Preprocessed) -> None:
    path = pre.root / "cases" / "heart_001.image.npy"
    np.save(path, np.zeros((1, 3, 3, 3), np.float32))
    with pytest.raises(DataError) as err:
        pre.load("heart_001")
    message = str(err.value)
    assert "case heart_001 does not match this cache's manifest preprocessed.json" in message
    assert "image of shape [1, 3, 3, 3]" in message
    assert f"Run `scnas data preprocess {pre.dataset.source_root}` again" in message
    assert pre.load("heart_000")[0].shape[0] == 1  # the others still load


def test_a_label_of_another_shape_is_refused(pre: Preprocessed) -> None:
    np.save(pre.root / "cases" / "heart_002.label.npy", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(DataError, match=r"case heart_002 does not match .*label of shape \[2, 2, 2\]"):
        Preprocessed(pre.root).load("heart_002")


def test_a_case_of_another_settings_key_is_refused(pre: Preprocessed) -> None:
    record = json.loads(_record(pre, "heart_000").read_text())
    record["key"]["settings"] = "0" * 40
    _record(pre, "heart_000").write_text(json.dumps(record))
    with pytest.raises(DataError, match=r"case heart_000 does not match .*written with settings key 000000000000"):
        pre.load("heart_000")
    with pytest.raises(DataError, match="written with settings key"):
        pre.foreground_locations("heart_000")


def test_a_case_record_of_another_shape_or_files_is_refused(pre: Preprocessed) -> None:
    path = _record(pre, "heart_001")
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "shape": [1, 2, 3]}))
    with pytest.raises(DataError, match=r"shape \[1, 2, 3\], the manifest's is"):
        pre.load("heart_001")
    record["key"]["files"][0][2] += 1  # another modification time of the image
    path.write_text(json.dumps(record))
    with pytest.raises(DataError, match="made from other versions of the case's files"):
        pre.load("heart_001")
    path.unlink()
    with pytest.raises(DataError, match=r"its record cases/heart_001.json is missing"):
        pre.load("heart_001")


def test_a_job_refuses_cases_rewritten_under_it(
    heart: Path, copy_of, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = copy_of(heart)
    job = preprocess_dataset(root, out=tmp_path / "pre", spacing=None, progress=False)
    job.load("heart_000")
    monkeypatch.setattr(preprocess, "PIPELINE_VERSION", preprocess.PIPELINE_VERSION + 1)
    again = preprocess_dataset(root, out=tmp_path / "pre", spacing=None, progress=False)
    assert len(again.redone) == 3
    with pytest.raises(DataError, match="written with settings key"):
        job.load("heart_000")  # the running job's manifest is the old one
    again.load("heart_000")  # a job started now reads the new cache


def test_a_writer_holds_the_lock(heart: Path, tmp_path: Path) -> None:
    out = tmp_path / "pre"
    out.mkdir()
    lock = FileLock(out / ".scnas-lock")
    code = (
        "from scnas_dsl.data.preprocess import preprocess_dataset; "
        f"preprocess_dataset({str(heart)!r}, out={str(out)!r}, spacing=None, progress=False)"
    )
    with lock:
        run = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        time.sleep(4.0)
        waiting = run.poll() is None
        if not waiting:
            run.wait()
    assert waiting, "preprocess ran while another process held the cache's lock"
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr
    assert "another `scnas data preprocess` is writing this folder; waiting for it" in stderr
    assert Preprocessed(out).case_ids == ["heart_000", "heart_001", "heart_002"]


def test_an_old_cache_folder_is_adopted(heart: Path, tmp_path: Path) -> None:
    out = preprocess_dataset(heart, out=tmp_path / "pre", spacing=None, progress=False).root
    (out / ".scnas-cache").write_text("")  # the empty marker of an older scnas
    assert preprocess_dataset(heart, out=out, spacing=None, progress=False).redone == []
    assert json.loads((out / ".scnas-cache").read_text()) == {"spacing": "median"}
    shutil.rmtree(out / "cases")
    assert len(preprocess_dataset(heart, out=out, spacing=None, progress=False).redone) == 3
