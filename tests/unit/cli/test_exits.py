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


def test_a_place_that_cannot_be_written_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import errno
    from pathlib import Path

    from typer.testing import CliRunner

    from scnas_dsl import files
    from scnas_dsl.cli import app

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    runner = CliRunner()
    # a path under a file
    result = runner.invoke(app, ["data", "synth", str(a_file / "Task01"), "--cases", "2", "--shape", "16", "16", "16"])
    assert result.exit_code == 1 and result.output.startswith("error: ") and "Traceback" not in result.output
    assert "not a folder" in result.output and a_file.read_text() == "mine"

    # a full disk at the moment a file is renamed into place
    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(files.os, "replace", full)
    spec = Path(__file__).resolve().parents[3] / "specs" / "unet4cell.scn"
    out = tmp_path / "samples"
    result = runner.invoke(app, ["sample", str(spec), "-n", "2", "-o", str(out), "--patch", "16", "16", "16"])
    assert result.exit_code == 1 and "No space left on device (the disk is full" in result.output
    assert "Traceback" not in result.output
    assert not [p for p in out.rglob("*") if p.is_file()]  # nothing half-written, no temporary file


def test_ctrl_c_says_whether_it_cut_a_stop_short() -> None:
    """The second Ctrl-C of a stop under way says nothing more was saved; a Ctrl-C where no stop is handled
    (set-up, a check) says only that nothing is half-written: neither is called the other."""
    import signal

    from typer.testing import CliRunner

    from scnas_dsl.stopping import StopSignal

    probe = typer.Typer()

    @probe.command()
    @user_errors
    def interrupted(second: bool = False) -> None:
        if not second:
            raise KeyboardInterrupt
        with StopSignal() as stop:
            stop._handle(signal.SIGINT, None)  # the first asks for a clean stop
            stop._handle(signal.SIGINT, None)  # the second stops at once

    first = CliRunner().invoke(probe, [])
    assert first.exit_code == 130 and "stopped by Ctrl-C" in first.output and "second" not in first.output
    second = CliRunner().invoke(probe, ["--second"])
    assert second.exit_code == 130 and "stopped at once by a second Ctrl-C" in second.output, second.output
