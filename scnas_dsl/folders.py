"""The owned-folder rule: scnas replaces or writes into an existing folder only when it made that folder.

A folder scnas makes (a run, a cross-validation, a comparison report, the demo) holds a marker file (``.scnas-run``,
``.scnas-cv``, ...) whose text says what made it. An existing folder without its marker, or a file where the
folder should be, is never written into, resumed or replaced, whatever the flags; a folder holding nothing but
its marker (a command that failed before writing anything) counts as empty. Every command that owns a folder
asks :func:`folder_state` and refuses with :func:`foreign_folder`, and replaces with :func:`replace_folder`.

Ground floor: no torch, no other scnas module but the errors.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from scnas_dsl.errors import RunError
from scnas_dsl.files import write_text

State = Literal["absent", "empty", "ours", "foreign"]


def folder_state(path: Path, marker: str) -> State:
    """``absent`` (nothing there), ``empty`` (an empty folder, or one holding only ``marker``), ``ours`` (a folder
    with ``marker`` and more), ``foreign`` (a file, or a folder with content and no ``marker``)."""
    if not path.exists():
        return "absent"
    if not path.is_dir():
        return "foreign"
    entries = [entry.name for entry in path.iterdir()]
    if not entries or entries == [marker]:
        return "empty"
    return "ours" if (path / marker).is_file() else "foreign"


def read_marker(path: Path, marker: str) -> list[str]:
    """The lines of ``path``'s marker (empty when there is none)."""
    target = path / marker
    return target.read_text().splitlines() if target.is_file() else []


def foreign_folder(path: Path, what: str, flags: str, option: str) -> RunError:
    """The refusal of a folder scnas did not make: ``what`` names the kind of folder that would be ours
    (``a scnas run folder``), ``flags`` the options that do not change it, ``option`` where to choose another."""
    return RunError(f"{path}: exists and is not {what}; scnas never writes into or replaces it (not even with "
                    f"{flags}). Choose another {option}")


def mark_folder(path: Path, marker: str, text: str) -> None:
    """Make ``path`` (and its parents) and write its marker."""
    path.mkdir(parents=True, exist_ok=True)
    write_text(path / marker, text)


def replace_folder(path: Path, marker: str, text: str) -> None:
    """Replace a folder of ours (its state must be ``ours`` or ``empty``: a foreign one raises) by an empty
    one with its marker."""
    state = folder_state(path, marker)
    if state == "foreign":
        raise RunError(f"{path}: not a folder scnas made; it is not replaced")
    if state != "absent":
        shutil.rmtree(path)
    mark_folder(path, marker, text)
