"""``scnas cv``: cross-validation of a genotype (and its report)."""

from __future__ import annotations

from pathlib import Path

import typer

from scnas_dsl.cli.run import (
    BATCH,
    BATCHES,
    CONFIG,
    DATA,
    DEVICE,
    EPOCHS,
    FORCE,
    MEDIAN,
    NO_AUG,
    PATCH,
    RESUME,
    RUN_QUIET,
    SEED,
    SPACING,
    STEM,
    WORKERS,
    _common,
    user_errors,
)


@user_errors
def cv_cmd(
    genotype: Path = typer.Argument(..., help="the genotype to retrain on every fold"),  # noqa: B008
    data: str = DATA,
    out: Path = typer.Option(..., "--out", help="folder for fold_0 ... fold_4 and the summary"),  # noqa: B008
    folds: list[int] | None = typer.Option(None, "--fold", help="folds to run (repeatable) (default: all 5)"),  # noqa: B008
    epochs: int | None = EPOCHS, batch_size: int | None = BATCH, patch: tuple[int, int, int] | None = PATCH,
    stem_width: int | None = STEM, device: str | None = DEVICE, seed: int | None = SEED,
    resume: bool = RESUME, force: bool = FORCE, config: Path | None = CONFIG, batches: int | None = BATCHES,
    spacing: tuple[float, float, float] | None = SPACING, workers: int | None = WORKERS,
    no_augment: bool = NO_AUG, quiet: bool = RUN_QUIET, median: bool = MEDIAN,
    mirror: bool = typer.Option(False, "--mirror", help="test-time mirroring of the validation predictions"),
    val_every: int | None = typer.Option(None, "--val-every", help="validation every N epochs (default: 10)"),
    checkpoint: str = typer.Option("last", "--checkpoint",
                                   help="weights scored: last (default, as the paper) or best (chosen on the "
                                        "validation cases scored: optimistic)"),
) -> None:
    """Five-fold cross-validation of a genotype: retrain, predict, evaluate each fold; the paper's Dice table."""
    from scnas_dsl.train.config import TrainConfig, resolve_config
    from scnas_dsl.train.cv import run_cv, summary_suffix

    cfg = resolve_config(TrainConfig, config, genotype=str(genotype), val_every=val_every,
                         **_common(data, None, None, epochs, batch_size, patch, stem_width, device, seed, batches,
                                   spacing, workers, no_augment, quiet, median))
    result = run_cv(cfg, out, folds or None, mirror=mirror, resume=resume, force=force, checkpoint=checkpoint)
    typer.echo("mean Dice (%) per label")
    typer.echo(result.table())
    suffix = summary_suffix(checkpoint)
    typer.echo(f"written: {out / f'cv_summary{suffix}.csv'}, {out / f'cv_summary{suffix}.json'}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("cv")(cv_cmd)
