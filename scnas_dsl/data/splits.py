"""Five-fold cross-validation splits and the 4:1 split of a fold's training part for the search.

Where the folds come from, first match wins:

1. ``splits_file`` (``--splits FILE``): nnU-Net's ``splits_final.json`` format, a list of
   ``{"train": [...], "val": [...]}``, used exactly;
2. ``splits_final.json`` in the data set folder, used exactly;
3. ``splits_final.json`` next to the preprocessed data, written by an earlier call;
4. otherwise five folds made from ``seed`` over the sorted case ids and written there (3.) for every later run.
   With fewer than five cases (but at least two) there are as many folds as cases (leave one out).

Inside a fold, the training cases are split 4:1 into ``weight_part`` (trains the weights theta) and
``arch_part`` (trains the architecture alpha), from ``seed`` and the fold number; the split is recorded in
``search_splits.json`` next to the preprocessed data and reused from there. A fold with a single training case
uses it for both parts (there is nothing to split).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


def make_folds(case_ids: list[str], seed: int = 12345, folds: int = FOLDS) -> list[dict[str, list[str]]]:
    """Deterministic k-fold split of ``case_ids`` (sorted first, then shuffled by ``seed``).

    Uses ``min(folds, len(case_ids))`` folds; needs at least two cases.
    """
    ids = sorted(case_ids)
    if len(ids) < 2:
        raise DataError(f"cross-validation needs at least 2 training cases (got {len(ids)})")
    k = min(folds, len(ids))
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    chunks = [sorted(order[i::k]) for i in range(k)]
    return [{"train": sorted(set(ids) - set(chunk)), "val": chunk} for chunk in chunks]


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


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


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
        if covered == known:
            return folds, recorded
        raise DataError(
            f"{recorded}: the recorded splits cover {len(covered)} case(s) but the preprocessed data has "
            f"{len(known)}; the data set changed. Delete this file to make new splits (cross-validation "
            "results made with the old splits are then not comparable)"
        )
    folds = make_folds(pre.case_ids, seed)
    _write_json(recorded, folds)
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
        _write_json(record_path, records)
    return FoldSplit(
        fold=fold,
        train=list(entry["train"]),
        val=list(entry["val"]),
        weight_part=list(record["weight_part"]),
        arch_part=list(record["arch_part"]),
        source=source,
    )
