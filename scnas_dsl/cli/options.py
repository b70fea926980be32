"""Options that several commands share: ``--ops`` (operation modules; see ``scnas_dsl.ops.plugins``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from scnas_dsl.ops.plugins import Operations

OPS = typer.Option(None, "--ops", metavar="MODULE",
                   help="a Python module (importable name or .py path) that registers operations (repeatable); "
                        "installed plugins (entry points 'scnas.operations') are always loaded")


def operations(ops: list[str] | None) -> Operations:
    """The library for a command: scnas' operations, the installed plugins and the ``--ops`` modules."""
    from scnas_dsl.ops.plugins import load_operations

    return load_operations(tuple(ops or ()))
