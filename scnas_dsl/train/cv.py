"""``scnas cv``: retrain a genotype on every fold, predict each fold's validation cases on their original
grid, and report the Dice table the paper reports (mean Dice per label over the cross-validation).

The pooled table scores every training case once (as the validation case of its fold); the per-fold rows
show the spread. Written to ``OUT/cv_summary.json`` and ``OUT/cv_summary.csv``; each fold's run folder is
``OUT/fold_K`` with its predictions in ``OUT/fold_K/validation``.

Each fold is scored with its **last** weights, as the paper does (no model selection on validation).
``checkpoint="best"`` scores the weights that had the best Dice on the very cases then scored, which
flatters the table; it stays available, and the summary, the CSV and the printed table say which weights
(and which epoch) every row comes from. Its results go to ``OUT/cv_summary_best.*`` and
``OUT/fold_K/validation_best``, so that scoring the best weights of a finished cross-validation
(``--resume --checkpoint best``, no retraining) never replaces the last weights' results. Only a folder that
``scnas cv`` made (it holds ``.scnas-cv``) is continued or redone.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from scnas_dsl.data.dataset import open_dataset
from scnas_dsl.data.preprocess import Preprocessed
from scnas_dsl.errors import RunError
from scnas_dsl.train.checkpoint import load_checkpoint
from scnas_dsl.train.config import TrainConfig
from scnas_dsl.train.metrics import Evaluation, evaluate_pairs, nanmean
from scnas_dsl.train.predict import CHECKPOINTS, Weights, predict_run
from scnas_dsl.train.retrain import run_train
from scnas_dsl.train.runs import json_safe


@dataclass
class CVResult:
    """Per fold evaluations and the pooled one."""

    folds: dict[int, Evaluation]
    pooled: Evaluation
    #: ``last`` or ``best``
    checkpoint: str = "last"
    #: the weights each fold was scored with
    weights: dict[int, Weights] = field(default_factory=dict)

    def heading(self) -> str:
        """Which weights the table scores."""
        if self.checkpoint == "best":
            return ("weights: the best of each fold by validation Dice, chosen on the cases scored here "
                    "(optimistic; the paper scores the last)")
        return f"weights: the {self.checkpoint} of each fold (no choice on the validation cases, as in the paper)"

    def table(self) -> str:
        """Which weights, then the mean Dice (%) per label: one row per fold (with the epoch of its weights),
        then the pooled row ``all``."""
        names = list(self.pooled.labels.values())
        width = max(8, *(len(n) for n in names))
        lines = [self.heading(),
                 "  ".join([f"{'fold':<8}", *(f"{n:>{width}}" for n in names), f"{'mean':>8}", f"{'epoch':>6}"])]
        for fold, ev in self.folds.items():
            means = ev.mean_dice()
            epoch = self.weights[fold].epoch if fold in self.weights else "?"
            lines.append("  ".join([f"{fold:<8}", *(f"{_f(means[n]):>{width}}" for n in names),
                                    f"{_f(ev.foreground_mean()):>8}", f"{epoch:>6}"]))
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


def _trained(fold_dir: Path, cfg: TrainConfig) -> bool:
    """The fold's training ran to its end, read from the weights cv scores (``last.pt``, a training state):
    saved at the end of an epoch, and either all ``cfg.epochs`` epochs done or stopped by the learning-rate
    floor. A fold stopped earlier (or asked for more epochs now) is resumed."""
    path = fold_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        return False
    state = load_checkpoint(path)
    if state["kind"] != "train" or int(state.get("step", 0)) != 0:
        return False
    if int(state.get("epoch", 0)) >= cfg.epochs:
        return True
    groups = state.get("optimizer", {}).get("param_groups", [])
    return bool(groups) and float(groups[0]["lr"]) < cfg.min_lr


def summary_suffix(checkpoint: str) -> str:
    """``""`` for the last weights (``cv_summary.csv``, ``fold_K/validation``), ``"_best"`` for the best
    (``cv_summary_best.csv``, ``fold_K/validation_best``)."""
    return "" if checkpoint == "last" else f"_{checkpoint}"


#: marks a folder ``scnas cv`` made: only such a folder is continued (--resume) or redone (--force)
CV_MARKER = ".scnas-cv"


def run_cv(base: TrainConfig, out: Path, folds: list[int] | None = None, *, mirror: bool = False,
           resume: bool = False, force: bool = False, checkpoint: str = "last") -> CVResult:
    """Retrain ``base`` (its ``fold`` and ``out`` are replaced) on each fold and evaluate the folds with
    their ``last`` (default) or ``best`` weights."""
    if checkpoint not in CHECKPOINTS:
        raise RunError(f"unknown checkpoint '{checkpoint}': use last (the default) or best")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / CV_MARKER).is_file():
            raise RunError(f"{out}: exists and is not a folder scnas cv made; scnas never writes into it (not even "
                           "with --force or --resume). Choose another --out")
        if not (resume or force):
            raise RunError(f"{out}: already exists; use --resume to continue the folds, --force to redo them, or "
                           "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / CV_MARKER).write_text("scnas cv\n")
    # the last weights' results and the best weights' (optimistic) results never replace each other
    suffix = summary_suffix(checkpoint)
    dataset = open_dataset(_source_dataset(base.data))
    results: dict[int, Evaluation] = {}
    weights: dict[int, Weights] = {}
    pairs_all: dict[str, tuple[Path, Path]] = {}
    labels = {k: v for k, v in dataset.labels.items() if k != 0}
    for fold in folds if folds is not None else list(range(5)):
        cfg = base.model_copy(update={"fold": fold, "out": str(out / f"fold_{fold}")})
        fold_dir = out / f"fold_{fold}"
        if not (resume and _trained(fold_dir, cfg)):
            run_train(cfg, resume=resume and (fold_dir / "checkpoints" / "last.pt").is_file(),
                      resume_hint=f"scnas cv ... --out {out} --resume",
                      force=force and fold_dir.exists())
        split = json.loads((fold_dir / "split.json").read_text())
        images = [p for case in split["val"] for p in dataset.case(case).images]
        scored = fold_dir / f"validation{suffix}"
        weights[fold] = predict_run(fold_dir, images, scored, mirror=mirror, device=base.device,
                                    checkpoint=checkpoint, force=True, progress=base.progress).weights
        pairs = {case: (scored / f"{case}.nii.gz", dataset.case(case).label) for case in split["val"]}
        results[fold] = evaluate_pairs(pairs, label_names=labels)  # type: ignore[arg-type]
        results[fold].write(scored)
        pairs_all.update(pairs)  # type: ignore[arg-type]
    pooled = evaluate_pairs(pairs_all, label_names=labels)
    result = CVResult(folds=results, pooled=pooled, checkpoint=checkpoint, weights=weights)
    summary = {"checkpoint": checkpoint, "weights_note": result.heading(),
               "weights": {str(k): v.to_json() for k, v in weights.items()},
               "folds": {str(k): v.to_json() for k, v in results.items()}, **pooled.to_json(),
               "fold_means": {str(k): v.foreground_mean() for k, v in results.items()},
               "mean_over_folds": nanmean(v.foreground_mean() for v in results.values())}
    (out / f"cv_summary{suffix}.json").write_text(json.dumps(json_safe(summary), indent=1) + "\n")
    with (out / f"cv_summary{suffix}.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fold", *labels.values(), "foreground_mean", "checkpoint", "epoch"])
        rows: list[tuple[str, Evaluation, str]] = [
            *((str(k), v, str(weights[k].epoch)) for k, v in results.items()), ("all", pooled, "")]
        for name, ev, epoch in rows:
            means = ev.mean_dice()
            writer.writerow([name, *(f"{means[n]:.6f}" for n in labels.values()), f"{ev.foreground_mean():.6f}",
                             checkpoint, epoch])
    return result
