"""Help that fits a terminal (issue 22, section 5): at 80 columns (and narrower) every command's help names each
of its options whole, with its metavar, and cuts nothing with an ellipsis."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from scnas_dsl.cli import app


def _commands() -> list[tuple[list[str], Any]]:
    root: Any = typer.main.get_command(app)
    found: list[tuple[list[str], Any]] = []
    for name, command in root.commands.items():  # a group's commands (typer's own click)
        if hasattr(command, "commands"):
            found += [([name, sub], c) for sub, c in command.commands.items()]
        found.append(([name], command))
    assert len(found) > 20
    return found


@pytest.mark.parametrize("columns", [80, 60])
def test_every_option_name_is_whole_in_every_help(columns: int) -> None:
    runner = CliRunner()
    cut = []
    for path, command in _commands():
        text = runner.invoke(app, [*path, "--help"], env={"COLUMNS": str(columns), "TERMINAL_WIDTH": str(columns)}).output
        if "…" in text:
            cut.append(f"{' '.join(path)}: an ellipsis")
        for param in command.params:
            for name in [*param.opts, *param.secondary_opts]:
                if name.startswith("-") and name not in text.split():
                    # a name is whole when it stands as a word, possibly followed by its metavar or a comma
                    words = {w.rstrip(",/") for w in text.replace("/", " ").split()}
                    if name not in words:
                        cut.append(f"{' '.join(path)}: {name}")
    assert not cut, cut
