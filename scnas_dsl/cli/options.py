"""Options that several commands share: ``--ops`` (operation modules; see ``scnas_dsl.ops.plugins``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from scnas_dsl.ops.plugins import Operations
    from scnas_dsl.ops.signatures import Signatures

OPS = typer.Option(None, "--ops", metavar="MODULE",
                   help="a Python module (importable name or .py path) that registers operations (repeatable); "
                        "installed plugins (entry points 'scnas.operations') are always loaded")


def operations(ops: list[str] | None) -> Operations:
    """The library for a command: scnas' operations, the installed plugins and the ``--ops`` modules."""
    from scnas_dsl.ops.plugins import load_operations

    return load_operations(tuple(ops or ()))


def signatures(ops: list[str] | None) -> Signatures:
    """The signatures for checking and drawing (imports torch only when operations come from outside)."""
    from scnas_dsl.ops.plugins import load_signatures

    return load_signatures(tuple(ops or ()))


BUDGET = typer.Option(
    None, "--budget",
    help="limits on the chosen genotype: flops=40G (one forward pass of one sample at the patch), params=5M, "
         "memory=12GB (a training step at the search's batch; GiB for powers of 1024), comma-separated or "
         "repeated; width=68 measures them at another stem width, weight=0.1 and ramp=0.25 (the defaults) set "
         "the penalty (docs/training.md)")
SELECT = typer.Option(
    None, "--select",
    help="how the genotype is chosen at the end of the search: alpha (the paper's: the largest logit on each edge; "
         "the default), projection (edge by edge, the candidate whose presence scores best on the trained "
         "supernet) or sampled (the best of random genotypes scored on it); every search ends with a self-check")
