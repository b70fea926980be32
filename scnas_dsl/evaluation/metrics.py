"""Dice per label and case, and the evaluation of a folder of predictions against references.

Empty masks follow nnU-Net's rule: when both the reference and the prediction of a label are empty in a
case, its Dice is undefined (NaN) and the case is left out of that label's mean; when only one of them is
empty the Dice is 0. A label whose every case is NaN has a NaN mean (``null`` in JSON).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scnas_dsl.data.names import NIFTI_ENDINGS, strip_nifti_ending
from scnas_dsl.errors import DataError
from scnas_dsl.files import write_text

AFFINE_TOLERANCE = 1e-3


def dice_per_label(prediction: np.ndarray, reference: np.ndarray, labels: Iterable[int]) -> dict[int, float]:
    """Dice of each label between two integer label maps of the same shape; NaN when both are empty."""
    if prediction.shape != reference.shape:
        raise DataError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    out: dict[int, float] = {}
    for label in labels:
        p = prediction == label
        r = reference == label
        total = int(p.sum()) + int(r.sum())
        out[int(label)] = float("nan") if total == 0 else 2.0 * int(np.logical_and(p, r).sum()) / total
    return out


def nanmean(values: Iterable[float]) -> float:
    """Mean of the values that are not NaN; NaN when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def case_id_of(path: Path) -> str:
    """``case.nii.gz`` -> ``case``."""
    stem = strip_nifti_ending(path.name)
    return path.stem if stem is None else stem


def nifti_files(folder: Path) -> dict[str, Path]:
    """``{case id: path}`` of the NIfTI files directly inside ``folder`` (hidden files skipped)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    return {case_id_of(p): p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name.endswith(NIFTI_ENDINGS)}


@dataclass
class Evaluation:
    """Dice per case and label, with the label names; means follow the module's empty-mask rule."""

    labels: dict[int, str]
    per_case: dict[str, dict[int, float]]
    missing: list[str] = field(default_factory=list)

    def mean_dice(self) -> dict[str, float]:
        """label name -> mean Dice over the cases (NaN cases left out)."""
        return {name: nanmean(scores[label] for scores in self.per_case.values())
                for label, name in self.labels.items()}

    def foreground_mean(self) -> float:
        """The mean of the labels' means (every label evaluated is a foreground label)."""
        return nanmean(self.mean_dice().values())

    def to_json(self) -> dict:
        """JSON-ready: ``mean_dice``, ``foreground_mean``, ``per_case``, ``labels``, ``empty_rule``."""
        def num(v: float) -> float | None:
            return None if math.isnan(v) else round(v, 6)

        return {
            "mean_dice": {k: num(v) for k, v in self.mean_dice().items()},
            "foreground_mean": num(self.foreground_mean()),
            "per_case": {case: {self.labels[k]: num(v) for k, v in scores.items()}
                         for case, scores in self.per_case.items()},
            "labels": {str(k): v for k, v in self.labels.items()},
            "cases": len(self.per_case),
            "references_without_prediction": self.missing,
            "empty_rule": "reference and prediction both empty: Dice undefined (null), left out of the mean",
        }

    def table(self) -> str:
        """A plain-text table: one row per case, then the mean row."""
        names = list(self.labels.values())
        width = max([len("case"), len("mean"), *(len(c) for c in self.per_case)])
        cols = [max(len(n), 6) for n in names]
        lines = ["  ".join([f"{'case':<{width}}", *(f"{n:>{w}}" for n, w in zip(names, cols, strict=True))])]
        for case, scores in self.per_case.items():
            cells = [_fmt(scores[k]) for k in self.labels]
            lines.append("  ".join([f"{case:<{width}}", *(f"{c:>{w}}" for c, w in zip(cells, cols, strict=True))]))
        means = self.mean_dice()
        lines.append("  ".join([f"{'mean':<{width}}", *(f"{_fmt(means[n]):>{w}}"
                                                         for n, w in zip(names, cols, strict=True))]))
        lines.append(f"foreground mean Dice: {_fmt(self.foreground_mean())}")
        return "\n".join(lines)

    def write(self, folder: Path) -> tuple[Path, Path]:
        """Write ``dice.csv`` and ``dice.json`` into ``folder``; returns their paths."""
        folder.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = folder / "dice.csv", folder / "dice.json"
        with csv_path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["case", *self.labels.values()])
            for case, scores in self.per_case.items():
                writer.writerow([case, *(_csv(scores[k]) for k in self.labels)])
            writer.writerow(["mean", *(_csv(v) for v in self.mean_dice().values())])
        write_text(json_path, json.dumps(self.to_json(), indent=1) + "\n")
        return csv_path, json_path


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def _csv(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6f}"


def label_names_from_dataset(dataset_folder: Path) -> dict[int, str]:
    """Foreground label names from a data set's ``dataset.json`` (either layout)."""
    from scnas_dsl.data.dataset import open_dataset

    labels = open_dataset(dataset_folder).labels
    return {k: v for k, v in labels.items() if k != 0}


def evaluate_folders(pred_dir: Path | str, ref_dir: Path | str, labels: Sequence[int] | None = None,
                     label_names: dict[int, str] | None = None) -> Evaluation:
    """Dice of every prediction ``<case>.nii.gz`` in ``pred_dir`` against ``ref_dir/<case>.nii.gz``.

    ``labels``: the labels to score (default: ``label_names``' keys, else every non-zero value found in the
    references and predictions). Grids must match (shape and affine), else a DataError names the case.
    References without a prediction are listed in ``Evaluation.missing`` (not scored).
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    preds, refs = nifti_files(pred_dir), nifti_files(ref_dir)
    if not preds:
        raise DataError(f"{pred_dir}: no predictions (<case>.nii.gz files) found")
    orphans = sorted(set(preds) - set(refs))
    if orphans:
        raise DataError(f"{ref_dir}: no reference for case(s) {', '.join(orphans[:5])}"
                        f"{' ...' if len(orphans) > 5 else ''}; give the folder with the matching labels "
                        "(e.g. the data set's labelsTr)")
    result = evaluate_pairs({case: (preds[case], refs[case]) for case in preds}, labels, label_names)
    result.missing = sorted(set(refs) - set(preds))
    return result


def evaluate_pairs(pairs: dict[str, tuple[Path, Path]], labels: Sequence[int] | None = None,
                   label_names: dict[int, str] | None = None) -> Evaluation:
    """Dice of ``{case: (prediction file, reference file)}``; see :func:`evaluate_folders`."""
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for case, (pred_path, ref_path) in sorted(pairs.items()):
        pred_img, ref_img = _load(pred_path, case), _load(ref_path, case)
        if pred_img.shape[:3] != ref_img.shape[:3] or len(pred_img.shape) != 3:
            raise DataError(f"case {case}: prediction {pred_path} has shape {pred_img.shape}, reference "
                            f"{ref_path} has {ref_img.shape}; predictions must be on the reference grid "
                            "(scnas predict writes them so)")
        if not np.allclose(pred_img.affine, ref_img.affine, atol=AFFINE_TOLERANCE):
            raise DataError(f"case {case}: the affines of {pred_path} and {ref_path} differ; predictions "
                            "must be on the reference grid (scnas predict writes them so)")
        arrays[case] = (np.rint(np.asarray(pred_img.dataobj)).astype(np.int64),
                        np.rint(np.asarray(ref_img.dataobj)).astype(np.int64))
    if labels is None:
        if label_names:
            labels = sorted(label_names)
        else:
            found: set[int] = set()
            for p, r in arrays.values():
                found |= set(np.unique(p).tolist()) | set(np.unique(r).tolist())
            labels = sorted(v for v in found if v != 0)
            if not labels:
                raise DataError("no foreground label in any reference or prediction; name the labels with --labels")
    names = {int(k): (label_names or {}).get(int(k), f"label_{int(k)}") for k in labels}
    per_case = {case: dice_per_label(p, r, names) for case, (p, r) in arrays.items()}
    return Evaluation(labels=names, per_case=per_case)


def _load(path: Path, case: str):  # type: ignore[no-untyped-def]
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as err:  # nibabel raises several types for a bad file
        raise DataError(f"case {case}: cannot read {path} as NIfTI ({err})") from err
