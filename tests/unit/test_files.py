"""The one writer of every file scnas makes (scnas_dsl/files.py): durable writes reach the disk, a rewritten
file keeps its permissions when asked, a new one gets the usual ones, nothing is left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from scnas_dsl import files


def test_a_durable_write_syncs_the_file_and_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    files.write_text(tmp_path / "a.txt", "plain")
    assert synced == []
    files.write_json(tmp_path / "config.json", {"seed": 0}, durable=True)
    assert len(synced) == 2  # the file, then the folder that holds the rename
    assert (tmp_path / "config.json").read_text() == '{\n "seed": 0\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "config.json"]


def test_permissions_of_new_and_rewritten_files(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        new = files.write_text(tmp_path / "new.scn", "x\n")
        assert stat.S_IMODE(new.stat().st_mode) == 0o644  # as open() would make it, not mkstemp's 0600
        kept = tmp_path / "kept.scn"
        kept.write_text("old\n")
        kept.chmod(0o640)
        files.write_text(kept, "new\n", keep_mode=True)
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_text() == "new\n"
    finally:
        os.umask(umask)


def test_line_breaks_are_written_as_given(tmp_path: Path) -> None:
    files.write_text(tmp_path / "crlf.scn", "a\r\nb\r\n")
    assert (tmp_path / "crlf.scn").read_bytes() == b"a\r\nb\r\n"
