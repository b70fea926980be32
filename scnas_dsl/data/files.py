"""The data layer's file helpers: reading back its own records, and arrays for :func:`scnas_dsl.files.atomic_write`.

Writing is ``scnas_dsl.files``' job (one writer for every file scnas makes): ``atomic_write`` and ``write_json``
are that module's, imported here for the data layer's modules.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from scnas_dsl.files import atomic_write, write_json

__all__ = ["atomic_write", "npy", "read_json_or_none", "write_json"]


def read_json_or_none(path: Path) -> Any:
    """One of our own records, or None when it is missing or unreadable (then it is simply made again)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def npy(array: np.ndarray) -> Callable[[Any], None]:
    """A writer of ``array`` in .npy form, for :func:`atomic_write`."""
    return lambda handle: np.save(handle, array)
