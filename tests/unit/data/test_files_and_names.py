"""The shared helpers of the data layer: atomic JSON writes and case names from file names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scnas_dsl import files
from scnas_dsl.data.files import atomic_write, read_json_or_none, write_json
from scnas_dsl.data.names import strip_channel_suffix, strip_nifti_ending
from scnas_dsl.data.pipeline import _case_id_of
from scnas_dsl.errors import DataError
from scnas_dsl.evaluation.metrics import case_id_of
from scnas_dsl.prediction.predict import group_cases


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_json_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    write_json(path, {"a": 1})
    write_json(path, {"a": [2, 3]})
    assert json.loads(path.read_text()) == {"a": [2, 3]} == read_json_or_none(path)
    assert path.read_text().endswith("\n")
    assert _left(tmp_path) == ["record.json"]


def test_a_failed_rename_leaves_the_old_file_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "splits_final.json"
    write_json(path, {"old": True})

    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_json(path, {"new": True})
    assert json.loads(path.read_text()) == {"old": True}
    assert _left(tmp_path) == ["splits_final.json"]


def test_a_writer_failing_halfway_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "case.image.npy"
    path.write_bytes(b"old")

    def half(handle: object) -> None:
        handle.write(b"partial")  # type: ignore[attr-defined]
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(path, half)
    assert path.read_bytes() == b"old"
    assert _left(tmp_path) == ["case.image.npy"]


def test_a_value_that_is_not_json_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    write_json(path, [1])
    with pytest.raises(TypeError):
        write_json(path, {"x": object()})
    assert json.loads(path.read_text()) == [1]
    assert _left(tmp_path) == ["record.json"]


def test_read_json_or_none_of_a_missing_or_damaged_record(tmp_path: Path) -> None:
    assert read_json_or_none(tmp_path / "missing.json") is None
    (tmp_path / "half.json").write_text('{"a": ')
    assert read_json_or_none(tmp_path / "half.json") is None


@pytest.mark.parametrize(
    ("name", "stem"),
    [("case.nii.gz", "case"), ("case.nii", "case"), ("la_003.nii.gz", "la_003"), ("case.mha", None),
     ("case.nii.gz.bak", None), (".nii.gz", "")],
)
def test_strip_nifti_ending(name: str, stem: str | None) -> None:
    assert strip_nifti_ending(name) == stem


@pytest.mark.parametrize(
    ("stem", "case"),
    [("case_0000", "case"), ("BRATS_001_0003", "BRATS_001"), ("a_0000", "a"), ("_0000", None),
     ("case_000", None), ("case-0000", None), ("case_00a0", None), ("case", None)],
)
def test_strip_channel_suffix(stem: str, case: str | None) -> None:
    assert strip_channel_suffix(stem) == case


def test_the_callers_keep_their_rules(tmp_path: Path) -> None:
    # prediction-time case ids: the channel suffix is the nnU-Net layout's only
    assert _case_id_of(Path("/x/BRATS_001_0000.nii.gz"), "nnunet") == "BRATS_001"
    assert _case_id_of(Path("/x/BRATS_001_0000.nii.gz"), "msd") == "BRATS_001_0000"
    assert _case_id_of(Path("/x/case.nii"), "nnunet") == "case"
    assert _case_id_of(Path("/x/scan.mha"), "msd") == "scan.mha"
    # scnas evaluate: file names without a NIfTI ending lose their last suffix
    assert case_id_of(Path("la_003.nii.gz")) == "la_003"
    assert case_id_of(Path("la_003.mha")) == "la_003"
    # scnas predict: nnU-Net channel files are grouped by case, other names refused
    for name in ("c1_0000.nii.gz", "c1_0001.nii.gz", "c2_0000.nii", "c2_0001.nii"):
        (tmp_path / name).write_bytes(b"")
    grouped = group_cases([tmp_path], "nnunet", 2)
    assert {case: [p.name for p in paths] for case, paths in grouped.items()} == {
        "c1": ["c1_0000.nii.gz", "c1_0001.nii.gz"], "c2": ["c2_0000.nii", "c2_0001.nii"]}
    (tmp_path / "c3.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match="<case>_0000.nii.gz"):
        group_cases([tmp_path], "nnunet", 2)
