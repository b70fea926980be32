"""Five-fold cross-validation splits and the 4:1 split of a fold's training part for the search.

Where the folds come from, first match wins:

1. ``splits_file`` (``--splits FILE``): nnU-Net's ``splits_final.json`` format, a list of
   ``{"train": [...], "val": [...]}``, used exactly;
2. ``splits_final.json`` in the data set folder, used exactly;
3. ``splits_final.json`` next to the preprocessed data, written by an earlier call;
4. otherwise nnU-Net v2's five folds, written there (3.) for every later run: the sorted case ids split by
   scikit-learn's ``KFold(n_splits=5, shuffle=True, random_state=seed)`` (re-implemented here, so the folds are
   the same case for case; seed 12345 is nnU-Net's). Like nnU-Net, this needs at least five cases; a smaller
   data set needs its own splits file.

A recorded file (3.) that an scnas before the switch to nnU-Net's folds wrote (recognised by being exactly
the folds of the old rule for ``seed`` or 12345) is refused with a message: its folds differ from nnU-Net's,
and regenerating it silently could mix old and new folds within one cross-validation.

Inside a fold, the training cases are split 4:1 into ``weight_part`` (trains the weights theta) and
``arch_part`` (trains the architecture alpha), from ``seed`` and the fold number; the split is recorded in
``search_splits.json`` next to the preprocessed data and reused from there. A fold with a single training case
uses it for both parts (there is nothing to split).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scnas_dsl.data.files import write_json
from scnas_dsl.data.preprocess import Preprocessed
from scnas_dsl.errors import DataError

FOLDS = 5
SPLITS_FILE = "splits_final.json"
SEARCH_SPLITS_FILE = "search_splits.json"


@dataclass(frozen=True)
class FoldSplit:
    """The case ids of one fold: ``train``/``val``, and ``train`` split into ``weight_part``/``arch_part``."""

    fold: int
    train: list[str]
    val: list[str]
    weight_part: list[str]
    arch_part: list[str]
    source: Path


#: nnU-Net v2's seed of the default folds (``generate_crossval_split(..., seed=12345)``).
NNUNET_SEED = 12345


def kfold_test_indices(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """The validation indices of each fold, as scikit-learn's ``KFold(folds, shuffle=True,
    random_state=seed).split(range(n))`` makes them: ``arange(n)`` shuffled by numpy's legacy
    ``RandomState(seed)``, cut into consecutive runs of which the first ``n % folds`` are one longer; each
    returned sorted (KFold yields indices in increasing order)."""
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(folds, n // folds, dtype=int)
    sizes[: n % folds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def make_folds(case_ids: list[str], seed: int = NNUNET_SEED, folds: int = FOLDS) -> list[dict[str, list[str]]]:
    """nnU-Net v2's k-fold split of ``case_ids``: sorted, then scikit-learn's ``KFold(folds, shuffle=True,
    random_state=seed)`` (see :func:`kfold_test_indices`). ``train`` and ``val`` keep the sorted order.

    Needs at least ``folds`` cases, as nnU-Net (scikit-learn refuses fewer).
    """
    ids = sorted(set(case_ids))
    if len(ids) < folds:
        raise DataError(
            f"nnU-Net's {folds}-fold cross-validation needs at least {folds} training cases (got {len(ids)}); "
            "with fewer, write the folds yourself in nnU-Net's format "
            '([{"train": [...], "val": [...]}, ...]) as splits_final.json in the data set folder (used exactly)'
        )
    result = []
    for test in kfold_test_indices(len(ids), folds, seed):
        val = set(test.tolist())
        result.append({"train": [c for i, c in enumerate(ids) if i not in val], "val": [ids[i] for i in test]})
    return result


def _old_scnas_folds(ids: list[str], seed: int) -> list[dict[str, list[str]]]:
    """The folds that scnas made before it followed nnU-Net (``default_rng(seed)`` permutation, dealt round
    robin, leave one out under five cases): only to recognise a file recorded by such a version."""
    ids = sorted(ids)
    k = min(FOLDS, len(ids))
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    chunks = [sorted(order[i::k]) for i in range(k)]
    return [{"train": sorted(set(ids) - set(chunk)), "val": chunk} for chunk in chunks]


def _written_by_old_scnas(folds: list[dict[str, list[str]]], ids: list[str], seed: int) -> bool:
    """Whether recorded ``folds`` are exactly what an older scnas made for ``ids`` with ``seed`` or nnU-Net's
    seed (and not also nnU-Net's folds, which they could be by chance for very few cases)."""
    seeds = {seed, NNUNET_SEED}
    if len(ids) < 2 or not any(folds == _old_scnas_folds(ids, s) for s in seeds):
        return False
    return len(ids) < FOLDS or all(folds != make_folds(ids, s) for s in seeds)


def _read_splits(path: Path, known: set[str]) -> list[dict[str, list[str]]]:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot be read as a splits file ({err})") from err
    if not isinstance(value, list) or not value:
        raise DataError(f'{path}: expected a non-empty list of {{"train": [...], "val": [...]}}')
    folds = []
    for n, entry in enumerate(value):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("train"), list)
            or not isinstance(entry.get("val"), list)
        ):
            raise DataError(f"{path}: fold {n} must be an object with lists 'train' and 'val'")
        unknown = sorted({str(c) for c in entry["train"] + entry["val"]} - known)
        if unknown:
            raise DataError(
                f"{path}: fold {n} names case(s) that are not in the preprocessed data: {', '.join(unknown[:5])}"
                + (" ..." if len(unknown) > 5 else "")
                + "; preprocess the data set they belong to or fix the file"
            )
        if not entry["train"]:
            raise DataError(f"{path}: fold {n} has no training cases")
        both = sorted({str(c) for c in entry["train"]} & {str(c) for c in entry["val"]})
        if both:
            raise DataError(f"{path}: fold {n} has case(s) in both train and val: {', '.join(both[:5])}")
        folds.append({"train": [str(c) for c in entry["train"]], "val": [str(c) for c in entry["val"]]})
    return folds


def load_folds(
    pre: Preprocessed, seed: int = 12345, splits_file: Path | None = None
) -> tuple[list[dict], Path]:
    """The folds for ``pre`` and the file they come from (see the module docstring for the order)."""
    known = set(pre.case_ids)
    if splits_file is not None:
        path = Path(splits_file)
        if not path.is_file():
            raise DataError(f"{path}: splits file not found")
        return _read_splits(path, known), path
    source = Path(pre.dataset.source_root) / SPLITS_FILE
    if source.is_file():
        return _read_splits(source, known), source
    recorded = pre.root / SPLITS_FILE
    if recorded.is_file():
        folds = _read_splits(recorded, known)
        covered = {c for f in folds for c in f["train"] + f["val"]}
        if _written_by_old_scnas(folds, sorted(covered), seed):
            raise DataError(
                f"{recorded}: these folds were made by an older scnas with its own rule, not nnU-Net's (the default "
                "since then). Delete this file to get nnU-Net's folds (cross-validation results made with the "
                "old folds are then not comparable: redo them), or, to keep the old folds, move it to "
                f"{Path(pre.dataset.source_root) / SPLITS_FILE}, where a splits file is used exactly"
            )
        if covered == known:
            return folds, recorded
        raise DataError(
            f"{recorded}: the recorded splits cover {len(covered)} case(s) but the preprocessed data has "
            f"{len(known)}; the data set changed. Delete this file to make new splits (cross-validation "
            "results made with the old splits are then not comparable)"
        )
    folds = make_folds(pre.case_ids, seed)
    write_json(recorded, folds)
    return folds, recorded


def split_for_search(train: list[str], seed: int, fold: int) -> tuple[list[str], list[str]]:
    """The 4:1 split of a fold's training cases into (weight_part, arch_part); deterministic."""
    ids = sorted(train)
    if len(ids) == 1:
        return ids, ids
    order = [ids[i] for i in np.random.default_rng([seed, fold]).permutation(len(ids))]
    n_arch = max(1, int(round(len(ids) / 5)))
    return sorted(order[n_arch:]), sorted(order[:n_arch])


def get_fold(pre: Preprocessed, fold: int, seed: int = 12345, splits_file: Path | None = None) -> FoldSplit:
    """Fold ``fold`` (0-based) of the cross-validation of ``pre``, with its search split recorded on disk."""
    folds, source = load_folds(pre, seed, splits_file)
    if not 0 <= fold < len(folds):
        raise DataError(
            f"{source}: fold {fold} does not exist; there are {len(folds)} folds (0 to {len(folds) - 1})"
        )
    entry = folds[fold]
    record_path = pre.root / SEARCH_SPLITS_FILE
    records: dict[str, Any] = {}
    if record_path.is_file():
        try:
            records = json.loads(record_path.read_text())
        except json.JSONDecodeError:
            records = {}  # our own file, half written by a killed run: make it again
    name = f"{source.resolve()}#fold{fold}#seed{seed}"
    record = records.get(name)
    if record is None or sorted(record["weight_part"] + record["arch_part"]) != sorted(set(entry["train"])):
        weight, arch = split_for_search(entry["train"], seed, fold)
        record = {"weight_part": weight, "arch_part": arch}
        records[name] = record
        write_json(record_path, records)
    return FoldSplit(
        fold=fold,
        train=list(entry["train"]),
        val=list(entry["val"]),
        weight_part=list(record["weight_part"]),
        arch_part=list(record["arch_part"]),
        source=source,
    )
