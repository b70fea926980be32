"""``scnas export SOURCE --format onnx|torch-export -o FILE``: a trained network as a plain model for deployment
(see ``scnas_dsl.deployment.export`` and ``docs/deploy.md``); ``--format monai-bundle -o DIR``: a run folder as a
MONAI bundle (``scnas_dsl.deployment.monai_bundle``).

SOURCE is a ``scnas train`` run folder, or a genotype file with ``--weights STATE.pt --in-channels N --classes K``.
Exit status: 0 exported and verified, 1 a problem with the input or the export (message, no traceback), 2 a usage
problem.
"""

from __future__ import annotations

from pathlib import Path

import typer

from scnas_dsl.cli.exits import usage, user_errors
from scnas_dsl.cli.options import OPS
from scnas_dsl.folders import refuse_data_set, refuse_inputs


@user_errors
def export_cmd(
    source: Path = typer.Argument(..., metavar="RUN|GENOTYPE",  # noqa: B008
                                  help="a `scnas train` run folder, or a genotype .scn file with --weights"),
    fmt: str = typer.Option(..., "--format", "-f", help="onnx, torch-export or monai-bundle (a run folder's)"),
    output: Path = typer.Option(..., "-o", "--output",  # noqa: B008
                                help="file to write (.onnx or .pt2), or the bundle's folder"),
    patch: tuple[int, int, int] = typer.Option(  # noqa: B008
        None, "--patch", help="input patch D H W (default: the run's training patch); multiples of 2^levels"),
    dynamic: bool = typer.Option(False, "--dynamic", help="free spatial sizes (multiples of 2^levels)"),
    checkpoint: str = typer.Option("last", "--checkpoint", help="a run's last (default) or best weights"),
    weights: Path = typer.Option(None, "--weights", help="state dict for a genotype file"),  # noqa: B008
    in_channels: int = typer.Option(None, "--in-channels", min=1, help="input channels (genotype file)"),
    classes: int = typer.Option(None, "--classes", min=1, help="output classes (genotype file)"),
    stem_width: int = typer.Option(None, "--stem-width", min=1, help="stem width (genotype file; default: spec's)"),
    genotype_name: str = typer.Option(None, "--genotype", help="which genotype of the file (default: the only one)"),
    opset: int = typer.Option(17, "--opset", help="ONNX opset"),
    force: bool = typer.Option(False, "--force", help="overwrite -o"),
    ops: list[str] = OPS,  # noqa: B008
) -> None:
    """Export a trained network to ONNX or torch.export and verify it against PyTorch on a generated volume.
    The model maps a patch (1, C, D, H, W) to logits (1, K, D, H, W); sliding windows and mirroring stay
    outside (docs/deploy.md)."""
    from scnas_dsl.deployment import export as ex

    if fmt == "monai-bundle":
        _bundle(source, output, checkpoint=checkpoint, force=force, ops=tuple(ops or ()),
                genotype_options=[weights, in_channels, classes, stem_width, patch, genotype_name])
        return
    if fmt not in ex.FORMATS:
        raise usage(f"--format {fmt}: choose onnx, torch-export or monai-bundle")
    record_path = ex.record_path(output)
    refuse_inputs([output, record_path], [source, *([weights] if weights is not None else [])])
    refuse_data_set(output)
    for target in (output, record_path):
        if target.exists() and not force:
            raise usage(f"{target}: exists already; pass --force to overwrite it, or choose another -o")
    ex.check_record_replaceable(record_path)
    if source.is_dir():
        if weights is not None or in_channels is not None or classes is not None or stem_width is not None:
            raise usage("--weights, --in-channels, --classes and --stem-width are for a genotype file; a run "
                         "folder records them")
        item = ex.from_run(source, checkpoint, tuple(ops or ()))
    elif source.is_file():
        if weights is None or in_channels is None or classes is None:
            raise usage(f"{source}: a genotype file needs --weights STATE.pt --in-channels N --classes K "
                         "(or give a `scnas train` run folder)")
        item = ex.from_genotype(source, weights, in_channels=in_channels, num_classes=classes,
                                stem_width=stem_width, ops=tuple(ops or ()), name=genotype_name)
    else:
        raise usage(f"{source}: no such run folder or genotype file")
    chosen = patch if patch is not None else item.patch
    if chosen is None:
        raise usage("--patch D H W is needed for a genotype file (the size the model is checked at, and its "
                     "fixed input size without --dynamic)")
    result = ex.export_network(item.network, chosen, fmt, output, dynamic=dynamic, opset=opset, force=force)
    record = ex.write_record(result, item)
    size = "x".join(map(str, result.patch))
    what = f"ONNX opset {opset}" if fmt == "onnx" else "torch.export ExportedProgram"
    typer.echo(f"exported {item.source} to {output} ({what}; input (1, {item.in_channels}, {size}) -> logits "
               f"(1, {item.num_classes}, {size}){'; dynamic spatial size, multiples of ' + str(2 ** item.network.plan.levels) if dynamic else ''})")  # noqa: E501
    for spatial, diff in result.checks:
        runner = "onnxruntime" if fmt == "onnx" else "torch.export.load"
        typer.echo(f"  {runner} vs PyTorch at {'x'.join(map(str, spatial))}: max abs difference {diff:.3g} "
                   f"(tolerance {ex.TOLERANCE:g})")
    typer.echo(f"  record: {record}")


def _bundle(source: Path, output: Path, *, checkpoint: str, force: bool, ops: tuple[str, ...],
            genotype_options: list[object]) -> None:
    """``--format monai-bundle``: a run folder's network, weights, preprocessing and windows as a MONAI bundle."""
    from scnas_dsl.deployment.monai_bundle import write_bundle

    if not source.is_dir():
        raise usage(f"{source}: --format monai-bundle takes a `scnas train` run folder (its preprocessing and patch "
                     "go into the bundle's inference config)")
    if any(option is not None for option in genotype_options):
        raise usage("--weights, --in-channels, --classes, --stem-width, --patch and --genotype are not for a bundle: "
                     "the run folder records them")
    refuse_inputs([output], [source])
    refuse_data_set(output)
    result = write_bundle(source, output, which=checkpoint, ops=ops, force=force)
    spacing = " x ".join(f"{s:g}" for s in result.spacing) + " mm" if result.spacing else "the images' own"
    typer.echo(f"wrote the MONAI bundle {output}: network, weights, inference config (patch "
               f"{'x'.join(map(str, result.patch))}, spacing {spacing}, {result.normalization} normalisation); the "
               f"bundle's network against the run's: max abs difference {result.max_difference:.3g}")
    typer.echo(f"run it (from {output}): python -m monai.bundle run --config_file configs/inference.json "
               "--meta_file configs/metadata.json --dataset_dir DATA --output_dir OUT")


def register(app: typer.Typer) -> None:
    """Add ``scnas export`` to ``app``."""
    app.command("export")(export_cmd)
