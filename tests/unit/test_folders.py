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
