"""``scnas compare``: several cross-validations of the same data side by side (searched vs baseline vs random
genotypes, say), from the per-case scores that ``scnas cv`` writes (``cv_summary.json``).

Per label and run: the mean and the sample standard deviation (n - 1) **over cases** (every case once, as the
validation case of its fold: the pooled row of ``scnas cv``) and **over folds** (of the per-fold means: the
``mean ± sd`` row of ``scnas cv``); and, for every run after the first (the reference), the paired per-case
difference ``run - reference`` (mean and median) with a two-sided Wilcoxon signed-rank test
(``scipy.stats.wilcoxon``, ``zero_method="wilcox"``: cases with no difference are dropped, scipy's exact
distribution for small samples without ties, else the normal approximation).

Undefined Dice (reference and prediction both empty: NaN, ``null`` in JSON) is left out as in the means
(nnU-Net's rule): a case enters a label's paired test only when both runs have a Dice for it; the cases left
out are counted (``pairs_excluded``). Such a case can only be NaN in one run and 0 in the other (the
reference is the same): a false positive of the other run on an empty reference, which the means ignore too.

Written to ``REPORT/``: ``report.md``, ``report.csv``, ``report.json`` and one box plot per label
(``box_<label>.png``), and a ``.scnas-compare`` marker: only such a folder is replaced (``force``).
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scnas_dsl.errors import RunError
from scnas_dsl.evaluation.metrics import nanmean
from scnas_dsl.files import write_text
from scnas_dsl.folders import folder_state, foreign_folder, refuse_data_set, replace_folder
from scnas_dsl.prediction.predict import CHECKPOINTS
from scnas_dsl.studies.cv import CV_MARKER, sample_std, summary_suffix
from scnas_dsl.training.runs import json_safe

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COMPARE_MARKER = ".scnas-compare"
NAN_RULE = ("Dice undefined (reference and prediction both empty) is left out of the means and of the paired "
            "test: a case enters a label's test only when both runs have a Dice for it (pairs_excluded counts "
            "the others)")
SD_RULE = ("sd over cases: sample standard deviation (n - 1) of the per-case Dice; sd over folds: sample "
           "standard deviation (n - 1) of the per-fold mean Dice")
TEST_RULE = ("paired difference run - reference per case; two-sided Wilcoxon signed-rank test "
             "(scipy.stats.wilcoxon, zero_method='wilcox': zero differences dropped)")


@dataclass
class CVRun:
    """One cross-validation as read back from its summary."""

    name: str
    folder: Path
    labels: list[str]
    #: case -> label -> Dice (NaN: undefined)
    scores: dict[str, dict[str, float]]
    #: case -> its fold
    fold_of: dict[str, int]
    spec: str | None = None
    mode: str | None = None
    leakage: dict[str, Any] | None = None
    #: ``settings`` of its cv_summary.json (None: written by an scnas that did not record them)
    settings: dict[str, Any] | None = None

    def values(self, label: str) -> list[float]:
        """The defined Dice of ``label`` over the cases."""
        return [s[label] for s in self.scores.values() if not math.isnan(s[label])]

    def fold_means(self, label: str) -> list[float]:
        """Each fold's mean Dice of ``label``."""
        folds = sorted(set(self.fold_of.values()))
        return [nanmean(self.scores[c][label] for c, k in self.fold_of.items() if k == fold) for fold in folds]


@dataclass
class Row:
    """One label of one run: spread over cases and folds, and the paired comparison with the reference."""

    label: str
    run: str
    cases: int
    mean_cases: float
    sd_cases: float
    folds: int
    mean_folds: float
    sd_folds: float
    pairs: int | None = None
    pairs_excluded: int | None = None
    mean_difference: float | None = None
    median_difference: float | None = None
    statistic: float | None = None
    p_value: float | None = None

    def to_json(self) -> dict[str, Any]:
        return json_safe(dict(self.__dict__))  # type: ignore[no-any-return]


@dataclass
class Comparison:
    """The report's content: the runs, one row per (label, run), notes, and the files written."""

    runs: list[CVRun]
    labels: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def table(self) -> str:
        """Plain text: per label, each run's mean ± sd over cases and its difference to the reference."""
        ref = self.runs[0].name
        width = max(len("run"), *(len(r.name) for r in self.runs))
        lines = [f"Dice (%): mean ± sd over cases; difference to {ref} (paired, per case) and Wilcoxon p"]
        for label in self.labels:
            lines.append(f"{label}:")
            for row in (r for r in self.rows if r.label == label):
                text = f"  {row.run:<{width}}  {_pct(row.mean_cases)} ± {_pct(row.sd_cases)}  ({row.cases} cases)"
                if row.pairs is not None:
                    text += f"  diff {_pct(row.mean_difference, signed=True)}  p {_p(row.p_value)}"
                lines.append(text)
        return "\n".join(lines)


def _pct(v: float | None, signed: bool = False) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    return f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}"


def _p(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.3g}"


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def read_cv(folder: Path, name: str, checkpoint: str = "last") -> CVRun:
    """The per-case scores of the cross-validation in ``folder``; RunError when it is not one, is unfinished or
    has no per-case scores."""
    folder = Path(folder)
    if not folder.exists():
        raise RunError(f"{folder}: no such folder (give folders that scnas cv --out wrote)")
    if not folder.is_dir() or not (folder / CV_MARKER).is_file():
        raise RunError(f"{folder}: not a cross-validation folder (no {CV_MARKER}; give folders that scnas cv "
                       "--out wrote)")
    path = folder / f"cv_summary{summary_suffix(checkpoint)}.json"
    resume = f"scnas cv ... --out {folder} --resume" + ("" if checkpoint == "last" else f" --checkpoint {checkpoint}")
    if not path.is_file():
        raise RunError(f"{folder}: has no {path.name}: the cross-validation has not finished (of the {checkpoint} "
                       f"weights); finish it with {resume}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunError(f"{path}: cannot be read ({err})") from err
    if isinstance(raw, dict) and ("case_scores" not in raw or "label_names" not in raw):
        raise RunError(f"{path}: has no per-case scores (written by an older scnas); score it again with {resume} "
                       "(finished folds are not retrained)")
    try:
        summary = _CVSummary.model_validate(raw).model_dump()
    except ValidationError as err:
        where = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'the file'}: {e['msg']}" for e in err.errors()[:3])
        raise RunError(f"{path}: not a cross-validation summary scnas wrote ({where}); score it again with "
                       f"{resume}") from err
    run, total = summary.get("folds_run", []), summary.get("folds_total", 0)
    if len(run) < total:
        raise RunError(f"{folder}: unfinished, {len(run)} of {total} folds scored "
                       f"({', '.join(map(str, run)) or 'none'}); run every fold with {resume} (without --fold)")
    labels = list(summary["label_names"])
    scores = {str(e["case"]): {n: _num(e["dice"].get(n)) for n in labels} for e in summary["case_scores"]}
    fold_of = {str(e["case"]): int(e["fold"]) for e in summary["case_scores"]}
    return CVRun(name=name, folder=folder, labels=labels, scores=scores, fold_of=fold_of, spec=summary.get("spec"),
                 mode=summary.get("mode"), leakage=summary.get("leakage"), settings=summary.get("settings"))


class _CaseScore(BaseModel):
    case: str
    fold: int
    dice: dict[str, float | None]


class _CVSummary(BaseModel):
    """``cv_summary.json`` as compare reads it (what it does not use may be anything)."""

    model_config = ConfigDict(extra="allow")
    label_names: list[str]
    case_scores: list[_CaseScore]
    folds_run: list[int] = Field(default_factory=list)
    folds_total: int = 0
    spec: str | None = None
    mode: str | None = None
    leakage: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None


def _check_report_folder(report: Path, force: bool) -> None:
    state = folder_state(report, COMPARE_MARKER)
    if state == "foreign":
        raise foreign_folder(report, "a report folder scnas compare made", "--force", "-o")
    if state == "ours":
        if not force:
            raise RunError(f"{report}: already exists; use --force to replace it, or choose another -o")


#: the settings whose difference gets a note: (key in cv_summary.json ``settings``, what the note calls it)
COMPARED_SETTINGS = (("stem_width", "stem width"), ("mirror", "test-time mirroring"), ("epochs", "epochs"),
                     ("patch", "patch"), ("spacing", "spacing"), ("deep_supervision", "deep supervision levels"))


def _show(key: str, value: Any) -> str:
    """A setting as the notes write it: ``on``/``off``, ``128x128x128``, ``none`` for no deep supervision,
    ``fold 0: 68, fold 1: 32`` where the folds differ."""
    if isinstance(value, dict):
        return ", ".join(f"fold {k}: {_show(key, v)}" for k, v in value.items())
    if isinstance(value, bool):
        return "on" if value else "off"
    if key == "deep_supervision" and value == []:
        return "none"
    if isinstance(value, list):
        return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return "?" if value is None else str(value)


def _check_settings(run: CVRun, ref: CVRun) -> str | None:
    """RunError when ``run`` and ``ref`` are cross-validations of data sets of different names; a note naming
    the settings that differ (data set folder, mirroring, stem width, ...), None when none does."""
    a, b = run.settings or {}, ref.settings or {}
    name_a, name_b = (a.get("data") or {}).get("name"), (b.get("data") or {}).get("name")
    if name_a and name_b and name_a != name_b:
        raise RunError(f"{run.folder} and {ref.folder} are cross-validations of different data sets ('{name_a}' and "
                       f"'{name_b}'): cases with the same ids are other images there, so the per-case pairs mean "
                       "nothing; compare cross-validations of the same data set")
    if not (a and b):
        return None
    differ = []
    path_a, path_b = (a.get("data") or {}).get("path"), (b.get("data") or {}).get("path")
    if path_a != path_b:
        differ.append(f"data set folder {path_a} vs {path_b} (same name '{name_a}': check it holds the same cases)")
    differ += [f"{what} {_show(key, a.get(key))} vs {_show(key, b.get(key))}" for key, what in COMPARED_SETTINGS
               if json.dumps(a.get(key)) != json.dumps(b.get(key))]
    if not differ:
        return None
    return (f"{run.name} differs from {ref.name} in {'; '.join(differ)}: its differences in Dice are not the "
            "networks' alone")


def _check_same(runs: list[CVRun]) -> list[str]:
    """The runs must be of the same data set (by name) and score the same labels and cases (RunError naming
    what is missing); notes on differences that do not stop the comparison (settings, other folds, the same
    folder twice, settings not recorded)."""
    ref = runs[0]
    setting_notes = [note for run in runs[1:] if (note := _check_settings(run, ref)) is not None]
    for run in runs[1:]:
        missing, extra = [n for n in ref.labels if n not in run.labels], [n for n in run.labels if n not in ref.labels]
        if missing or extra:
            raise RunError(f"{run.folder} and {ref.folder} score different labels: {run.name} lacks "
                           f"{', '.join(missing) or 'none'}; {ref.name} lacks {', '.join(extra) or 'none'}; "
                           "compare cross-validations of the same data")
        for a, b in ((run, ref), (ref, run)):
            lacking = sorted(set(b.scores) - set(a.scores))
            if lacking:
                shown = ", ".join(lacking[:10]) + (f" and {len(lacking) - 10} more" if len(lacking) > 10 else "")
                raise RunError(f"{a.name} ({a.folder}) has no score for {len(lacking)} case(s) that {b.name} "
                               f"scored: {shown}; compare cross-validations of the same data and splits")
    notes = setting_notes
    seen: dict[Path, str] = {}
    for run in runs:
        where = run.folder.resolve()
        if where in seen:
            notes.append(f"{run.name} and {seen[where]} are the same folder ({run.folder}): their differences are "
                         "zero by construction")
        seen.setdefault(where, run.name)
    for run in runs:
        if not run.settings:
            notes.append(f"{run.name}: its cv_summary.json records no settings (written by an older scnas), so its "
                         "data set, stem width, mirroring, patch, spacing, epochs and deep supervision are not "
                         f"checked; scnas cv ... --out {run.folder} --resume records them (finished folds are not "
                         "retrained)")
    for run in runs[1:]:
        if run.fold_of != ref.fold_of:
            notes.append(f"{run.name} and {ref.name} put cases in other folds: the sd over folds compares "
                         "different folds (the per-case pairs are still pairs)")
    for run in runs:
        if run.leakage:
            notes.append(f"{run.name}: its genotype's search trained on {run.leakage.get('cases')} case(s) scored "
                         "there as validation cases (optimistic; see its cv_summary.json 'leakage')")
    return notes


def paired(run: CVRun, ref: CVRun, label: str) -> tuple[list[float], int]:
    """The per-case differences ``run - ref`` of ``label`` (cases where both are defined, in case order) and
    how many cases were left out (undefined in one run or both)."""
    diffs, excluded = [], 0
    for case in sorted(ref.scores):
        a, b = run.scores[case][label], ref.scores[case][label]
        if math.isnan(a) or math.isnan(b):
            excluded += 1
        else:
            diffs.append(a - b)
    return diffs, excluded


def wilcoxon(diffs: list[float]) -> tuple[float, float]:
    """(statistic, two-sided p) of the Wilcoxon signed-rank test of ``diffs``; NaN when every difference is
    zero or there is none."""
    from scipy import stats

    if not any(d != 0 for d in diffs):
        return math.nan, math.nan
    try:
        result = stats.wilcoxon(diffs, zero_method="wilcox", alternative="two-sided")
    except ValueError:
        return math.nan, math.nan
    return float(result.statistic), float(result.pvalue)


def _rows(runs: list[CVRun]) -> list[Row]:
    ref = runs[0]
    rows = []
    for label in ref.labels:
        for i, run in enumerate(runs):
            values, folds = run.values(label), run.fold_means(label)
            row = Row(label=label, run=run.name, cases=len(values), mean_cases=nanmean(values),
                      sd_cases=sample_std(values), folds=len(folds), mean_folds=nanmean(folds),
                      sd_folds=sample_std(folds))
            if i:
                diffs, excluded = paired(run, ref, label)
                row.pairs, row.pairs_excluded = len(diffs), excluded
                row.mean_difference = nanmean(diffs)
                row.median_difference = statistics.median(diffs) if diffs else math.nan
                row.statistic, row.p_value = wilcoxon(diffs)
            rows.append(row)
    return rows


def _slug(label: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "label"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}_{n}", n + 1
    taken.add(slug)
    return slug


def _box_figure(runs: list[CVRun], label: str) -> Figure:
    """One box per run of the per-case Dice of ``label`` (undefined cases left out), every case once as a
    point (no flier markers: an outlier would be drawn twice; the whiskers still end at 1.5 IQR)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1.6 + 1.3 * len(runs), 4.2))
    axes = figure.add_subplot(1, 1, 1)
    data = [run.values(label) for run in runs]
    axes.boxplot(data, showmeans=True, showfliers=False)
    axes.set_xticks(range(1, len(runs) + 1), [run.name for run in runs], rotation=20, ha="right")
    for i, values in enumerate(data, start=1):
        spread = [i + 0.12 * ((j * 0.618) % 1 - 0.5) for j in range(len(values))]  # fixed jitter, reproducible
        axes.scatter(spread, values, s=10, alpha=0.6, color="#1f77b4", zorder=3)
    axes.set_ylabel("Dice per case (triangle: mean)")
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(label, fontsize=11)
    figure.tight_layout()
    return figure


def _box_plot(runs: list[CVRun], label: str, path: Path) -> Path:
    _box_figure(runs, label).savefig(path, dpi=100)
    return path


def _markdown(result: Comparison) -> str:
    ref = result.runs[0]
    lines = ["# Comparison of cross-validations: Dice (%)", "", f"Reference: **{ref.name}**.", "",
             "| run | folder | kind | spec |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.name} | {r.folder} | {r.mode or '?'} | {r.spec or '?'} |" for r in result.runs]
    for label in result.labels:
        lines += ["", f"## {label}", "",
                  f"| run | cases | mean ± sd over cases | folds | mean ± sd over folds | difference to {ref.name} "
                  "(mean / median) | pairs (excluded) | Wilcoxon p |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for row in (r for r in result.rows if r.label == label):
            paired_cells = ("| (reference) | | |" if row.pairs is None else
                            f"| {_pct(row.mean_difference, True)} / {_pct(row.median_difference, True)} | "
                            f"{row.pairs} ({row.pairs_excluded}) | {_p(row.p_value)} |")
            lines.append(f"| {row.run} | {row.cases} | {_pct(row.mean_cases)} ± {_pct(row.sd_cases)} | {row.folds} | "
                         f"{_pct(row.mean_folds)} ± {_pct(row.sd_folds)} " + paired_cells)
    lines += ["", f"- {SD_RULE}.", f"- {TEST_RULE}; p n/a when every difference is zero.", f"- {NAN_RULE}."]
    lines += [f"- note: {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def compare_runs(folders: list[Path], report: Path, names: list[str] | None = None, checkpoint: str = "last",
                 force: bool = False) -> Comparison:
    """Compare the cross-validations in ``folders`` (the first is the reference) and write the report into
    ``report``."""
    folders = [Path(f) for f in folders]
    report = Path(report)
    if len(folders) < 2:
        raise RunError(f"compare needs at least 2 cv folders (got {len(folders)}): the first is the reference")
    if checkpoint not in CHECKPOINTS:
        raise RunError(f"unknown checkpoint '{checkpoint}': use last (the default) or best")
    if names is not None and len(names) != len(folders):
        raise RunError(f"{len(names)} name(s) for {len(folders)} cv folders: give one --names entry per folder")
    names = names or [f.resolve().name for f in folders]
    if len(set(names)) != len(names):
        raise RunError(f"the runs' names are not distinct ({', '.join(names)}); give distinct ones with --names")
    refuse_data_set(report)
    _check_report_folder(report, force)
    runs = [read_cv(f, n, checkpoint) for f, n in zip(folders, names, strict=True)]
    notes = _check_same(runs)
    result = Comparison(runs=runs, labels=list(runs[0].labels), rows=_rows(runs), notes=notes)
    replace_folder(report, COMPARE_MARKER, "scnas compare\n")
    result.files = _write(result, report, checkpoint)
    return result


def _write(result: Comparison, report: Path, checkpoint: str) -> list[Path]:
    files = [report / "report.md", report / "report.csv", report / "report.json"]
    write_text(files[0], _markdown(result))
    keys = ["label", "run", "cases", "mean_cases", "sd_cases", "folds", "mean_folds", "sd_folds", "pairs",
            "pairs_excluded", "mean_difference", "median_difference", "statistic", "p_value"]
    with files[1].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(keys)
        for row in result.rows:
            writer.writerow(["" if (v := getattr(row, k)) is None or (isinstance(v, float) and math.isnan(v))
                             else (f"{v:.6g}" if isinstance(v, float) else v) for k in keys])
    runs = result.runs
    write_text(files[2], json.dumps(json_safe({
        "reference": runs[0].name, "checkpoint": checkpoint,
        "runs": [{"name": r.name, "folder": str(r.folder), "mode": r.mode, "spec": r.spec, "leakage": r.leakage,
                  "settings": r.settings} for r in runs],
        "labels": result.labels, "rows": [r.to_json() for r in result.rows],
        "per_case": {label: {case: {r.name: r.scores[case][label] for r in runs} for case in sorted(runs[0].scores)}
                     for label in result.labels},
        "rules": {"sd": SD_RULE, "test": TEST_RULE, "undefined_dice": NAN_RULE}, "notes": result.notes,
    }), indent=1) + "\n")
    taken: set[str] = set()
    for label in result.labels:
        files.append(_box_plot(runs, label, report / f"box_{_slug(label, taken)}.png"))
    return files
