"""``scnas compile FILE``: structure, parameters, MACs/FLOPs and training memory of a space (as a supernet)
or a genotype (as a fixed network); ``--emit torch -o net.py`` writes standalone PyTorch source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from scnas_dsl.cli.exits import usage, user_errors
from scnas_dsl.cli.options import OPS, operations
from scnas_dsl.errors import ScnasError
from scnas_dsl.files import write_text
from scnas_dsl.training.runs import GENOTYPE, NETWORK, trained_network


def _write_new(path: Path, text: str, force: bool) -> None:
    """Write ``text`` to ``path`` atomically; refuse to replace an existing file unless ``force``."""
    if path.exists() and not force:
        raise usage(f"{path} exists already; pass --force to overwrite it or choose another -o")
    if path.is_dir():
        raise usage(f"{path} is a directory; give a file name such as net.py")
    if not path.parent.exists():
        raise usage(f"{path.parent}: no such folder")
    write_text(path, text)


def _cost_text(report: Any, in_channels: int, classes: int, stem_width: int) -> str:
    """The report in words: FLOPs and memory with the prefix their size needs (a small network's MFLOPs do not
    read as ``0.00 GFLOPs``) and the exact counts a budget is checked against (``--json`` has them all)."""
    from scnas_dsl.nn.budget import si
    from scnas_dsl.nn.cost import format_bytes

    def memory(n: int) -> str:  # the budget's MB and the allocator's MiB
        return f"{si(n, 'B')} = {format_bytes(n)}"

    patch = "x".join(str(s) for s in report.patch)
    supernet = report.kind == "supernet"
    lines = [
        f"  compiled for in_channels {in_channels}, classes {classes}, stem width {stem_width}, "
        f"patch {patch}, batch {report.batch_size}",
        f"  parameters: {report.params:,}",
        f"  per sample forward{' (pair step, expected)' if supernet else ''}: {si(report.macs, 'MACs')} = "
        f"{si(report.flops, 'FLOPs')} ({report.flops:,} FLOPs; torch flop counter: convolutions, 2 FLOPs per "
        "multiply-add)",
    ]
    for name, step in report.steps.items():
        what = {"network": "training step", "full": "full step"}.get(name, f"{name} step (expected)")
        lines.append(
            f"  {what}: forward {si(step.flops, 'FLOPs')}/sample, memory {memory(step.memory_bytes)} "
            f"({step.memory_bytes:,} bytes for batch {report.batch_size}: activations "
            f"{format_bytes(step.activation_bytes)}, weights {format_bytes(step.weight_bytes)}, "
            f"gradients {format_bytes(step.gradient_bytes)}, Adam {format_bytes(step.optimizer_bytes)})"
        )
    # a supernet's cells are measured on the full pass (every candidate of every edge): say so, so that they
    # are not read as parts of the pair step's total above
    lines.append("  per cell (full supernet: every candidate operation runs; parameters of every candidate):"
                 if supernet else "  per cell:")
    for cell in report.cells:
        lines.append(f"    {cell.index:>2} {cell.instance:<10} params {cell.params:>12,}  "
                     f"{si(cell.flops, 'FLOPs'):>14}")
    return "\n".join(lines)


@user_errors
def compile_cmd(
    file: Path = typer.Argument(..., help="a .scn file with a space or a genotype, or a run folder of scnas "  # noqa: B008
                                          "train (its genotype, channels, classes, width and heads)"),
    genotype_name: str = typer.Option(None, "--genotype", help="which genotype of FILE (default: the only one)"),
    space_name: str = typer.Option(None, "--space", help="compile this space as a supernet, not a genotype"),
    patch: tuple[int, int, int] = typer.Option(  # noqa: B008
        None, "--patch", help="patch size D H W (2D spaces use H W of it); default 128 per dimension, or the run's"),
    in_channels: int = typer.Option(None, "--in-channels", min=1,
                                    help="input channels (modalities) [default: 1, or the run's]"),
    classes: int = typer.Option(None, "--classes", min=1,
                                help="output classes (channels of the logits) [default: 2, or the run's]"),
    stem_width: int = typer.Option(None, "--stem-width", min=1, help="override the stem width of the spec"),
    deep_supervision: bool = typer.Option(
        None, "--deep-supervision/--no-deep-supervision",
        help="build the deep-supervision heads (default: as the spec says, or as the run trained); the emitted "
             "file must match the weights it will load"),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="batch size of the memory estimate"),
    as_json: bool = typer.Option(False, "--json", help="print JSON (params, macs, flops, arch_logits, ...)"),
    emit: str = typer.Option(None, "--emit", help="'torch': write standalone PyTorch source (needs -o)"),
    output: Path = typer.Option(None, "-o", "--output", help="file to write with --emit"),  # noqa: B008
    force: bool = typer.Option(False, "--force", help="overwrite the -o file if it exists"),
    ops: list[str] | None = OPS,
) -> None:
    """Compile FILE: the structure, parameters, MACs/FLOPs per cell and in total, and training memory of a
    genotype's fixed network or of a space's supernet (expected pair and full steps)."""
    from scnas_dsl.graph.summary import render_text, summarize
    from scnas_dsl.loader import load

    if not file.exists():
        raise usage(f"{file}: no such file")
    extra = operations(ops)
    blame = str(file)  # what an error of the count names: the file, or a run folder's two records
    if file.is_dir():  # a training run: compile the network it trained, as scnas predict rebuilds it
        blame = f"{file / NETWORK} with {file / GENOTYPE}"
        file, recipe = trained_network(file, extra)
        in_channels = in_channels or recipe.in_channels
        classes = classes or recipe.num_classes
        stem_width = stem_width or recipe.stem_width
        if deep_supervision is None and recipe.deep_supervision is not None:
            deep_supervision = recipe.deep_supervision
        if patch is None:  # the run's windows, not 128 per dimension
            patch = tuple(recipe.patch)  # type: ignore[assignment]
    in_channels, classes = in_channels or 1, classes or 2
    if emit is not None and emit != "torch":
        raise usage(f"--emit {emit}: the only target is 'torch'")
    if emit is not None and output is None:
        raise usage("--emit torch needs -o FILE.py")
    if output is not None and emit is None:
        raise usage("-o is for --emit torch")
    if space_name is not None and genotype_name is not None:
        raise usage("--space and --genotype exclude each other")
    loaded = load(file, signatures=extra.library.signatures)
    space, genotype = loaded.subject(space_name, genotype_name)
    if emit is not None and genotype is None:
        raise usage(f"{file}: --emit torch needs a genotype (a space compiles to a supernet, not a file)")
    dims = space.unet.dims
    spatial = tuple(patch[-dims:]) if patch is not None else (128,) * dims

    from scnas_dsl.nn.cost import estimate

    width = stem_width or space.unet.stem.width or 0
    try:
        report = estimate(space, patch=spatial, batch_size=batch_size, genotype=genotype,
                          in_channels=in_channels, num_classes=classes, stem_width=stem_width,
                          deep_supervision=deep_supervision, library=extra.library)
    except ScnasError as err:
        raise ScnasError(f"{blame}: {err}") from err
    summary = summarize(space, genotype)
    if emit is not None:
        from scnas_dsl.nn.codegen import emit_torch

        assert genotype is not None and output is not None
        source = emit_torch(space, genotype, in_channels=in_channels, num_classes=classes,
                            stem_width=stem_width, deep_supervision=deep_supervision, library=extra.library)
        _write_new(output, source, force)
    if as_json:
        cost = report.to_dict()
        data = {**summary, "params": report.params, "macs": report.macs, "flops": report.flops,
                "memory_bytes": report.memory_bytes, "in_channels": in_channels, "classes": classes,
                "stem_width": width, "cost": cost}
        if genotype is not None:
            data["arch_logits"] = 0
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(render_text(summary))
        typer.echo(_cost_text(report, in_channels, classes, width))
    if emit is not None:
        typer.echo(f"wrote {output}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``scnas compile`` to ``app``."""
    app.command("compile")(compile_cmd)
