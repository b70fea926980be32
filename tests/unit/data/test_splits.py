"""Cross-validation splits: deterministic, recorded, nnU-Net's file honoured, small data sets handled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scnas_dsl.data.preprocess import Preprocessed, preprocess_dataset
from scnas_dsl.data.splits import get_fold, load_folds, make_folds, split_for_search
from scnas_dsl.data.synth import synthesize
from scnas_dsl.errors import DataError


@pytest.fixture
def pre(brain_msd: Path, tmp_path: Path) -> Preprocessed:
    return preprocess_dataset(brain_msd, out=tmp_path / "pre", spacing=None, progress=False)


def test_make_folds_is_a_deterministic_partition() -> None:
    ids = [f"case_{i:02d}" for i in range(13)]
    folds = make_folds(ids, seed=1)
    assert folds == make_folds(list(reversed(ids)), seed=1)
    assert folds != make_folds(ids, seed=2)
    assert len(folds) == 5
    assert sorted(c for f in folds for c in f["val"]) == ids
    for fold in folds:
        assert sorted(fold["train"] + fold["val"]) == ids and not set(fold["train"]) & set(fold["val"])
    assert sorted(len(f["val"]) for f in folds) == [2, 2, 3, 3, 3]


@pytest.mark.parametrize("n", [2, 3, 5])
def test_few_cases_leave_one_out(n: int) -> None:
    folds = make_folds([f"c{i}" for i in range(n)])
    assert len(folds) == n and all(len(f["val"]) == 1 for f in folds)


def test_one_case_is_too_few() -> None:
    with pytest.raises(DataError, match="at least 2"):
        make_folds(["only"])


def test_search_split_is_four_to_one() -> None:
    train = [f"c{i}" for i in range(10)]
    weight, arch = split_for_search(train, seed=0, fold=1)
    assert (len(weight), len(arch)) == (8, 2) and sorted(weight + arch) == train
    assert split_for_search(train, seed=0, fold=1) == (weight, arch)
    assert split_for_search(["a"], seed=0, fold=0) == (["a"], ["a"])
    assert split_for_search(["a", "b"], seed=0, fold=0)[1] in (["a"], ["b"])


def test_generated_splits_are_recorded_and_reused(pre: Preprocessed) -> None:
    fold = get_fold(pre, 1, seed=5)
    recorded = pre.root / "splits_final.json"
    assert fold.source == recorded and recorded.is_file()
    assert json.loads(recorded.read_text())[1]["val"] == fold.val
    assert sorted(fold.weight_part + fold.arch_part) == sorted(fold.train)
    assert not set(fold.weight_part) & set(fold.arch_part)
    # a later call with another seed keeps the recorded folds (comparable cross-validation)
    assert get_fold(pre, 1, seed=99).val == fold.val
    assert get_fold(pre, 1, seed=5) == fold
    assert (pre.root / "search_splits.json").is_file()


def test_nnunet_splits_file_in_the_data_set_is_used_exactly(brain_msd: Path, copy_of, tmp_path: Path) -> None:
    root = copy_of(brain_msd)
    splits = [
        {"train": ["brain_000", "brain_001", "brain_002"], "val": ["brain_003"]},
        {"train": ["brain_003"], "val": ["brain_000", "brain_001", "brain_002"]},
    ]
    (root / "splits_final.json").write_text(json.dumps(splits))
    pre = preprocess_dataset(root, out=tmp_path / "pre", spacing=None, progress=False)
    folds, source = load_folds(pre)
    assert folds == splits and source == root / "splits_final.json"
    fold = get_fold(pre, 1)
    assert fold.train == ["brain_003"] and fold.val == splits[1]["val"]
    assert fold.weight_part == fold.arch_part == ["brain_003"]
    with pytest.raises(DataError, match="fold 2 does not exist; there are 2 folds"):
        get_fold(pre, 2)


def test_splits_option_file_wins_and_is_checked(pre: Preprocessed, tmp_path: Path) -> None:
    good = tmp_path / "mine.json"
    good.write_text(json.dumps([{"train": ["brain_001", "brain_002"], "val": ["brain_000"]}]))
    fold = get_fold(pre, 0, splits_file=good)
    assert fold.val == ["brain_000"] and fold.source == good
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"train": ["brain_001", "nobody"], "val": ["brain_000"]}]))
    with pytest.raises(DataError, match="bad.json: fold 0 names case.*nobody"):
        get_fold(pre, 0, splits_file=bad)
    overlap = tmp_path / "overlap.json"
    overlap.write_text(json.dumps([{"train": ["brain_001", "brain_000"], "val": ["brain_000"]}]))
    with pytest.raises(DataError, match="in both train and val: brain_000"):
        get_fold(pre, 0, splits_file=overlap)
    broken = tmp_path / "broken.json"
    broken.write_text('{"train": []}')
    with pytest.raises(DataError, match="expected a non-empty list"):
        get_fold(pre, 0, splits_file=broken)
    with pytest.raises(DataError, match="not found"):
        get_fold(pre, 0, splits_file=tmp_path / "missing.json")


def test_recorded_splits_that_no_longer_fit_are_an_error(tmp_path: Path) -> None:
    root = synthesize(tmp_path / "ds", task="heart", cases=3, shape=(16, 16, 16))
    pre = preprocess_dataset(root, out=tmp_path / "pre", spacing=None, progress=False)
    assert len(load_folds(pre)[0]) == 3
    folds = json.loads((pre.root / "splits_final.json").read_text())
    folds[0]["val"] = []
    (pre.root / "splits_final.json").write_text(json.dumps(folds))
    (pre.root / "splits_final.json").write_text(json.dumps([{"train": ["heart_000"], "val": ["heart_001"]}]))
    with pytest.raises(DataError, match="data set changed. Delete this file"):
        get_fold(pre, 0)
