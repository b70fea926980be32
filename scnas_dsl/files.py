"""The one way scnas writes a file: atomically.

Every file scnas writes (run records, genotypes, checkpoints, predictions, reports, formatted specs) goes
through :func:`atomic_write`: the content is written to a temporary file in the target's own folder (a unique
``.<name>.<random>.tmp``), then renamed over the target in one step, so that an interruption, a full disk or a
crash never leaves half a file, and an existing file is either the old one or the new one. The temporary file
is removed whatever happens. ``durable=True`` also flushes the file and its folder to the disk before returning
(``fsync``): for what a power cut must not lose or tear (checkpoints, the records a resume reads).

Ground floor: nothing here imports torch, numpy or another scnas module.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: Path | str, write: Callable[[IO[Any]], object], mode: str = "wb", *, durable: bool = False,
                 keep_mode: bool = False, encoding: str | None = None) -> Path:
    """Call ``write`` with a handle open (``mode``: ``"wb"`` or ``"w"``) on a temporary file beside ``path``,
    then rename it to ``path``. ``keep_mode``: the new file keeps an existing file's permission bits (a
    formatter rewriting a file in place); otherwise it gets the usual permissions of a new file."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        text_mode = "b" not in mode
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if text_mode else None,
                       newline="" if text_mode else None) as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        if keep_mode and path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:  # mkstemp makes 0600; a new file gets what open() would have given it
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _sync_folder(path.parent)
    return path


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (some file systems cannot fsync a folder: then the file is safe)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: Path | str, text: str, *, durable: bool = False, keep_mode: bool = False) -> Path:
    """``text`` (UTF-8, line breaks as given) at ``path``, atomically."""
    return atomic_write(path, lambda f: f.write(text), mode="w", durable=durable, keep_mode=keep_mode)


def write_json(path: Path | str, value: Any, *, indent: int = 1, durable: bool = False) -> Path:
    """``value`` as indented JSON with a final newline at ``path``, atomically (serialised before anything is
    opened, so that a value JSON cannot hold leaves the old file)."""
    text = json.dumps(value, indent=indent) + "\n"
    return write_text(path, text, durable=durable)
