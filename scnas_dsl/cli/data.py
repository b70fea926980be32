"""The ``scnas data`` commands: ``check``, ``preprocess``, ``plan``, ``splits``, ``synth``.

Exit status: 0 success, 1 a problem with the data (every problem printed), 2 a usage problem (a folder that
does not exist, contradicting options). No command writes into the data set folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from scnas_dsl.cli.exits import usage, user_errors
from scnas_dsl.data.cache import MANIFEST
from scnas_dsl.errors import DataError

data_app = typer.Typer(
    name="data",
    help="Medical Segmentation Decathlon data: check, preprocess, plan, splits, synth.",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help, as the main app's
)


def _folder(path: Path) -> Path:
    if not path.exists():
        raise usage(f"{path}: no such folder")
    if not path.is_dir():
        raise usage(f"{path}: not a folder; give the data set folder (the one holding dataset.json)")
    return path


def _spacing(spacing: tuple[float, float, float] | None, median: bool) -> tuple[float, ...] | None:
    from scnas_dsl.data.preprocess import PAPER_SPACING

    if median and spacing is not None:
        raise usage("--spacing and --median-spacing exclude each other")
    if median:
        return None
    return tuple(spacing) if spacing is not None else PAPER_SPACING


SPACING_HELP = "target voxel size in mm (default the paper's 0.7 0.7 0.7)"
MEDIAN_HELP = "resample to the data set's median spacing (small demos: keeps volumes small)"
OUT_HELP = (
    "folder of the preprocessed data, bound to one spacing (default $SCNAS_CACHE/<name>-<hash>/<setting>, "
    "SCNAS_CACHE=~/.cache/scnas)"
)


@data_app.command("check")
@user_errors
def check_cmd(
    folder: Path = typer.Argument(..., help="the data set folder (with dataset.json)"),  # noqa: B008
    as_json: bool = typer.Option(False, "--json", help="print the problems as JSON"),
    workers: int = typer.Option(1, "--workers", min=1, help="cases read in parallel"),
) -> None:
    """Check every case of a data set and report every problem at once (reads only)."""
    from scnas_dsl.data.dataset import check_dataset

    _folder(folder)
    problems = check_dataset(folder, workers=workers)
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {"case": p.case, "file": str(p.file) if p.file else None, "message": p.message}
                    for p in problems
                ],
                indent=1,
            )
        )
    else:
        for problem in problems:
            typer.echo(str(problem), err=True)
    if problems:
        if not as_json:
            typer.echo(f"{len(problems)} problem(s) in {folder}", err=True)
        raise typer.Exit(1)
    if not as_json:
        from scnas_dsl.data.dataset import open_dataset

        dataset = open_dataset(folder)
        typer.echo(
            f"{folder}: ok ({dataset.layout} layout, {len(dataset.cases)} training case(s), "
            f"{len(dataset.test_images)} test case(s), channels {', '.join(dataset.modalities)})"
        )


@data_app.command("preprocess")
@user_errors
def preprocess_cmd(
    folder: Path = typer.Argument(..., help="the data set folder (with dataset.json)"),  # noqa: B008
    spacing: tuple[float, float, float] = typer.Option(None, "--spacing", help=SPACING_HELP),  # noqa: B008
    median_spacing: bool = typer.Option(False, "--median-spacing", help=MEDIAN_HELP),
    out: Path = typer.Option(None, "--out", help=OUT_HELP),  # noqa: B008
    workers: int = typer.Option(1, "--workers", min=1, help="cases processed in parallel"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar on stderr"),
) -> None:
    """Orient, crop, resample and normalise every training case into a cache (reused when unchanged)."""
    from scnas_dsl.data.preprocess import preprocess_dataset
    from scnas_dsl.data.resample import preprocessed_note

    _folder(folder)
    target = _spacing(spacing, median_spacing)
    pre = preprocess_dataset(folder, out=out, spacing=target, workers=workers, progress=progress)
    reused = len(pre.case_ids) - len(pre.redone)
    typer.echo(
        f"{pre.root}: {len(pre.case_ids)} case(s) at spacing "
        f"{' x '.join(f'{s:g}' for s in pre.spacing)} mm ({len(pre.redone)} processed, {reused} reused)"
    )
    _note(preprocessed_note(pre))


def _note(note: str | None) -> None:
    """A spacing note (docs/data.md, "Spacing that fits the data") on stderr: advice, not an error."""
    if note is not None:
        typer.echo(note, err=True)


def _open_preprocessed(folder: Path, out: Path | None):
    """The preprocessed data in ``out``, or the data set's one folder in the default cache (None: none yet)."""
    from scnas_dsl.data.dataset import open_dataset
    from scnas_dsl.data.preprocess import Preprocessed, cache_root, find_preprocessed

    if out is not None:
        return Preprocessed(out) if (out / MANIFEST).exists() else None
    dataset = open_dataset(folder)
    found = find_preprocessed(dataset)
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataError(
            f"{folder}: preprocessed with several settings in {cache_root(dataset)} ({names}); "
            "choose one with --out FOLDER"
        )
    return Preprocessed(found[0])


@data_app.command("plan")
@user_errors
def plan_cmd(
    folder: Path = typer.Argument(..., help="the data set folder (with dataset.json)"),  # noqa: B008
    memory_gb: float = typer.Option(16.0, "--memory-gb", help="memory budget of one device in GB"),
    spec: Path = typer.Option(None, "--spec", help="a .scn space or genotype: use the compiler's estimate"),  # noqa: B008
    out: Path = typer.Option(None, "--out", help=OUT_HELP),  # noqa: B008
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
) -> None:
    """Fingerprint the data set and choose patch and batch size (preprocessed data if there is any)."""
    from scnas_dsl.data.dataset import open_dataset
    from scnas_dsl.data.plan import plan
    from scnas_dsl.data.preprocess import PAPER_SPACING
    from scnas_dsl.data.resample import preprocessed_note, spacing_note

    _folder(folder)
    if spec is not None and not spec.is_file():
        raise usage(f"{spec}: no such file")
    pre = _open_preprocessed(folder, out)
    source = pre if pre is not None else open_dataset(folder)
    estimator, divisor = None, 8
    if spec is not None:
        modalities = pre.dataset.modalities if pre is not None else source.modalities  # type: ignore[union-attr]
        labels = pre.dataset.labels if pre is not None else source.labels  # type: ignore[union-attr]
        from scnas_dsl.loader import load
        from scnas_dsl.model.wiring import reductions
        from scnas_dsl.nn.cost import memory_model

        space, genotype = load(spec).subject()  # the loader's rule: a file with a genotype is about it
        if space.unet.dims != 3:
            raise DataError(f"{spec}: a {space.unet.dims}D space cannot be planned for 3D patches")
        estimator = memory_model(space, genotype, len(modalities), max(labels) + 1)
        divisor = 2 ** reductions(space)  # the spec's U-Net: the patch divides by this
    result = plan(source, memory_gb=memory_gb, spec_estimator=estimator, divisor=divisor)
    # preprocessed: its target against its cases' spacing; raw: what the default 0.7 mm would do
    _note(preprocessed_note(pre) if pre is not None else spacing_note(result.median_spacing, PAPER_SPACING))
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=1))
        return
    where = f"preprocessed data in {pre.root}" if pre is not None else "raw images (run preprocess for more)"
    lines = [
        f"data set      {folder} ({where})",
        f"cases         {result.num_cases}; channels {', '.join(result.modalities)}",
        f"median shape  {' x '.join(map(str, result.median_shape))} at "
        f"{' x '.join(f'{s:.3g}' for s in result.median_spacing)} mm",
    ]
    for c, stats in enumerate(result.intensity):
        lines.append(
            f"channel {c}     foreground mean {stats['mean']:.4g}, std {stats['std']:.4g}, "
            f"0.5-99.5% [{stats['p00_5']:.4g}, {stats['p99_5']:.4g}]"
        )
    if result.class_frequencies:
        lines.append(
            "classes       " + ", ".join(f"{k}: {v:.2%}" for k, v in result.class_frequencies.items())
        )
    lines.append(
        f"patch size    {' x '.join(map(str, result.patch_size))}, batch size {result.batch_size} "
        f"(estimate {result.estimate_bytes / 1e9:.2f} of {memory_gb:g} GB; {result.rule})"
    )
    typer.echo("\n".join(lines))


@data_app.command("splits")
@user_errors
def splits_cmd(
    folder: Path = typer.Argument(..., help="the data set folder (with dataset.json)"),  # noqa: B008
    fold: int = typer.Option(None, "--fold", help="show only this fold (0-based)"),
    seed: int = typer.Option(12345, "--seed", help="seed of new splits"),
    splits: Path = typer.Option(None, "--splits", help="nnU-Net splits_final.json to use exactly"),  # noqa: B008
    out: Path = typer.Option(None, "--out", help=OUT_HELP),  # noqa: B008
) -> None:
    """Show the cross-validation folds and each fold's 4:1 weight/architecture split (made and recorded once)."""
    from scnas_dsl.data.splits import get_fold, load_folds

    _folder(folder)
    pre = _open_preprocessed(folder, out)
    if pre is None:
        raise DataError(f"{folder}: not preprocessed yet; run `scnas data preprocess {folder}` first")
    folds, source = load_folds(pre, seed, splits)
    chosen = [fold] if fold is not None else list(range(len(folds)))
    typer.echo(f"{len(folds)} fold(s) from {source}")
    for k in chosen:
        split = get_fold(pre, k, seed, splits)
        typer.echo(
            f"fold {k}: train {len(split.train)} (weights {len(split.weight_part)}, architecture "
            f"{len(split.arch_part)}), val {len(split.val)}: {', '.join(split.val)}"
        )


@data_app.command("synth")
@user_errors
def synth_cmd(
    out: Path = typer.Argument(..., help="new folder for the generated data set"),  # noqa: B008
    task: str = typer.Option("brain", "--task", help="brain (4 channels, 3 labels), heart or lung (CT)"),
    cases: int = typer.Option(10, "--cases", min=1, help="labelled training cases"),
    test_cases: int = typer.Option(0, "--test-cases", min=0, help="unlabelled cases in imagesTs"),
    shape: tuple[int, int, int] = typer.Option((48, 48, 48), "--shape", help="voxels per case D H W"),  # noqa: B008
    seed: int = typer.Option(0, "--seed", help="the same seed writes the same files"),
    layout: str = typer.Option("msd", "--layout", help="msd (4D images) or nnunet (one file per channel)"),
) -> None:
    """Write a generated data set (learnable shapes, noise, bias field, anisotropic voxels, rotated affines)."""
    from scnas_dsl.data.synth import synthesize

    if task not in ("brain", "heart", "lung"):
        raise usage(f"--task {task!r}: choose brain, heart or lung")
    if layout not in ("msd", "nnunet"):
        raise usage(f"--layout {layout!r}: choose msd or nnunet")
    path = synthesize(
        out,
        task=task,  # type: ignore[arg-type]
        cases=cases,
        shape=shape,
        seed=seed,
        layout=layout,  # type: ignore[arg-type]
        test_cases=test_cases,
    )
    typer.echo(f"{path}: {cases} training and {test_cases} test case(s), task {task}, {layout} layout")


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to ``app``."""
    app.add_typer(data_app, name="data")
