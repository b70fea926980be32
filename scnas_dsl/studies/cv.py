"""``scnas cv``: cross-validation, and the Dice table the paper reports (mean Dice per label over the folds).

Two kinds, chosen by what the file holds:

* **a genotype** (``run_cv(TrainConfig(genotype=...), ...)``): retrain that one network on every fold, predict
  each fold's validation cases on their original grid and score them. A genotype that a search found carries
  the cases its search trained on (the search run's ``split.json``, or the ``fold_K.search.json`` next to a
  genotype that ``cv`` of a space copied); when some of them are scored here as validation cases the result
  records it (``leakage``) and the command warns: those folds' Dice is optimistic.
* **a search space** (``run_cv(..., search=SearchConfig(spec=...))``): the paper's protocol without
  leakage. Each fold searches on its own training cases only (split 4:1 into weight and architecture parts
  by the search), derives its genotype, retrains it and scores the fold's validation cases, so no validation
  case is ever seen by the search that chose the network scoring it (checked after every search).
  ``OUT/fold_K/search`` is the search run, ``OUT/fold_K/train`` the retraining, ``OUT/fold_K/validation`` the
  predictions; the genotypes are copied to ``OUT/genotypes/fold_K.scn`` (with ``space.scn`` and their
  search's cases in ``fold_K.search.json``) and drawn side by side in ``OUT/genotypes/genotypes.png``.

The pooled table scores every case once (as the validation case of its fold); the per-fold rows and their
mean and sample standard deviation over folds are the paper's Table 1 layout. Written to
``OUT/cv_summary.{json,csv,md}``, with the per-case scores in ``OUT/cv_cases.csv`` (and in the JSON); in
the genotype kind each fold's run folder is ``OUT/fold_K`` with its predictions in ``OUT/fold_K/validation``.

Each fold is scored with its **last** weights, as the paper does (no model selection on validation).
``checkpoint="best"`` scores the weights that had the best Dice on the very cases then scored, which
flatters the table; it stays available, and the summary, the CSV and the printed table say which weights
(and which epoch) every row comes from. Its results go to ``OUT/cv_summary_best.*``, ``OUT/cv_cases_best.csv``
and ``OUT/fold_K/validation_best``, so that scoring the best weights of a finished cross-validation
(``--resume --checkpoint best``, no retraining) never replaces the last weights' results. Only a folder that
``scnas cv`` made (it holds ``.scnas-cv``) is continued or redone; with ``--resume`` finished searches and
trainings are not redone. The data and the folds asked for are checked before ``OUT`` is made, and a folder
holding only ``.scnas-cv`` counts as empty, so a refused command never blocks the corrected one.

The summary records what defines the cross-validation (``settings``: the data set's name and path, mirroring,
and each fold's retraining settings read from its run folder), which ``scnas compare`` checks.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scnas_dsl.data.cache import MANIFEST
from scnas_dsl.data.dataset import open_dataset
from scnas_dsl.data.preprocess import Preprocessed, preprocess_dataset
from scnas_dsl.data.splits import FoldSplit, get_fold, load_folds
from scnas_dsl.errors import RunError, ScnasError, first_line
from scnas_dsl.evaluation.metrics import Evaluation, evaluate_pairs, nanmean
from scnas_dsl.files import write_text
from scnas_dsl.folders import folder_state, foreign_folder, holding, mark_folder, read_marker, replace_folder
from scnas_dsl.prediction.predict import CHECKPOINTS, PredictionStopped, Weights, predict_run
from scnas_dsl.stopping import RunInterrupted
from scnas_dsl.training.checkpoint import load_checkpoint
from scnas_dsl.training.config import CommonConfig, SearchConfig, TrainConfig
from scnas_dsl.training.resume import check_resumed_settings
from scnas_dsl.training.retrain import run_train
from scnas_dsl.training.runs import (
    CHECKPOINT_DIR,
    CONFIG,
    GENOTYPE,
    LAST,
    MARKER,
    NETWORK,
    PREPROCESSING,
    SPACE,
    SPLIT,
    json_safe,
    read_split,
)
from scnas_dsl.training.search import run_search

#: marks a folder ``scnas cv`` made: only such a folder is continued (--resume) or redone (--force)
CV_MARKER = ".scnas-cv"
#: next to a copied genotype ``NAME.scn``: ``NAME.search.json``, the cases its search trained on
SEARCH_RECORD = ".search.json"
STD_RULE = "sample standard deviation (n - 1) of the per-fold means; n/a with fewer than two folds"


@dataclass(frozen=True)
class SearchCases:
    """Which cases the search behind a genotype trained on (weights and architecture parts)."""

    run: str
    data: str | None
    fold: int | None
    cases: frozenset[str]


@dataclass(frozen=True)
class Leakage:
    """Validation cases of this cross-validation that the genotype's search trained on, per fold
    (``fold -> (seen, validation cases)``); only folds with seen cases are listed."""

    search: SearchCases
    folds: dict[int, tuple[int, int]]

    def cases(self) -> int:
        return sum(seen for seen, _ in self.folds.values())

    def message(self, genotype: Path | str) -> str:
        folds = ", ".join(f"fold {k} ({seen} of {total} cases)" for k, (seen, total) in self.folds.items())
        where = f" on {self.search.data}" if self.search.data else ""
        return (f"{genotype} was found by a search ({self.search.run}{where}) that trained on {self.cases()} "
                f"case(s) scored here as validation cases: {folds}. The Dice of these folds is optimistic "
                "(the network was chosen on the cases it is scored on). For a cross-validation without leakage "
                "give the search space instead: scnas cv SPACE --data DIR (one search per fold, on that fold's "
                "training cases only)")

    def to_json(self) -> dict[str, Any]:
        return {"search": self.search.run, "data": self.search.data, "search_fold": self.search.fold,
                "cases": self.cases(),
                "folds": {str(k): {"seen": seen, "validation_cases": total}
                          for k, (seen, total) in self.folds.items()}}


def search_cases(genotype: Path | str) -> SearchCases | None:
    """The cases the search behind ``genotype`` trained on: from ``NAME.search.json`` next to it (a copy that
    ``cv`` of a space made), or from the search run folder it lies in (``split.json``); None for a genotype
    no search recorded (a hand-written baseline, a random sample)."""
    path = Path(genotype)
    sidecar = path.with_name(path.stem + SEARCH_RECORD)
    run = path.parent
    if sidecar.is_file():
        record = read_split(run, sidecar)
        extra = record.model_extra or {}
        source, data = extra.get("search", run), extra.get("data")
    elif read_marker(run, MARKER)[:1] == ["search"] and (run / SPLIT).is_file():
        record = read_split(run)
        try:
            data = json.loads((run / CONFIG).read_text()).get("data") if (run / CONFIG).is_file() else None
        except (OSError, ValueError, AttributeError) as err:
            raise RunError(f"{run / CONFIG}: cannot be read ({first_line(err)})") from err
        source = run
    else:
        return None
    seen = frozenset([*record.weight_part, *record.arch_part])
    return SearchCases(run=str(source), data=data if isinstance(data, str) else None, fold=record.fold,
                       cases=seen)


def leakage(genotype: Path | str, splits: dict[int, FoldSplit]) -> Leakage | None:
    """The validation cases of ``splits`` that the search behind ``genotype`` trained on (None: none, or no
    search recorded). Cases are compared by id."""
    record = search_cases(genotype)
    if record is None:
        return None
    folds = {k: (len(record.cases & set(s.val)), len(s.val)) for k, s in sorted(splits.items())}
    folds = {k: v for k, v in folds.items() if v[0]}
    return Leakage(search=record, folds=folds) if folds else None


@dataclass
class CVResult:
    """Per fold evaluations and the pooled one."""

    folds: dict[int, Evaluation]
    pooled: Evaluation
    #: ``last`` or ``best``
    checkpoint: str = "last"
    #: the weights each fold was scored with
    weights: dict[int, Weights] = field(default_factory=dict)
    #: ``genotype`` (one network retrained on every fold) or ``space`` (one search per fold)
    mode: str = "genotype"
    #: how many folds the splits have (the folds run may be fewer)
    folds_total: int = 0
    #: validation cases the genotype's search trained on (genotype mode), else None
    leakage: Leakage | None = None
    #: each fold's genotype file (space mode: ``OUT/genotypes/fold_K.scn``)
    genotypes: dict[int, Path] = field(default_factory=dict)
    #: the settings that define the cross-validation (see :func:`cv_settings`); empty when not known
    settings: dict[str, Any] = field(default_factory=dict)

    def folds_text(self) -> str:
        """Which folds the table covers: ``every fold (5 of 5)``, ``fold 0 (1 of 5 folds)``, ``folds 0, 2 (2 of
        5 folds)``."""
        run = sorted(self.folds)
        total = self.folds_total or len(run)
        if len(run) == total:
            return f"every fold ({total} of {total})"
        return f"fold{'s' if len(run) > 1 else ''} {', '.join(map(str, run))} ({len(run)} of {total} folds)"

    def heading(self) -> str:
        """Which weights the table scores."""
        if self.checkpoint == "best":
            return ("weights: the best of each fold by validation Dice, chosen on the cases scored here "
                    "(optimistic; the paper scores the last)")
        return f"weights: the {self.checkpoint} of each fold (no choice on the validation cases, as in the paper)"

    def label_names(self) -> list[str]:
        return list(self.pooled.labels.values())

    def over_folds(self) -> tuple[dict[str, float], dict[str, float]]:
        """(mean, sample standard deviation) over the folds of each label's fold mean and of the fold
        averages (key ``average``)."""
        columns: dict[str, list[float]] = {n: [ev.mean_dice()[n] for ev in self.folds.values()]
                                           for n in self.label_names()}
        columns["average"] = [ev.foreground_mean() for ev in self.folds.values()]
        return ({n: nanmean(v) for n, v in columns.items()}, {n: sample_std(v) for n, v in columns.items()})

    def case_rows(self) -> list[tuple[int, str, dict[str, float]]]:
        """(fold, case, Dice per label name) for every scored case, by fold then case."""
        return [(k, case, {ev.labels[label]: v for label, v in scores.items()})
                for k, ev in self.folds.items() for case, scores in ev.per_case.items()]

    def table(self) -> str:
        """Which weights, then the mean Dice (%) per label: one row per fold (with the epoch of its weights),
        the mean and standard deviation over the folds, then the pooled row ``all``."""
        names = self.label_names()
        width = max(8, *(len(n) for n in names))
        lines = [self.heading(),
                 "  ".join([f"{'fold':<8}", *(f"{n:>{width}}" for n in names), f"{'mean':>8}", f"{'epoch':>6}"])]
        for fold, ev in self.folds.items():
            means = ev.mean_dice()
            epoch = self.weights[fold].epoch if fold in self.weights else "?"
            lines.append("  ".join([f"{fold:<8}", *(f"{_f(means[n]):>{width}}" for n in names),
                                    f"{_f(ev.foreground_mean()):>8}", f"{epoch:>6}"]))
        mean, std = self.over_folds()
        total = self.folds_total or len(self.folds)
        over = f"({len(self.folds)} of {total} folds: {', '.join(map(str, sorted(self.folds)))})"
        for row, values, after in (("mean", mean, [f"{'':>6}", over]), ("sd", std, [])):
            lines.append("  ".join([f"{row:<8}", *(f"{_f(values[n]):>{width}}" for n in names),
                                    f"{_f(values['average']):>8}", *after]))
        means = self.pooled.mean_dice()
        lines.append("  ".join([f"{'all':<8}", *(f"{_f(means[n]):>{width}}" for n in names),
                                f"{_f(self.pooled.foreground_mean()):>8}"]))
        return "\n".join(lines)


def sample_std(values: list[float]) -> float:
    """Sample standard deviation (n - 1) of the defined values; NaN with fewer than two."""
    xs = [v for v in values if not math.isnan(v)]
    if len(xs) < 2:
        return math.nan
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def _f(v: float) -> str:
    return "n/a" if v != v else f"{100 * v:.2f}"


def _source_dataset(data: str) -> Path:
    folder = Path(data)
    if (folder / MANIFEST).is_file():
        return Path(Preprocessed(folder).dataset.source_root)
    return folder


def fold_splits(cfg: CommonConfig) -> dict[int, FoldSplit]:
    """Every fold of ``cfg.data`` as the runs will see it (the data is preprocessed into the cache first, as
    a run would do; an already preprocessed folder is used as it is)."""
    source = Path(cfg.data)
    if (source / MANIFEST).is_file():
        pre = Preprocessed(source)
    else:
        pre = preprocess_dataset(source, spacing=cfg.spacing, progress=cfg.progress)
    folds, _ = load_folds(pre, cfg.splits_seed)
    return {k: get_fold(pre, k, cfg.splits_seed) for k in range(len(folds))}


def _finished(path: Path, kind: str, epochs: int, min_lr: float | None = None) -> bool:
    """The run whose checkpoint is ``path`` ran to its end: saved at the end of an epoch, and either all
    ``epochs`` done or (training) stopped by the learning-rate floor."""
    if not path.is_file():
        return False
    state = load_checkpoint(path)
    if state["kind"] != kind or int(state.get("step", 0)) != 0:
        return False
    if int(state.get("epoch", 0)) >= epochs:
        return True
    groups = state.get("optimizer", {}).get("param_groups", [])
    return min_lr is not None and bool(groups) and float(groups[0]["lr"]) < min_lr


def _trained(fold_dir: Path, cfg: TrainConfig) -> bool:
    """The fold's training ran to its end, read from the weights cv scores (``last.pt``, a training state):
    saved at the end of an epoch, and either all ``cfg.epochs`` epochs done or stopped by the learning-rate
    floor. A fold stopped earlier (or asked for more epochs now) is resumed."""
    return _finished(fold_dir / CHECKPOINT_DIR / LAST, "train", cfg.epochs, cfg.min_lr)


def _searched(run: Path, cfg: SearchConfig) -> bool:
    """The fold's search ran all ``cfg.epochs`` and wrote its genotype; a search with other settings than
    now is refused (as resuming it would be)."""
    if not ((run / GENOTYPE).is_file() and _finished(run / CHECKPOINT_DIR / LAST, "search", cfg.epochs)):
        return False
    settings = cfg.model_dump(mode="json")
    if settings["patch"] is None:  # the run recorded the patch it chose; not choosing one is no change
        del settings["patch"]
    check_resumed_settings(run, settings)
    return True


#: the settings of a fold's retraining that ``cv_summary.json`` records (``settings``), from its run folder
FOLD_SETTINGS = ("epochs", "stem_width", "patch", "spacing", "deep_supervision", "batch_size", "batches_per_epoch",
                 "augment", "seed", "splits_seed")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as err:
        raise RunError(f"{path}: cannot be read ({err})") from err
    return value if isinstance(value, dict) else {}


def fold_settings(run: Path) -> dict[str, Any]:
    """The settings of the retraining in ``run`` as it ran: ``config.json`` (what was asked), ``network.json``
    (what was built: stem width, patch, deep supervision levels, ``[]`` = off) and the spacing the data was
    preprocessed at (``preprocessing/preprocessed.json``); what a file lacks falls back to ``config.json``."""
    config, network = _read_json(run / CONFIG), _read_json(run / NETWORK)
    spacing = _read_json(run / PREPROCESSING / MANIFEST).get("spacing", config.get("spacing"))
    settings = {key: config.get(key) for key in FOLD_SETTINGS}
    settings.update({key: network[key] for key in ("stem_width", "patch", "deep_supervision") if key in network})
    settings["spacing"] = spacing
    return settings


def cv_settings(runs: dict[int, Path], *, data_name: str, data_path: Path, mirror: bool) -> dict[str, Any]:
    """What defines a cross-validation, for ``cv_summary.json`` (``settings``) and ``scnas compare``: the data
    set (``name`` from its dataset.json, resolved ``path`` of its source folder), test-time ``mirror``ing, and
    each setting of :data:`FOLD_SETTINGS` read from the folds' run folders (``runs``: fold -> retraining run):
    its value when every fold has the same, else ``{fold: value}``; every fold's in ``per_fold``."""
    per_fold = {str(k): fold_settings(run) for k, run in sorted(runs.items())}
    settings: dict[str, Any] = {"data": {"name": data_name, "path": str(Path(data_path).resolve())},
                                "mirror": mirror}
    for key in FOLD_SETTINGS:
        values = {k: s[key] for k, s in per_fold.items()}
        distinct = {json.dumps(v) for v in values.values()}
        settings[key] = next(iter(values.values())) if len(distinct) == 1 else values
    settings["per_fold"] = per_fold
    return settings


def summary_suffix(checkpoint: str) -> str:
    """``""`` for the last weights (``cv_summary.csv``, ``fold_K/validation``), ``"_best"`` for the best
    (``cv_summary_best.csv``, ``fold_K/validation_best``)."""
    return "" if checkpoint == "last" else f"_{checkpoint}"


def _prepare_out(out: Path, mode: str, resume: bool, force: bool) -> None:
    """Check (and make) the cv folder: only one ``scnas cv`` made is continued or redone; a folder of the
    other kind (space / genotype) is redone as a whole with ``--force``, never continued. A folder holding
    only the marker (what a cv that failed before its first fold left) counts as empty."""
    state = folder_state(out, CV_MARKER)
    if state == "foreign":
        raise foreign_folder(out, "a folder scnas cv made", "--force or --resume", "--out")
    if state == "ours":
        if not (resume or force):
            raise RunError(f"{out}: already exists; use --resume to continue the folds, --force to redo them, or "
                           "choose another --out")
        lines = read_marker(out, CV_MARKER)
        before = lines[1].strip() if len(lines) > 1 else "genotype"
        if before != mode:
            if not force:
                raise RunError(f"{out}: holds a cross-validation of a {before}, not of a {mode}; it cannot be "
                               "continued as one. Use --force to redo it from the start, or another --out")
            replace_folder(out, CV_MARKER, f"scnas cv\n{mode}\n")
    mark_folder(out, CV_MARKER, f"scnas cv\n{mode}\n")


@holding("out", "scnas cv")
def run_cv(base: TrainConfig, out: Path, folds: list[int] | None = None, *, mirror: bool = True,
           resume: bool = False, force: bool = False, checkpoint: str = "last",
           search: SearchConfig | None = None, echo: Callable[[str], None] | None = None) -> CVResult:
    """Cross-validate and evaluate the folds with their ``last`` (default) or ``best`` weights.

    Without ``search``: retrain ``base.genotype`` (``fold`` and ``out`` are replaced) on each fold; a leak
    of validation cases into the genotype's search is reported through ``echo`` and recorded. With
    ``search`` (its ``spec`` a space): each fold first searches on its training cases (``search``, its
    ``fold`` and ``out`` replaced), then retrains the fold's genotype with ``base``."""
    if checkpoint not in CHECKPOINTS:
        raise RunError(f"unknown checkpoint '{checkpoint}': use last (the default) or best")
    if search is not None and search.splits_seed != base.splits_seed:
        raise RunError(f"the search's splits_seed ({search.splits_seed}) differs from the retraining's "
                       f"({base.splits_seed}): both must use the same folds")
    out = Path(out)
    mode = "genotype" if search is None else "space"
    # the data and the folds are checked before the folder is made: a refused command leaves nothing behind
    source = _source_dataset(base.data)
    dataset = open_dataset(source)
    splits = fold_splits(base)
    chosen = folds if folds is not None else sorted(splits)
    unknown = [k for k in chosen if k not in splits]
    if unknown:
        raise RunError(f"fold(s) {', '.join(map(str, unknown))} do not exist; the data has {len(splits)} folds "
                       f"(0 to {len(splits) - 1})")
    _prepare_out(out, mode, resume, force)
    # the last weights' results and the best weights' (optimistic) results never replace each other
    suffix = summary_suffix(checkpoint)
    leak = None
    if search is None:
        leak = leakage(base.genotype, {k: splits[k] for k in chosen})
        if leak is not None and echo is not None:
            echo(f"warning: {leak.message(base.genotype)}")
    results: dict[int, Evaluation] = {}
    weights: dict[int, Weights] = {}
    genotypes: dict[int, Path] = {}
    runs: dict[int, Path] = {}
    pairs_all: dict[str, tuple[Path, Path]] = {}
    labels = {k: v for k, v in dataset.labels.items() if k != 0}
    for fold in chosen:
        fold_dir = out / f"fold_{fold}"
        cfg = base
        run_dir = fold_dir
        if search is not None:
            genotype = _search_fold(search, out, fold, splits[fold], resume=resume, force=force)
            genotypes[fold] = genotype
            run_dir = fold_dir / "train"
            cfg = base.model_copy(update={"genotype": str(fold_dir / "search" / GENOTYPE),
                                          "genotype_name": None})
        cfg = cfg.model_copy(update={"fold": fold, "out": str(run_dir)})
        runs[fold] = run_dir
        if not (resume and _trained(run_dir, cfg)):
            run_train(cfg, resume=resume and (run_dir / CHECKPOINT_DIR / LAST).is_file(),
                      resume_hint=f"scnas cv ... --out {out} --resume",
                      force=force and run_dir.exists())
        split = read_split(run_dir)
        images = [p for case in split.val for p in dataset.case(case).images]
        scored = fold_dir / f"validation{suffix}"
        try:
            weights[fold] = predict_run(run_dir, images, scored, mirror=mirror, device=base.device,
                                        checkpoint=checkpoint, force=True, progress=base.progress,
                                        ops=base.ops).weights
        except PredictionStopped as err:  # the fold's run is complete: --resume predicts its cases again
            raise RunInterrupted(f"the validation predictions of fold {fold} stopped ({err.done} of {err.total} "
                                 f"case(s) done); continue the cross-validation with scnas cv ... --out {out} "
                                 "--resume") from None
        pairs = {case: (scored / f"{case}.nii.gz", dataset.case(case).label) for case in split.val}
        results[fold] = evaluate_pairs(pairs, label_names=labels)  # type: ignore[arg-type]
        results[fold].write(scored)
        pairs_all.update(pairs)  # type: ignore[arg-type]
    if genotypes:
        _draw_genotypes(out / "genotypes", base.ops)
    pooled = evaluate_pairs(pairs_all, label_names=labels)
    result = CVResult(folds=results, pooled=pooled, checkpoint=checkpoint, weights=weights, mode=mode,
                      folds_total=len(splits), leakage=leak, genotypes=genotypes,
                      settings=cv_settings(runs, data_name=dataset.name, data_path=source, mirror=mirror))
    spec = search.spec if search is not None else base.genotype
    write_summary(out, result, suffix, spec=spec)
    return result


def _search_fold(search: SearchConfig, out: Path, fold: int, split: FoldSplit, *, resume: bool,
                 force: bool) -> Path:
    """Search fold ``fold`` on its training cases (unless already done and resuming), check that the search
    saw none of the fold's validation cases, and copy its genotype to ``OUT/genotypes``."""
    run = out / f"fold_{fold}" / "search"
    cfg = search.model_copy(update={"fold": fold, "out": str(run)})
    if not (resume and _searched(run, cfg)):
        try:
            run_search(cfg, resume=resume and (run / CHECKPOINT_DIR / LAST).is_file(),
                       force=force and run.exists())
        except RunInterrupted as err:
            raise RunInterrupted(f"the search of fold {fold} stopped after saving a checkpoint; continue the "
                                 f"cross-validation with scnas cv ... --out {out} --resume") from err
        except ScnasError:  # refused before it wrote anything (an impossible --budget, say): no empty folders
            for folder in (run, run.parent):  # left behind, so that the corrected command starts afresh
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            raise
    record = read_split(run)
    seen = set(record.weight_part) | set(record.arch_part)
    if seen & set(split.val) or record.fold != fold:
        raise RunError(f"{run / 'split.json'}: the search of fold {fold} trained on validation cases of that fold "
                       f"({', '.join(sorted(seen & set(split.val)))}); this is a bug, please report it")
    target = out / "genotypes"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / SPACE, target / SPACE)
    genotype = target / f"fold_{fold}.scn"
    shutil.copyfile(run / GENOTYPE, genotype)
    write_text(target / f"fold_{fold}{SEARCH_RECORD}", json.dumps(
        {"search": str(run.resolve()), "data": str(Path(search.data).resolve()), "fold": fold, "weight_part": record.weight_part,
         "arch_part": record.arch_part, "val": record.val}, indent=1) + "\n")
    return genotype


def _draw_genotypes(folder: Path, ops: tuple[str, ...] = ()) -> Path:
    """Every ``fold_K.scn`` of ``folder`` drawn side by side (one row per fold) in ``genotypes.png``."""
    from scnas_dsl.graph.draw import draw_genotype_grid
    from scnas_dsl.loader import load
    from scnas_dsl.ops.plugins import load_signatures

    signatures = load_signatures(ops)

    drawn = []
    space = None
    for path in sorted(folder.glob("fold_*.scn"), key=lambda p: int(p.stem.split("_")[1])):
        space, genotype = load(path, signatures=signatures).genotype()
        drawn.append((path.stem.replace("_", " "), genotype))
    assert space is not None
    return draw_genotype_grid(space, drawn, folder / "genotypes.png")


def write_summary(out: Path, result: CVResult, suffix: str, spec: str | None = None) -> list[Path]:
    """``cv_summary{suffix}.json``, ``.csv``, ``.md`` and the per-case ``cv_cases{suffix}.csv``."""
    names = result.label_names()
    mean, std = result.over_folds()
    weights, checkpoint, pooled = result.weights, result.checkpoint, result.pooled
    summary = {"checkpoint": checkpoint, "weights_note": result.heading(), "mode": result.mode, "spec": spec,
               "weights": {str(k): v.to_json() for k, v in weights.items()},
               "folds": {str(k): v.to_json() for k, v in result.folds.items()}, **pooled.to_json(),
               "fold_means": {str(k): v.foreground_mean() for k, v in result.folds.items()},
               "mean_over_folds": mean["average"],
               "folds_run": sorted(result.folds), "folds_total": result.folds_total,
               "label_names": names,
               "over_folds": {"mean": mean, "std": std, "std_rule": STD_RULE},
               "case_scores": [{"fold": k, "case": case, "dice": dice} for k, case, dice in result.case_rows()],
               "leakage": result.leakage.to_json() if result.leakage is not None else None,
               "genotypes": {str(k): str(v) for k, v in result.genotypes.items()},
               "settings": result.settings or None}
    paths = [out / f"cv_summary{suffix}.json", out / f"cv_summary{suffix}.csv", out / f"cv_summary{suffix}.md",
             out / f"cv_cases{suffix}.csv"]
    write_text(paths[0], json.dumps(json_safe(summary), indent=1) + "\n")
    with paths[1].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fold", *names, "foreground_mean", "checkpoint", "epoch"])
        for k, ev in result.folds.items():
            means = ev.mean_dice()
            writer.writerow([k, *(_c(means[n]) for n in names), _c(ev.foreground_mean()), checkpoint,
                             weights[k].epoch])
        for row, values in (("mean", mean), ("std", std)):
            writer.writerow([row, *(_c(values[n]) for n in names), _c(values["average"]), checkpoint, ""])
        means = pooled.mean_dice()
        writer.writerow(["all", *(_c(means[n]) for n in names), _c(pooled.foreground_mean()), checkpoint, ""])
    write_text(paths[2], _markdown(result, spec))
    with paths[3].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fold", "case", *names])
        for k, case, dice in result.case_rows():
            writer.writerow([k, case, *(_c(dice[n]) for n in names)])
    return paths


def _c(v: float) -> str:
    return "" if math.isnan(v) else f"{v:.6f}"


def _markdown(result: CVResult, spec: str | None) -> str:
    """The paper's Table 1 layout: Dice (%) per label and their average, per fold, mean ± sd over the folds,
    and the pooled row."""
    names = result.label_names()
    mean, std = result.over_folds()
    what = {"space": f"one search per fold on its training cases, then retrained; {result.folds_text()}",
            "genotype": f"one genotype retrained on {result.folds_text()}"}[result.mode]
    lines = [f"# Cross-validation: Dice (%) per label{f' of {spec}' if spec else ''}", "",
             f"{what}; {result.heading()}.", "",
             "| fold | " + " | ".join(names) + " | average | epoch |",
             "| --- |" + " ---: |" * (len(names) + 2)]
    for k, ev in result.folds.items():
        means = ev.mean_dice()
        lines.append(f"| {k} | " + " | ".join(_f(means[n]) for n in names)
                     + f" | {_f(ev.foreground_mean())} | {result.weights[k].epoch} |")
    both = [f"{_f(mean[n])} ± {_f(std[n])}" for n in [*names, "average"]]
    lines.append(f"| mean ± sd ({len(result.folds)} of {result.folds_total} folds) | " + " | ".join(both) + " | |")
    means = result.pooled.mean_dice()
    lines.append(f"| pooled ({len(result.pooled.per_case)} cases) | " + " | ".join(_f(means[n]) for n in names)
                 + f" | {_f(result.pooled.foreground_mean())} | |")
    lines += ["", f"sd: {STD_RULE}. Pooled: every case scored once, as a validation case of its fold. A case whose "
              "reference and prediction are both empty has no Dice for that label (n/a) and is left out of "
              "its means (nnU-Net's rule). Per-case scores: cv_cases*.csv."]
    if result.leakage is not None:
        lines += ["", f"**Warning**: {result.leakage.message(spec or 'the genotype')}."]
    return "\n".join(lines) + "\n"
