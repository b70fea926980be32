"""The ``scnas`` command: a thin typer shell over the Python API.

Each area registers its own commands from its own module (``lang``: check, fmt, compile, draw; ``data``:
the ``data`` group; ``run``: search, train, predict, evaluate, demo; ``cv``: cv; ``select``: derive, rank). Modules import torch only inside
the commands that need it, so ``scnas check`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from scnas_dsl.errors import ScnasError, message_for_user

app = typer.Typer(
    name="scnas",
    help="SCNAS: architecture search for 3D medical image segmentation, from a .scn spec to Dice scores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain help: click wraps the descriptions and never cuts an option's name or default, at any width (rich's
    # panels cut them with an ellipsis at 80 columns)
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """SCNAS: architecture search for 3D medical image segmentation, from a .scn spec to Dice scores."""


def _register() -> None:
    from scnas_dsl.cli import data, lang, run

    lang.register(app)
    data.register(app)
    run.register(app)
    from scnas_dsl.cli import compile as compile_cli; compile_cli.register(app)  # noqa: E702, I001
    from scnas_dsl.cli import sample as sample_cli; sample_cli.register(app)  # noqa: E702, I001
    from scnas_dsl.cli import cv as cv_cli; cv_cli.register(app)  # noqa: E702, I001
    from scnas_dsl.cli import nnunet as nnunet_cli; nnunet_cli.register(app)  # noqa: E702, I001
    from scnas_dsl.cli import export as export_cli; export_cli.register(app)  # noqa: E702, I001
    from scnas_dsl.cli import select as select_cli; select_cli.register(app)  # noqa: E702, I001


_register()


@app.command()
def version() -> None:
    """Print the scnas version."""
    from scnas_dsl import __version__

    typer.echo(__version__)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` to stderr and return the Exit to raise (no traceback)."""
    typer.echo(message, err=True)
    return typer.Exit(code)


def main() -> None:
    """Console entry point: user errors become a message and exit status 1, never a traceback."""
    try:
        app()
    except ScnasError as err:
        typer.echo(message_for_user(err), err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
