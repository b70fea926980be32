"""Files written atomically: to a temporary name beside the target, then renamed into place.

A reader sees the old file or the new one, never half of one; a failed write leaves the old file as it was and
no temporary file behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write`` with a handle open on a temporary file beside ``path`` (``mode``), then rename it to
    ``path``; the temporary file is removed whatever happens."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as handle:
            write(handle)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON (and a final newline) at ``path``, atomically."""
    text = json.dumps(value, indent=1) + "\n"  # serialised before anything is opened
    atomic_write(path, lambda f: f.write(text), mode="w")


def read_json_or_none(path: Path) -> Any:
    """One of our own records, or None when it is missing or unreadable (then it is simply made again)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def npy(array: np.ndarray) -> Callable[[Any], None]:
    """A writer of ``array`` in .npy form, for :func:`atomic_write`."""
    return lambda handle: np.save(handle, array)
