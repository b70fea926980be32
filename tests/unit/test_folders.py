"""The owned-folder rule (scnas_dsl/folders.py): a folder scnas did not make is never replaced."""

from __future__ import annotations

from pathlib import Path

import pytest

from scnas_dsl.errors import RunError
from scnas_dsl.folders import folder_state, foreign_folder, mark_folder, read_marker, replace_folder


def test_states_and_replacing_only_our_folders(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    assert folder_state(folder, ".m") == "absent"
    folder.mkdir()
    assert folder_state(folder, ".m") == "empty"
    mark_folder(folder, ".m", "search\n")
    assert folder_state(folder, ".m") == "empty" and read_marker(folder, ".m") == ["search"]  # only the marker
    (folder / "config.json").write_text("{}")
    assert folder_state(folder, ".m") == "ours"
    replace_folder(folder, ".m", "train\n")
    assert sorted(p.name for p in folder.iterdir()) == [".m"] and read_marker(folder, ".m") == ["train"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert folder_state(mine, ".m") == "foreign"
    with pytest.raises(RunError, match="not a folder scnas made"):
        replace_folder(mine, ".m", "x\n")
    assert (mine / "thesis.tex").read_text() == "years of work"
    a_file = tmp_path / "file"
    a_file.write_text("data")
    assert folder_state(a_file, ".m") == "foreign"
    message = str(foreign_folder(mine, "a scnas run folder", "--force", "--out"))
    assert message.startswith(f"{mine}: exists and is not a scnas run folder") and "not even with --force" in message


HOLDER = """
import sys, time
from pathlib import Path
from scnas_dsl.folders import hold_folder
held = hold_folder(Path(sys.argv[1]), "scnas search")
print("held", flush=True)
time.sleep(60)
"""


def _holder(folder: Path):  # noqa: ANN202
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_one_process_per_folder_and_a_killed_one_holds_nothing(tmp_path: Path) -> None:
    import signal

    from scnas_dsl.folders import FolderInUse, hold_folder

    run = tmp_path / "runs" / "search"
    holder = _holder(run)
    try:
        with pytest.raises(FolderInUse, match=rf"in use by process {holder.pid} \(scnas search: .*\); wait"):
            hold_folder(run, "scnas search")
        other = hold_folder(tmp_path / "runs" / "other", "scnas train")  # another folder: free
        other.release()
    finally:
        holder.send_signal(signal.SIGKILL)  # as a batch system's kill: no clean-up ran
        holder.wait()
    with hold_folder(run, "scnas search --resume"):  # the kernel dropped the dead process's lock
        pass
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == []  # released: no lock file left


def test_a_second_command_on_a_held_run_folder_is_refused_at_once(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from scnas_dsl.cli import app

    run = tmp_path / "run"
    holder = _holder(run)
    try:
        spec = Path(__file__).resolve().parents[2] / "specs" / "unet4cell.scn"
        result = CliRunner().invoke(app, ["search", str(spec), "--data", str(tmp_path / "none"),
                                          "--out", str(run)])
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 1 and f"in use by process {holder.pid}" in result.output
    assert not run.exists()  # nothing written
