"""The language commands: ``scnas check``, ``scnas fmt``, ``scnas draw`` (``scnas compile`` lives in
``scnas_dsl.cli.compile``).

Exit status: 0 when every file is fine (warnings do not count), 1 when a file has errors (or, for
``fmt --check``, is not in canonical form), 2 for a usage problem (a file that does not exist, a
directory, contradicting options).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from scnas_dsl.cli.exits import usage, user_errors
from scnas_dsl.cli.options import OPS, signatures
from scnas_dsl.errors import SpecError, message_for_user
from scnas_dsl.files import write_text
from scnas_dsl.model.diagnostics import render_all


def _existing(path: Path) -> None:
    if not path.exists():
        raise usage(f"{path}: no such file")
    if path.is_dir():
        raise usage(f"{path}: is a directory; give .scn files")


@user_errors
def check_cmd(files: list[Path] = typer.Argument(..., help=".scn files to check"),  # noqa: B008
              ops: list[str] | None = OPS) -> None:
    """Check .scn files: 'ok' per file, or every error with its place; warnings are printed too."""
    from scnas_dsl.loader import load

    for path in files:
        _existing(path)
    table = signatures(ops)
    failed = False
    for path in files:
        try:
            loaded = load(path, signatures=table)
        except SpecError as err:
            failed = True
            typer.echo(message_for_user(err), err=True)
            continue
        if loaded.warnings:
            typer.echo(render_all(loaded.warnings), err=True)
        what = [f"{len(loaded.document.spaces)} space{'s' if len(loaded.document.spaces) != 1 else ''}",
                f"{len(loaded.genotypes)} genotype{'s' if len(loaded.genotypes) != 1 else ''}"]
        typer.echo(f"{path}: ok ({', '.join(what)})")
    if failed:
        raise typer.Exit(1)


@user_errors
def fmt_cmd(
    file: Path = typer.Argument(..., help="the .scn file to format"),  # noqa: B008
    check: bool = typer.Option(False, "--check", help="exit 1 if the file is not in canonical form"),
    write: bool = typer.Option(False, "--write", help="rewrite the file in place (only when it checks)"),
) -> None:
    """Print FILE in canonical form, keeping its comments (or check it, or rewrite it).

    Like gofmt and black, fmt refuses only what does not parse (reported with line and column, exit 1, the file
    left alone). What parses is formatted, whatever 'scnas check' would say about its meaning (an import that
    cannot be found, an unknown operation): those problems are mentioned on stderr.
    """
    from scnas_dsl.graph.printer import format_text
    from scnas_dsl.loader import load, read_text

    if check and write:
        raise usage("--check and --write exclude each other")
    _existing(file)
    text = read_text(file, str(file))  # a file that does not parse: its SpecError, exit 1 (user_errors)
    formatted = format_text(text, str(file))
    try:  # the meaning is check's job: said, not refused
        loaded = load(file)
        if loaded.warnings:
            typer.echo(render_all(loaded.warnings), err=True)
    except SpecError as err:
        typer.echo(f"note: {file} parses but does not check (formatted all the same; `scnas check {file}` "
                   f"says more):\n{message_for_user(err)}", err=True)
    if check:
        if formatted != text:
            typer.echo(f"{file}: not in canonical form (run: scnas fmt --write {file})", err=True)
            raise typer.Exit(1)
        typer.echo(f"{file}: canonical")
        return
    if write:
        if formatted == text:
            typer.echo(f"{file}: unchanged")
            return
        # A symbolic link stays a link: its target is what gets formatted.
        target = file.resolve()
        try:
            if not os.access(target, os.W_OK) or not target.stat().st_mode & 0o222:
                typer.echo(f"error: {file}: the file is read-only; it was left as it is", err=True)
                raise typer.Exit(1)
            write_text(target, formatted, keep_mode=True)  # one rename: never half a file
        except OSError as err:
            typer.echo(f"error: {file}: cannot write the formatted text ({err.strerror or err}); "
                       "the file was left as it is", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"{file}: formatted")
        return
    typer.echo(formatted, nl=False)


@user_errors
def draw_cmd(
    file: Path = typer.Argument(..., help="a .scn file with a space or a genotype"),  # noqa: B008
    output: Path = typer.Option(..., "-o", "--output", help="the picture: .png, .svg or .pdf"),  # noqa: B008
    genotype: str | None = typer.Option(None, "--genotype", "-g", help="which genotype (default: the only one)"),
    space: str | None = typer.Option(None, "--space", help="draw this space's cells (default: the only one)"),
    force: bool = typer.Option(False, "--force", help="replace the picture if it exists"),
    ops: list[str] | None = OPS,
) -> None:
    """Draw the cells of a genotype (the chosen operation on each edge) or of a space (candidate counts)."""
    from scnas_dsl.loader import load

    _existing(file)
    if output.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise usage(f"{output}: the picture must end in .png, .svg or .pdf")
    if output.exists() and not force:
        raise usage(f"{output} exists already; pass --force to replace it or choose another -o")
    chosen_space, chosen = load(file, signatures=signatures(ops)).subject(space, genotype)
    from scnas_dsl.graph.draw import draw_cells

    draw_cells(chosen_space, chosen, output)
    typer.echo(f"wrote {output}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("check")(check_cmd)
    app.command("fmt")(fmt_cmd)
    app.command("draw")(draw_cmd)
