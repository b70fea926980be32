"""``scnas cv``: cross-validation of a genotype or of a search space (and its report); ``scnas compare``:
several cross-validations side by side."""

from __future__ import annotations

from pathlib import Path

import typer

from scnas_dsl.cli.exits import usage, user_errors
from scnas_dsl.cli.options import OPS, signatures
from scnas_dsl.cli.run import (
    AMP,
    DATA,
    DEEP,
    DEVICE,
    LOG,
    MEDIAN,
    NO_AUG,
    RUN_QUIET,
    SEED,
    SPACING,
    WORKERS,
    _common,
)

# cv's own texts for the options scnas search and scnas train share: in cv they set each fold's retraining
# (the search of a space has its --search-* options), and --resume / --force act on the folds
CV_EPOCHS = typer.Option(None, "--epochs", help="epochs of each fold's retraining (default: scnas train's, 500)")
CV_BATCH = typer.Option(None, "--batch-size", help="global batch size of each fold's retraining (default: scnas "
                                                   "train's, 8)")
CV_PATCH = typer.Option(None, "--patch", help="patch size D H W of each fold's retraining (default: 128^3 shrunk "
                                              "to the median shape)")
CV_STEM = typer.Option(None, "--stem-width", help="stem width of each fold's retraining (default: scnas train's)")
CV_BATCHES = typer.Option(None, "--batches-per-epoch", help="steps per epoch of each fold's retraining "
                                                            "(default: 250)")
CV_CONFIG = typer.Option(None, "--config", help="settings file of the retraining (.json, .toml, .yaml) as scnas "
                                                "train --config; the command line wins")
CV_RESUME = typer.Option(False, "--resume", help="continue the cross-validation in --out: finished folds are kept, "
                                                 "unfinished ones resumed")
CV_FORCE = typer.Option(False, "--force", help="redo the folds asked for in --out (only a folder scnas cv made)")


def _is_space(spec: Path, ops: list[str] | None = None) -> bool:
    """True when ``spec`` is about a space (a search per fold), by the loader's rule (``Loaded.subject``): a
    file with a genotype is about the genotype, even when it also defines a space."""
    from scnas_dsl.loader import load

    return load(spec, signatures=signatures(ops)).subject()[1] is None  # the loader's rule


@user_errors
def cv_cmd(
    spec: Path = typer.Argument(..., help="a genotype (retrained on every fold) or a search space (searched, "  # noqa: B008
                                          "derived and retrained on every fold: the paper's protocol)"),
    data: str = DATA,
    out: Path = typer.Option(..., "--out", help="folder for fold_0 ... fold_4 and the summary"),  # noqa: B008
    folds: list[int] | None = typer.Option(None, "--fold", help="folds to run (repeatable) (default: all)"),  # noqa: B008
    epochs: int | None = CV_EPOCHS, batch_size: int | None = CV_BATCH,
    patch: tuple[int, int, int] | None = CV_PATCH, stem_width: int | None = CV_STEM, device: str | None = DEVICE,
    seed: int | None = SEED, resume: bool = CV_RESUME, force: bool = CV_FORCE, config: Path | None = CV_CONFIG,
    batches: int | None = CV_BATCHES,
    spacing: tuple[float, float, float] | None = SPACING, workers: int | None = WORKERS,
    no_augment: bool = NO_AUG, quiet: bool = RUN_QUIET, median: bool = MEDIAN,
    mirror: bool = typer.Option(True, "--mirror/--no-mirror",
                                help="test-time mirroring of the validation predictions (default: on, as nnU-Net)"),
    val_every: int | None = typer.Option(None, "--val-every", help="validation every N epochs of each fold's "
                                                                   "retraining (default: 10)"),
    deep_supervision: bool | None = DEEP,
    ops: list[str] | None = OPS,
    amp: bool | None = AMP, log: str | None = LOG,
    checkpoint: str = typer.Option("last", "--checkpoint",
                                   help="weights scored: last (default, as the paper) or best (chosen on the "
                                        "validation cases scored: optimistic)"),
    search_epochs: int | None = typer.Option(None, "--search-epochs", help="(space) search epochs (default: 200)"),
    search_batch: int | None = typer.Option(None, "--search-batch-size", help="(space) search batch (default: 4)"),
    search_patch: tuple[int, int, int] | None = typer.Option(
        None, "--search-patch", help="(space) search patch D H W (default: 128^3 shrunk to the median shape)"),
    search_stem: int | None = typer.Option(None, "--search-stem-width", help="(space) search stem width (default: 48)"),
    search_batches: int | None = typer.Option(None, "--search-batches-per-epoch",
                                              help="(space) search steps per epoch (default: 250)"),
    sampling: str | None = typer.Option(None, "--sampling", help="(space) pair (the paper), single, full or fair"),
    select: str | None = typer.Option(None, "--select", help="(space) how each fold's search chooses its genotype: "
                                      "alpha (the paper's, default), projection or sampled (as scnas search)"),
    space: str | None = typer.Option(None, "--space", help="(space) which space of the file (default: the only one)"),
    budget: list[str] | None = typer.Option(  # noqa: B008
        None, "--budget", help="(space) limits on each fold's genotype, as scnas search --budget: flops=40G, "
        "params=5M, memory=12GB"),
    search_config: Path | None = typer.Option(  # noqa: B008
        None, "--search-config", help="(space) search settings file (.json, .toml, .yaml) as scnas search --config"),
) -> None:
    """Five-fold cross-validation: retrain a genotype on every fold, or (given a space) search, derive and
    retrain on every fold's training cases; predict and evaluate each fold; the paper's Dice table."""
    from scnas_dsl.studies.cv import run_cv, summary_suffix
    from scnas_dsl.training.config import SearchConfig, TrainConfig, resolve_config

    search_options = {"--search-epochs": search_epochs, "--search-batch-size": search_batch,
                      "--search-patch": search_patch, "--search-stem-width": search_stem,
                      "--search-batches-per-epoch": search_batches, "--sampling": sampling, "--space": space,
                      "--select": select, "--budget": budget, "--search-config": search_config}
    is_space = _is_space(spec, ops)
    given = [k for k, v in search_options.items() if v is not None]
    if given and not is_space:
        raise usage(f"{', '.join(given)} set(s) the search, but {spec} holds a genotype, which is retrained "
                    "without a search; give a search space to search on every fold")
    cfg = resolve_config(TrainConfig, config, genotype=str(spec), val_every=val_every,
                         deep_supervision=deep_supervision,
                         **_common(data=data, epochs=epochs, batch_size=batch_size, patch=patch, stem_width=stem_width,
                                   device=device, seed=seed, batches=batches, spacing=spacing, workers=workers,
                                   no_augment=no_augment, quiet=quiet, median=median, ops=ops, amp=amp, log=log))
    search = None
    if is_space:
        search = resolve_config(SearchConfig, search_config, spec=str(spec), space=space, sampling=sampling,
                                selection={"method": select} if select else None, budget=budget or None,
                                **_common(data=data, epochs=search_epochs, batch_size=search_batch, patch=search_patch,
                                          stem_width=search_stem, device=device, seed=seed, batches=search_batches,
                                          spacing=spacing, workers=workers, no_augment=no_augment, quiet=quiet,
                                          median=median, ops=ops, amp=amp, log=log))
    result = run_cv(cfg, out, folds or None, mirror=mirror, resume=resume, force=force, checkpoint=checkpoint,
                    search=search, echo=lambda line: typer.echo(line, err=True))
    typer.echo("mean Dice (%) per label")
    typer.echo(result.table())
    if result.leakage is not None:
        folds_hit = ", ".join(map(str, result.leakage.folds))
        typer.echo(f"warning: fold(s) {folds_hit} are scored on cases the genotype's search trained on (see the "
                   "warning above; recorded as 'leakage' in the summary)", err=True)
    suffix = summary_suffix(checkpoint)
    typer.echo(f"written: {out / f'cv_summary{suffix}.csv'}, {out / f'cv_summary{suffix}.json'}, "
               f"{out / f'cv_summary{suffix}.md'}, {out / f'cv_cases{suffix}.csv'}")
    if result.genotypes:
        typer.echo(f"genotypes: {out / 'genotypes'} (drawn in {out / 'genotypes' / 'genotypes.png'})")


@user_errors
def compare_cmd(
    runs: list[Path] = typer.Argument(..., help="cv folders (scnas cv --out) of the same data; the first is "  # noqa: B008
                                                "the reference"),
    names: list[str] | None = typer.Option(  # noqa: B008
        None, "--names", help="a name per cv folder, comma-separated or repeated (default: the folder names)"),
    report: Path = typer.Option(..., "-o", "--out", help="folder for report.md/.csv/.json and the box plots"),  # noqa: B008
    checkpoint: str = typer.Option("last", "--checkpoint", help="compare the cv results of the last (default) "
                                                                "or the best weights"),
    force: bool = typer.Option(False, "--force", help="replace an earlier report folder (only one scnas made)"),
) -> None:
    """Cross-validations side by side: per label mean and sd, the paired per-case difference to the first run
    with a Wilcoxon signed-rank test, and box plots."""
    from scnas_dsl.studies.compare import compare_runs

    split = [n.strip() for entry in names or [] for n in entry.split(",") if n.strip()]
    result = compare_runs(runs, report, names=split or None, checkpoint=checkpoint, force=force)
    typer.echo(result.table())
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"written: {', '.join(str(p) for p in result.files)}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("cv")(cv_cmd)
    app.command("compare")(compare_cmd)
