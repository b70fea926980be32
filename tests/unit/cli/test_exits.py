"""One path from an error to the exit status (scnas_dsl/cli/exits.py): every command goes through it."""

from __future__ import annotations

import typer

from scnas_dsl.cli import app
from scnas_dsl.cli.exits import user_errors


def _commands(group: typer.Typer, prefix: str = "") -> dict[str, object]:
    found = {f"{prefix}{c.name or c.callback.__name__}": c.callback for c in group.registered_commands}
    for sub in group.registered_groups:
        found.update(_commands(sub.typer_instance, f"{prefix}{sub.name} "))
    return found


def test_every_command_turns_errors_into_messages_and_exit_codes() -> None:
    commands = _commands(app)
    assert len(commands) >= 19 and "data preprocess" in commands and "derive" in commands
    bare = sorted(name for name, callback in commands.items()
                  if name != "version" and getattr(callback, "__wrapped__", None) is None)
    assert not bare, f"commands outside scnas_dsl.cli.exits.user_errors: {bare}"


def test_a_scnas_error_is_a_message_and_status_1() -> None:
    from typer.testing import CliRunner

    from scnas_dsl.errors import DataError

    probe = typer.Typer()

    @probe.command()
    @user_errors
    def fails() -> None:
        raise DataError("dataset.json: no 'labels' entry; add one")

    result = CliRunner().invoke(probe, [])
    assert result.exit_code == 1 and result.output == "error: dataset.json: no 'labels' entry; add one\n"
