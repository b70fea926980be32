"""Cross-validation splits: deterministic, recorded, nnU-Net's file honoured, small data sets handled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scnas_dsl.data.preprocess import Preprocessed, preprocess_dataset
from scnas_dsl.data.splits import _old_scnas_folds, get_fold, load_folds, make_folds, split_for_search
from scnas_dsl.data.synth import synthesize
from scnas_dsl.errors import DataError


@pytest.fixture(scope="module")
def heart6(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("splits") / "heart6", task="heart", cases=6, shape=(16, 16, 16))


@pytest.fixture
def pre(heart6: Path, tmp_path: Path) -> Preprocessed:
    return preprocess_dataset(heart6, out=tmp_path / "pre", spacing=None, progress=False)


def nnunet_folds(ids: list[str]) -> list[dict[str, list[str]]]:
    """What nnU-Net v2's ``generate_crossval_split(sorted ids, seed=12345, n_splits=5)`` writes, with
    scikit-learn itself (a test dependency only)."""
    from sklearn.model_selection import KFold

    ids = sorted(ids)
    kfold = KFold(n_splits=5, shuffle=True, random_state=12345)
    return [{"train": [ids[i] for i in tr], "val": [ids[i] for i in te]} for tr, te in kfold.split(ids)]


ODD_NAMES = ["Case 10", "case_2", "ÄRM-01", "a.b", "Z", "liver_7", "_x", "10", "9", "hepatic vessel 003"]


@pytest.mark.parametrize("n", [5, 6, 13, 20, 64, 484])
def test_default_folds_are_nnunets(n: int) -> None:
    ids = [f"case_{i:03d}" for i in range(n)]
    rng = np.random.default_rng(n)
    shuffled = [ids[i] for i in rng.permutation(n)]  # the order given does not matter: ids are sorted first
    assert make_folds(shuffled) == nnunet_folds(ids)
    folds = make_folds(ids)
    assert sorted(c for f in folds for c in f["val"]) == ids
    for fold in folds:
        assert sorted(fold["train"] + fold["val"]) == ids and not set(fold["train"]) & set(fold["val"])
    assert sorted((len(f["val"]) for f in folds), reverse=True) == [len(f["val"]) for f in folds]


def test_default_folds_are_nnunets_for_odd_names_and_other_seeds() -> None:
    from sklearn.model_selection import KFold

    assert make_folds(ODD_NAMES) == nnunet_folds(ODD_NAMES)
    ids = sorted(ODD_NAMES)
    for seed in (0, 1, 2**31 - 1):
        kfold = KFold(n_splits=5, shuffle=True, random_state=seed)
        assert make_folds(ODD_NAMES, seed=seed) == [
            {"train": [ids[i] for i in tr], "val": [ids[i] for i in te]} for tr, te in kfold.split(ids)]


@pytest.mark.parametrize("n", [1, 2, 4])
def test_fewer_than_five_cases_is_an_error_as_in_nnunet(n: int) -> None:
    # nnU-Net's KFold(n_splits=5) refuses fewer than five cases; scnas says so and names the way out
    with pytest.raises(DataError, match=f"at least 5 training cases \\(got {n}\\).*splits_final.json in the data set"):
        make_folds([f"c{i}" for i in range(n)])


def test_search_split_is_four_to_one() -> None:
    train = [f"c{i}" for i in range(10)]
    weight, arch = split_for_search(train, seed=0, fold=1)
    assert (len(weight), len(arch)) == (8, 2) and sorted(weight + arch) == train
    assert split_for_search(train, seed=0, fold=1) == (weight, arch)
    assert split_for_search(["a"], seed=0, fold=0) == (["a"], ["a"])
    assert split_for_search(["a", "b"], seed=0, fold=0)[1] in (["a"], ["b"])


def test_default_folds_of_a_data_set_are_nnunets_with_a_four_to_one_search_split(pre: Preprocessed) -> None:
    folds, source = load_folds(pre)
    assert folds == nnunet_folds(pre.case_ids) and source == pre.root / "splits_final.json"
    for k in range(5):
        fold = get_fold(pre, k)
        assert (fold.train, fold.val) == (folds[k]["train"], folds[k]["val"])
        # 6 cases: 4 or 5 training cases per fold, of which round(n / 5) = 1 trains the architecture
        assert len(fold.arch_part) == 1 and len(fold.weight_part) == len(fold.train) - 1
        assert sorted(fold.weight_part + fold.arch_part) == fold.train


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
    good.write_text(json.dumps([{"train": ["heart_001", "heart_002"], "val": ["heart_000"]}]))
    fold = get_fold(pre, 0, splits_file=good)
    assert fold.val == ["heart_000"] and fold.source == good
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"train": ["heart_001", "nobody"], "val": ["heart_000"]}]))
    with pytest.raises(DataError, match="bad.json: fold 0 names case.*nobody"):
        get_fold(pre, 0, splits_file=bad)
    overlap = tmp_path / "overlap.json"
    overlap.write_text(json.dumps([{"train": ["heart_001", "heart_000"], "val": ["heart_000"]}]))
    with pytest.raises(DataError, match="in both train and val: heart_000"):
        get_fold(pre, 0, splits_file=overlap)
    broken = tmp_path / "broken.json"
    broken.write_text('{"train": []}')
    with pytest.raises(DataError, match="expected a non-empty list"):
        get_fold(pre, 0, splits_file=broken)
    with pytest.raises(DataError, match="not found"):
        get_fold(pre, 0, splits_file=tmp_path / "missing.json")


def test_recorded_splits_that_no_longer_fit_are_an_error(pre: Preprocessed) -> None:
    assert len(load_folds(pre)[0]) == 5
    (pre.root / "splits_final.json").write_text(json.dumps([{"train": ["heart_000"], "val": ["heart_001"]}]))
    with pytest.raises(DataError, match="data set changed. Delete this file"):
        get_fold(pre, 0)


@pytest.mark.parametrize("seed", [12345, 7])
def test_folds_recorded_by_an_older_scnas_are_not_used_silently(pre: Preprocessed, seed: int) -> None:
    """A cache written before the switch to nnU-Net's folds holds the old rule's folds: refused with the way
    out, never used as if they were nnU-Net's; once deleted, nnU-Net's folds are made."""
    recorded = pre.root / "splits_final.json"
    old = _old_scnas_folds(pre.case_ids, seed)
    assert old != make_folds(pre.case_ids, seed)
    recorded.write_text(json.dumps(old))
    with pytest.raises(DataError, match="older scnas.*Delete this file.*splits_final.json, where a splits file"):
        get_fold(pre, 0, seed=seed)
    recorded.unlink()
    assert load_folds(pre, seed)[0] == make_folds(pre.case_ids, seed)
    assert get_fold(pre, 0, seed=seed).val == make_folds(pre.case_ids, seed)[0]["val"]
    # a file of the user's own folds in the same place is used exactly
    mine = [{"train": pre.case_ids[2:], "val": pre.case_ids[:2]}, {"train": pre.case_ids[:2], "val": pre.case_ids[2:]}]
    recorded.write_text(json.dumps(mine))
    assert load_folds(pre, seed)[0] == mine
