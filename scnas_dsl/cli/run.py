"""The trainer's commands: ``search``, ``train``, ``predict``, ``evaluate``, ``demo`` (``cv`` is in ``cli/cv.py``).

Exit status: 0 success, 1 a problem with the input or the run (message, no traceback), 2 a usage problem,
130 stopped by Ctrl-C or SIGTERM after saving a checkpoint (``--resume`` continues).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from scnas_dsl.cli.exits import usage, user_errors
from scnas_dsl.cli.options import BUDGET, OPS, SELECT

F = TypeVar("F", bound=Callable[..., Any])

# Options shared by search and train (typer needs one default object per option; these are only read).
DATA = typer.Option(..., "--data", help="data set folder (MSD or nnU-Net layout) or a preprocessed folder")
FOLD = typer.Option(None, "--fold", help="cross-validation fold, 0-4 (default: 0)")
OUT = typer.Option(None, "--out", help="run folder (default: runs/<kind>_<name>_fold<K>)")
EPOCHS = typer.Option(None, "--epochs", help="epochs (default: the paper's: 200 search, 500 train)")
BATCH = typer.Option(None, "--batch-size", help="global batch size (default: 4 search, 8 train)")
PATCH = typer.Option(None, "--patch", help="patch size D H W (default: 128^3 shrunk to the median shape)")
STEM = typer.Option(None, "--stem-width", help="stem width (default: 48 search, 68 train)")
DEVICE = typer.Option(None, "--device", help="auto, cpu or cuda (default: auto)")
SEED = typer.Option(None, "--seed", help="random seed (default: 0)")
RESUME = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint")
FORCE = typer.Option(False, "--force", help="replace an existing run folder (only one scnas made)")
CONFIG = typer.Option(None, "--config", help="settings file (.json, .toml, .yaml); the command line wins")
BATCHES = typer.Option(None, "--batches-per-epoch", help="steps per epoch (default: 250)")
SPACING = typer.Option(None, "--spacing", help="target voxel size in mm when preprocessing (default: 0.7^3)")
MEDIAN = typer.Option(False, "--median-spacing", help="preprocess at the data set's median voxel size")
WORKERS = typer.Option(None, "--workers", min=0,
                       help="data loader processes per loader (a search has three loaders), started once per run "
                            "(default: on a GPU min(4, CPUs per GPU process - 1), on the CPU 0: in the main process)")
NO_AUG = typer.Option(False, "--no-augment", help="switch data augmentation off")
QUIET = typer.Option(False, "--quiet", help="no progress bars")
CHECKPOINT_CELLS = typer.Option(
    None, "--checkpoint-cells/--no-checkpoint-cells",
    help="activation checkpointing per cell: keep only the cells' inputs and outputs, recompute each cell in "
         "its backward (less GPU memory, about 1.4x the time; same results). Default: on only when the "
         "GPU memory estimate says the step fits with it but not without")
COMPILE = typer.Option(None, "--compile/--no-compile",
                       help="torch.compile the network (faster steps on a GPU after minutes of compiling; on the "
                            "CPU compiling alone takes minutes); runs eagerly with a note where it cannot compile")
LOG = typer.Option(None, "--log", metavar="TRACKERS",
                   help="experiment trackers besides the run's own files: tensorboard, wandb or both, comma-separated "
                        "(RUN/tensorboard, RUN/wandb offline; pip install 'scnas_dsl[tracking]')")
AMP = typer.Option(None, "--amp/--no-amp",
                   help="mixed precision on CUDA (default on: bf16 where the GPU computes it natively, else fp16 "
                        "with a gradient scaler); --no-amp trains in float32. No effect on the CPU")
DEEP = typer.Option(None, "--deep-supervision/--no-deep-supervision",
                    help="segmentation heads on coarser decoder levels in the loss (default: as the spec says; on "
                         "without levels in the spec: every decoder level but the coarsest, as nnU-Net)")
RUN_QUIET = typer.Option(False, "--quiet",
                         help="no progress bars or per-epoch lines on the terminal (the run's log.txt keeps them)")


def _main_process() -> bool:
    """True except on the ranks other than 0 of a torchrun job (they stay silent, rank 0 reports)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _common(*, data: str, epochs: int | None, batch_size: int | None, patch: tuple[int, int, int] | None,
            stem_width: int | None, device: str | None, seed: int | None, batches: int | None,
            spacing: tuple[float, float, float] | None, workers: int | None, no_augment: bool, quiet: bool,
            median: bool, ops: list[str] | None = None, amp: bool | None = None, fold: int | None = None,
            out: Path | None = None, log: str | None = None) -> dict[str, Any]:
    """The settings search, train and cv share, as ``resolve_config`` keywords (None: not given)."""
    if median and spacing is not None:
        raise usage("--spacing and --median-spacing exclude each other")
    return {"data": data, "fold": fold, "out": str(out) if out else None, "epochs": epochs,
            "batch_size": batch_size, "patch": patch, "stem_width": stem_width, "device": device, "seed": seed,
            "batches_per_epoch": batches, "spacing": "median" if median else spacing, "workers": workers,
            "augment": False if no_augment else None, "progress": False if quiet else None,
            "ops": tuple(ops) if ops else None, "amp": amp, "log": log}


def _settings_file(config: Path | None, resume: bool, out: Path | None) -> Path | None:
    """``--config``; on ``--resume`` without one, the run's own ``config.json``: what is not given again on the
    command line is the run's (as nnU-Net continues a training with its own plans)."""
    from scnas_dsl.training.runs import CONFIG as RECORDED

    if config is not None or not resume or out is None or not (out / RECORDED).is_file():
        return config
    return out / RECORDED


@user_errors
def search_cmd(
    spec: Path = typer.Argument(..., help="the .scn file of the search space"),  # noqa: B008
    data: str = DATA, fold: int | None = FOLD, out: Path | None = OUT, epochs: int | None = EPOCHS,
    batch_size: int | None = BATCH, patch: tuple[int, int, int] | None = PATCH,
    stem_width: int | None = STEM,
    sampling: str | None = typer.Option(
        None, "--sampling", help="pair (the paper), single, full, or fair (FairNAS: trains the weights only, every "
        "candidate equally often; needs --select projection or sampled)"),
    select: str | None = SELECT, budget: list[str] | None = BUDGET,
    space: str | None = typer.Option(None, "--space", help="which space of the file (default: the only one)"),
    arch_warmup: int | None = typer.Option(
        None, "--arch-warmup", help="epochs that train only the weights before the logits learn (default: 0, "
        "the paper's)"),
    weight_betas: tuple[float, float] | None = typer.Option(
        None, "--weight-betas", help="Adam betas of the weights (default: 0.9 0.999; the paper prints 0.1 0.001)"),
    arch_betas: tuple[float, float] | None = typer.Option(
        None, "--arch-betas", help="Adam betas of the logits alpha (default: the paper's 0.5 0.999)"),
    device: str | None = DEVICE, seed: int | None = SEED, resume: bool = RESUME, force: bool = FORCE,
    config: Path | None = CONFIG, batches: int | None = BATCHES,
    spacing: tuple[float, float, float] | None = SPACING, workers: int | None = WORKERS,
    no_augment: bool = NO_AUG, quiet: bool = RUN_QUIET, median: bool = MEDIAN, ops: list[str] | None = OPS,
    amp: bool | None = AMP,
    checkpoint_cells: bool | None = CHECKPOINT_CELLS, log: str | None = LOG,
) -> None:
    """Search an architecture: bi-level optimisation with Gumbel-softmax pair sampling (the paper's defaults)."""
    from scnas_dsl.training.config import SearchConfig, resolve_config
    from scnas_dsl.training.search import run_search

    cfg = resolve_config(SearchConfig, _settings_file(config, resume, out), spec=str(spec), sampling=sampling, space=space,
                         selection={"method": select} if select else None, budget=budget or None,
                         arch_warmup_epochs=arch_warmup, checkpoint_cells=checkpoint_cells,
                         weight_optimizer={"betas": weight_betas} if weight_betas else None,
                         arch_optimizer={"betas": arch_betas} if arch_betas else None,
                         **_common(data=data, fold=fold, out=out, epochs=epochs, batch_size=batch_size, patch=patch,
                                   stem_width=stem_width, device=device, seed=seed, batches=batches, spacing=spacing,
                                   workers=workers, no_augment=no_augment, quiet=quiet, median=median, ops=ops,
                                   amp=amp, log=log))
    result = run_search(cfg, resume=resume, force=force)
    if result is not None and result.genotype_file.exists() and _main_process():
        typer.echo(f"genotype: {result.genotype_file}")
        for line in result.pruning:
            typer.echo(f"  {line}")
        if result.self_check is not None:
            typer.echo(result.self_check["text"])
        if result.budget is not None and result.budget_report:
            typer.echo(result.budget_report)
            for line in result.budget["gave_up"]:
                typer.echo(f"  gave up: {line}")
        typer.echo(f"plots: {result.run / 'plots'}")
        from scnas_dsl.training.budgeting import retrain_hint

        width = retrain_hint(result.budget)
        typer.echo(f"next: scnas train {result.genotype_file} --data {data}{width}"
                   + ("  (the width the budget was measured at; without it the retraining's width is 68)"
                      if width else ""))


@user_errors
def train_cmd(
    genotype: Path = typer.Argument(..., help="a .scn file with the genotype (e.g. a search's genotype.scn)"),  # noqa: B008
    data: str = DATA, fold: int | None = FOLD, out: Path | None = OUT, epochs: int | None = EPOCHS,
    batch_size: int | None = BATCH, patch: tuple[int, int, int] | None = PATCH,
    stem_width: int | None = STEM,
    name: str | None = typer.Option(None, "--genotype-name", help="which genotype of the file"),
    val_every: int | None = typer.Option(None, "--val-every", help="validation every N epochs (default: 10)"),
    mirror: bool | None = typer.Option(None, "--mirror/--no-mirror",
                                       help="mirror the validation's sliding windows along every spatial axis "
                                            "(default on, as nnU-Net; 8x the validation's work)"),
    deep_supervision: bool | None = DEEP, compile_network: bool | None = COMPILE,
    checkpoint_cells: bool | None = CHECKPOINT_CELLS,
    device: str | None = DEVICE, seed: int | None = SEED, resume: bool = RESUME, force: bool = FORCE,
    config: Path | None = CONFIG, batches: int | None = BATCHES,
    spacing: tuple[float, float, float] | None = SPACING, workers: int | None = WORKERS,
    no_augment: bool = NO_AUG, quiet: bool = RUN_QUIET, median: bool = MEDIAN, ops: list[str] | None = OPS,
    amp: bool | None = AMP, log: str | None = LOG,
) -> None:
    """Retrain a genotype (or a baseline) from scratch with the paper's optimiser, schedule and stopping rule."""
    from scnas_dsl.training.config import TrainConfig, resolve_config
    from scnas_dsl.training.retrain import run_train

    cfg = resolve_config(TrainConfig, _settings_file(config, resume, out), genotype=str(genotype), genotype_name=name, val_every=val_every,
                         mirror_validation=mirror, deep_supervision=deep_supervision, compile=compile_network,
                         checkpoint_cells=checkpoint_cells,
                         **_common(data=data, fold=fold, out=out, epochs=epochs, batch_size=batch_size, patch=patch,
                                   stem_width=stem_width, device=device, seed=seed, batches=batches, spacing=spacing,
                                   workers=workers, no_augment=no_augment, quiet=quiet, median=median, ops=ops,
                                   amp=amp, log=log))
    result = run_train(cfg, resume=resume, force=force)
    if result is not None and _main_process():
        dice = "n/a (no validation cases)" if result.best_epoch < 0 else (
            f"{result.best_dice:.4f} at epoch {result.best_epoch + 1}")
        typer.echo(f"run: {result.run} ({result.epochs} epochs, stopped by {result.stopped_by})")
        typer.echo(f"best validation mean foreground Dice: {dice}")
        typer.echo(f"next: scnas predict {result.run} --input IMAGES --output PREDICTIONS")


@user_errors
def predict_cmd(
    run: Path = typer.Argument(..., help="a run folder written by scnas train"),  # noqa: B008
    inputs: list[Path] = typer.Option(..., "--input", help="image files or folders (repeatable)"),  # noqa: B008
    output: Path = typer.Option(..., "--output", help="folder for <case>.nii.gz"),  # noqa: B008
    probabilities: bool = typer.Option(False, "--probabilities", help="also write probabilities/<case>.nii.gz"),
    mirror: bool = typer.Option(True, "--mirror/--no-mirror",
                                help="test-time mirroring along every spatial axis, 8 passes in 3D (default on, "
                                     "as nnU-Net); --no-mirror: one pass, about 8x faster"),
    checkpoint: str = typer.Option("last", "--checkpoint",
                                   help="last (default: no choice on validation, as the paper) or best "
                                        "(the best validation Dice during training)"),
    blend: str | None = typer.Option(None, "--blend", help="gaussian or constant (default: the run's)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    batch_size: int = typer.Option(2, "--batch-size", help="windows per forward pass"),
    force: bool = typer.Option(False, "--force", help="overwrite existing predictions"),
    compile_network: bool = typer.Option(False, "--compile/--no-compile",
                                         help="torch.compile the network first (pays off on a GPU with many "
                                              "cases; runs eagerly with a note where it cannot compile)"),
    quiet: bool = QUIET, ops: list[str] | None = OPS,
) -> None:
    """Segment images with a trained run; label maps on the original grid, one <case>.nii.gz per case."""
    from scnas_dsl.prediction.predict import predict_run

    made = predict_run(run, inputs, output, probabilities=probabilities, mirror=mirror, device=device,
                       checkpoint=checkpoint, batch_size=batch_size, force=force, progress=not quiet, blend=blend,
                       ops=tuple(ops or ()), compile_network=compile_network)
    continued = f"; {len(made.continued)} kept from the stopped call before" if made.continued else ""
    typer.echo(f"{len(made.files)} prediction(s) written to {output} with the {made.weights.label()} "
               f"(recorded in {made.record.name}{continued})")


@user_errors
def evaluate_cmd(
    pred: Path = typer.Option(..., "--pred", help="folder of predictions <case>.nii.gz"),  # noqa: B008
    ref: Path = typer.Option(..., "--ref", help="folder of references <case>.nii.gz (e.g. labelsTr)"),  # noqa: B008
    labels: list[int] | None = typer.Option(None, "--labels", help="labels to score (repeatable)"),  # noqa: B008
    dataset: Path | None = typer.Option(None, "--dataset", help="data set folder: label names from its dataset.json (default: the one above --ref, if any)"),  # noqa: B008
    out: Path | None = typer.Option(None, "--out", help="folder for dice.csv/dice.json (default: --pred)"),  # noqa: B008
) -> None:
    """Dice per label and case (both masks empty: undefined, left out of the mean, as nnU-Net)."""
    from scnas_dsl.evaluation.metrics import evaluate_folders, label_names_from_dataset

    if dataset is None and (ref.parent / "dataset.json").is_file():
        dataset = ref.parent  # --ref is a data set's labelsTr: its dataset.json names the labels
    names = label_names_from_dataset(dataset) if dataset is not None else None
    result = evaluate_folders(pred, ref, labels=labels or None, label_names=names)
    typer.echo(result.table())
    if result.missing:
        typer.echo(f"note: {len(result.missing)} reference case(s) have no prediction and were not scored: "
                   f"{', '.join(result.missing[:5])}{' ...' if len(result.missing) > 5 else ''}", err=True)
    csv_path, json_path = result.write(out or pred)
    typer.echo(f"written: {csv_path}, {json_path}")


@user_errors
def demo_cmd(
    out: Path = typer.Argument(Path("scnas-demo"), help="folder for everything the demo makes"),  # noqa: B008
    force: bool = typer.Option(False, "--force", help="replace an earlier demo folder"),
    quick: bool = typer.Option(False, "--quick", help="a tiny budget (a smoke test, not a result)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    quiet: bool = QUIET,
) -> None:
    """Generate data, search, derive, retrain, predict and evaluate: the whole method in a few minutes."""
    from scnas_dsl.studies.demo import DemoSettings, run_demo

    result = run_demo(out, DemoSettings.quick() if quick else None, force=force, progress=not quiet,
                      echo=typer.echo, device=device)
    typer.echo(f"evaluated:   the {result.weights.label()}")
    typer.echo(result.evaluation.table())
    minutes, seconds = divmod(int(round(result.seconds)), 60)
    typer.echo(f"done in {minutes} min {seconds:02d} s")
    typer.echo(f"genotype:    {result.genotype}")
    typer.echo(f"plots:       {result.search_plots}")
    typer.echo(f"predictions: {result.predictions}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("search")(search_cmd)
    app.command("train")(train_cmd)
    app.command("predict")(predict_cmd)
    app.command("evaluate")(evaluate_cmd)
    app.command("demo")(demo_cmd)
