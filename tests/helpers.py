"""Helpers the tests share (one copy each)."""

from __future__ import annotations

from typer.testing import CliRunner


def invoke(*args: object) -> tuple[int, str]:
    """Run ``scnas ARGS`` in this process: (exit status, output). An exception other than the command's exit (a
    traceback a user would see) fails the test with that exception."""
    from scnas_dsl.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200", "NO_COLOR": "1"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output
