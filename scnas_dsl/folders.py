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
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from scnas_dsl.errors import RunError
from scnas_dsl.files import write_text

State = Literal["absent", "empty", "ours", "foreign"]
F = TypeVar("F", bound=Callable[..., Any])


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


class FolderInUse(RunError):
    """Another live process holds the folder (``hold_folder``)."""


class _Held:
    """An open, locked lock file (released by :meth:`release`, or by the kernel when the process dies)."""

    def __init__(self, path: Path, handle: int) -> None:
        self.path, self.handle = path, handle

    def release(self) -> None:
        if self.handle < 0:
            return
        import os

        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self.handle)
        self.handle = -1

    def __enter__(self) -> _Held:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_path(folder: Path) -> Path:
    """The lock of ``folder``: a hidden file beside it (``.<name>.scnas-lock``), so that replacing the folder
    (``--force``) cannot remove the lock of the process that replaces it."""
    return folder.parent / f".{folder.name}.scnas-lock"


def hold_folder(folder: Path, what: str) -> _Held:
    """Hold ``folder`` for this process until :meth:`_Held.release` (or the process ends, however it ends: the
    kernel drops the lock of a killed process, so a SIGKILLed run never blocks its own ``--resume``). A second
    process asking for the same folder is refused at once with the holder's pid and command (:class:`FolderInUse`).
    ``what`` (e.g. ``scnas search``) is recorded for that message. Without ``fcntl`` (Windows) nothing is locked."""
    import os
    import sys
    import time

    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return _Held(lock_path(folder), -1)
    folder = folder.absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(folder)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(handle, 4096).decode("utf-8", "replace").strip() or "another process"
        os.close(handle)
        raise FolderInUse(f"{folder}: in use by {holder}; wait for it to end (or stop it) and run this again; "
                          "a process that no longer runs does not hold it") from None
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)) or what
    info = f"process {os.getpid()} ({what}: {command}, since {time.strftime('%Y-%m-%d %H:%M:%S')})"
    os.ftruncate(handle, 0)
    os.write(handle, info.encode("utf-8"))
    return _Held(path, handle)


def holding(argument: str, what: str) -> Callable[[F], F]:
    """Decorate a function that writes into the folder given as its argument ``argument`` (a path, or an object
    with a ``run`` path): it runs holding that folder (:func:`hold_folder`)."""
    import functools
    import inspect

    def decorate(func: F) -> F:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            value = signature.bind(*args, **kwargs).arguments[argument]
            folder = Path(getattr(value, "run", value))
            with hold_folder(folder, what):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def refuse_inputs(outputs: list[Path], inputs: list[Path], option: str = "-o") -> None:
    """Refuse, whatever the flags, an output that is one of the command's inputs (after resolving links) or an
    existing file inside an input folder (a run folder's records and weights): ``--force`` replaces earlier
    outputs, never what the command reads."""
    resolved = [p.resolve() for p in inputs if p is not None]
    for output in outputs:
        target = output.resolve()
        for source in resolved:
            inside = source.is_dir() and source in target.parents and target.exists()
            if target == source or inside:
                raise RunError(f"{output}: {'is' if target == source else 'is a file of'} {source}, one of this "
                               f"command's inputs; it is never replaced (not even with --force). Choose another "
                               f"{option}")


def data_set_at(path: Path) -> Path | None:
    """The data set folder at or above ``path`` (resolved), or None: one with a ``dataset.json`` and an
    ``imagesTr/`` or ``labelsTr/`` folder (the MSD and nnU-Net raw layouts; nnU-Net's preprocessed folders, which
    hold a ``dataset.json`` but no images, are not data sets here)."""
    target = path.resolve()
    for folder in (target, *target.parents):
        if (folder / "dataset.json").is_file() and ((folder / "imagesTr").is_dir() or (folder / "labelsTr").is_dir()):
            return folder
    return None


def refuse_data_set(output: Path, option: str = "-o") -> None:
    """Refuse, whatever the flags, an output inside a data set folder (:func:`data_set_at`): no command writes
    into a data set."""
    folder = data_set_at(output)
    if folder is not None:
        raise RunError(f"{output}: lies inside the data set {folder} (it has a dataset.json and images); scnas never "
                       f"writes into a data set, even with --force. Choose {option} outside it")
