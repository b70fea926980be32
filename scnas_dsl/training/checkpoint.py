"""Checkpoints: written atomically, read without executing code (``torch.load(weights_only=True)``).

Every random state is stored as tensors and plain types so that a resumed run continues exactly: Python's
``random``, NumPy's global generator, torch's CPU (and CUDA) generators; the supernet's own generator is part
of its sampler state.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scnas_dsl.errors import CheckpointError, first_line
from scnas_dsl.files import atomic_write


def capture_rng() -> dict[str, Any]:
    """Every global random state, as tensors and plain types."""
    version, mt, gauss = random.getstate()
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set every global random state from :func:`capture_rng`'s result."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # one state per GPU of the saving machine: restored for the GPUs this one has (a resume on fewer GPUs
        # keeps the first ones; more GPUs keep their own seeds for the rest)
        for index, cuda_state in enumerate(list(state["cuda"])[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, flushed and fsynced,
    then renamed over the old one; a crash at any moment leaves the old checkpoint (or none) in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: torch.save(state, f), durable=True)


def _unreadable(err: BaseException) -> str:
    """Why a checkpoint could not be read, in words (never torch's advice to load it with ``weights_only=False``,
    which would run whatever code an untrusted file holds)."""
    if isinstance(err, EOFError):
        return "the file is empty or cut short (a copy that did not finish?)"
    if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
        return ("the file holds objects other than tensors and plain values, which scnas never loads (they could "
                "run code); it is not a checkpoint scnas wrote")
    return f"corrupt or not a scnas checkpoint ({first_line(err, 200)})"


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain types only, onto the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there; nothing to resume (start without --resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"{path}: {_unreadable(err)}; the run cannot continue from it: start it again with "
                              "--force (replaces the run folder) or put back a copy of the file") from err
    if not isinstance(state, dict) or "kind" not in state:
        raise CheckpointError(f"{path}: not a scnas checkpoint (no 'kind' entry)")
    problem = _header_problem(state)
    if problem:
        raise CheckpointError(f"{path}: not a checkpoint scnas wrote ({problem}); start the run again with --force "
                              "or put back a copy of the file")
    return state


def _header_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint's plain entries (the kind, the counters, the score), or None; the tensors
    are checked where they are loaded into a network."""
    if not isinstance(state["kind"], str):
        return f"'kind' is {state['kind']!r}, not a name"
    for key in ("epoch", "step"):
        if key in state and (not isinstance(state[key], int) or isinstance(state[key], bool) or state[key] < 0):
            return f"'{key}' is {state[key]!r}, not a count"
    if "dice" in state and (not isinstance(state["dice"], (int, float)) or isinstance(state["dice"], bool)):
        return f"'dice' is {state['dice']!r}, not a score"  # NaN is one: no validation case scored it
    for key in ("model", "best", "sums"):
        if key in state and not isinstance(state[key], dict):
            return f"'{key}' is a {type(state[key]).__name__}, not a mapping"
    return None


def require(path: Path, state: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Refuse, naming the file, a checkpoint that lacks one of the entries ``keys`` its reader needs (a resume
    reads its own inside ``resume.restoring``)."""
    lacking = [key for key in keys if key not in state]
    if lacking:
        raise CheckpointError(f"{path}: not a checkpoint scnas wrote (a '{state['kind']}' checkpoint without "
                              f"{', '.join(repr(k) for k in lacking)}); put back a copy of the file or train again")


def weights_mismatch(shapes: dict[str, tuple[int, ...]], weights: Any) -> str | None:
    """The first difference between a network's parameter shapes (``{name: shape}``, e.g. of its state dict built
    on the meta device) and a checkpoint's weights, in words (None: they fit)."""
    if not isinstance(weights, dict):
        return f"its weights are a {type(weights).__name__}, not a state dict"
    for key, shape in shapes.items():
        if key not in weights:
            return f"no weights for {key}"
        value = weights[key]
        if not isinstance(value, torch.Tensor):
            return f"{key} is a {type(value).__name__}, not a tensor"
        if tuple(value.shape) != shape:
            return f"{key} has shape {list(value.shape)}, the network needs {list(shape)}"
    extra = sorted(str(k) for k in set(weights) - set(shapes))
    return f"unexpected weights {', '.join(extra[:3])}" if extra else None
