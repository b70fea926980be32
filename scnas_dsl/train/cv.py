"""``scnas cv``: retrain a genotype on every fold, predict each fold's validation cases on their original
grid, and report the Dice table the paper reports (mean Dice per label over the cross-validation).

The pooled table scores every training case once (as the validation case of its fold); the per-fold rows
show the spread. Written to ``OUT/cv_summary.json`` and ``OUT/cv_summary.csv``; each fold's run folder is
``OUT/fold_K`` with its predictions in ``OUT/fold_K/validation``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from scnas_dsl.data.dataset import open_dataset
from scnas_dsl.data.preprocess import Preprocessed
from scnas_dsl.errors import RunError
from scnas_dsl.train.config import TrainConfig
from scnas_dsl.train.metrics import Evaluation, evaluate_pairs, nanmean
from scnas_dsl.train.predict import predict_run
from scnas_dsl.train.retrain import run_train
from scnas_dsl.train.runs import json_safe


@dataclass
class CVResult:
    """Per fold evaluations and the pooled one."""

    folds: dict[int, Evaluation]
    pooled: Evaluation

    def table(self) -> str:
        """Mean Dice (%) per label: one row per fold, then the pooled row ``all``."""
        names = list(self.pooled.labels.values())
        width = max(8, *(len(n) for n in names))
        lines = ["  ".join([f"{'fold':<8}", *(f"{n:>{width}}" for n in names), f"{'mean':>8}"])]
        for fold, ev in self.folds.items():
            means = ev.mean_dice()
            lines.append("  ".join([f"{fold:<8}", *(f"{_f(means[n]):>{width}}" for n in names),
                                    f"{_f(ev.foreground_mean()):>8}"]))
        means = self.pooled.mean_dice()
        lines.append("  ".join([f"{'all':<8}", *(f"{_f(means[n]):>{width}}" for n in names),
                                f"{_f(self.pooled.foreground_mean()):>8}"]))
        return "\n".join(lines)


def _f(v: float) -> str:
    return "n/a" if v != v else f"{100 * v:.2f}"


def _source_dataset(data: str) -> Path:
    folder = Path(data)
    if (folder / "preprocessed.json").is_file():
        return Path(Preprocessed(folder).dataset.source_root)
    return folder


def run_cv(base: TrainConfig, out: Path, folds: list[int] | None = None, *, mirror: bool = False,
           resume: bool = False, force: bool = False) -> CVResult:
    """Retrain ``base`` (its ``fold`` and ``out`` are replaced) on each fold and evaluate the folds."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (resume or force):
        raise RunError(f"{out}: already exists; use --resume to continue the folds, --force to redo them, or "
                       "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    dataset = open_dataset(_source_dataset(base.data))
    results: dict[int, Evaluation] = {}
    pairs_all: dict[str, tuple[Path, Path]] = {}
    labels = {k: v for k, v in dataset.labels.items() if k != 0}
    for fold in folds if folds is not None else list(range(5)):
        cfg = base.model_copy(update={"fold": fold, "out": str(out / f"fold_{fold}")})
        fold_dir = out / f"fold_{fold}"
        done = (fold_dir / "checkpoints" / "best.pt").is_file() and (fold_dir / "plots" / "loss.png").is_file()
        if not (resume and done):
            run_train(cfg, resume=resume and (fold_dir / "checkpoints" / "last.pt").is_file(),
                      force=force and fold_dir.exists())
        split = json.loads((fold_dir / "split.json").read_text())
        images = [p for case in split["val"] for p in dataset.case(case).images]
        predict_run(fold_dir, images, fold_dir / "validation", mirror=mirror, device=base.device, force=True,
                    progress=base.progress)
        pairs = {case: (fold_dir / "validation" / f"{case}.nii.gz", dataset.case(case).label) for case in split["val"]}
        results[fold] = evaluate_pairs(pairs, label_names=labels)  # type: ignore[arg-type]
        results[fold].write(fold_dir / "validation")
        pairs_all.update(pairs)  # type: ignore[arg-type]
    pooled = evaluate_pairs(pairs_all, label_names=labels)
    result = CVResult(folds=results, pooled=pooled)
    summary = {"folds": {str(k): v.to_json() for k, v in results.items()}, **pooled.to_json(),
               "fold_means": {str(k): v.foreground_mean() for k, v in results.items()},
               "mean_over_folds": nanmean(v.foreground_mean() for v in results.values())}
    (out / "cv_summary.json").write_text(json.dumps(json_safe(summary), indent=1) + "\n")
    with (out / "cv_summary.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fold", *labels.values(), "foreground_mean"])
        rows: list[tuple[str, Evaluation]] = [*((str(k), v) for k, v in results.items()), ("all", pooled)]
        for name, ev in rows:
            means = ev.mean_dice()
            writer.writerow([name, *(f"{means[n]:.6f}" for n in labels.values()), f"{ev.foreground_mean():.6f}"])
    return result
