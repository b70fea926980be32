"""Resuming a run: the settings must be the run's, the checkpoint of the right kind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scnas_dsl.errors import CheckpointError, RunError, first_line
from scnas_dsl.training.checkpoint import load_checkpoint
from scnas_dsl.training.runs import CONFIG

#: settings that may change when a run is resumed (they do not change what the run computes, or extend it)
RESUMABLE_CHANGES = {"out", "device", "workers", "progress", "epochs", "data", "compile", "augment_on", "checkpoint_cells",
                     "selection", "log"}


def resume_state(run_dir: Path, settings: dict[str, Any], ckpt_path: Path, kind: str) -> dict[str, Any]:
    """The checkpoint to resume from: the settings must match the run's (``check_resumed_settings``) and the
    checkpoint must be of this ``kind`` ("search" or "train")."""
    check_resumed_settings(run_dir, settings)
    state = load_checkpoint(ckpt_path)
    if state["kind"] != kind:
        what = {"search": "a search", "train": "a training"}.get(kind, f"a '{kind}'")
        raise CheckpointError(f"{ckpt_path}: a '{state['kind']}' checkpoint, not {what} checkpoint")
    return state


def check_resumed_settings(run_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume a run with other settings than it started with (the result would be neither run)."""
    path = run_dir / CONFIG
    if not path.is_file():
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{path}: cannot be read ({first_line(err)}); the run's settings are lost, so it cannot be "
                       "resumed: start it again with --force, or put back a copy of the file") from err
    if not isinstance(before, dict):
        raise RunError(f"{path}: not the settings of a run (a JSON object is expected); start it again with "
                       "--force, or put back a copy of the file")
    changed = sorted(k for k, v in settings.items()
                     if k not in RESUMABLE_CHANGES and k in before and json.dumps(before[k]) != json.dumps(v))
    if changed:
        details = "; ".join(d for k in changed for d in _differences(k, before[k], settings[k]))
        raise RunError(f"{path}: the run was started with other settings ({details}); resume with the same "
                       f"settings (only {_changeable()} may change) or start a new run")


def record_epochs(run: Any, epochs: int) -> None:
    """After a resume: the run's ``config.json`` records ``epochs``, the length it now runs to, so that a bare
    ``--resume`` of a run extended and stopped again continues to that length (not the first one). ``run``: the
    :class:`~scnas_dsl.training.runs.RunFolder` (only its writer writes)."""
    path = run.path / CONFIG
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # checked just before; nothing to update
    if isinstance(recorded, dict) and recorded.get("epochs") != epochs:
        run.write_json(CONFIG, {**recorded, "epochs": epochs})


def _differences(name: str, before: Any, now: Any) -> list[str]:
    """``name: before -> now`` for a changed setting; of a table (a budget, the selection's settings) only the
    entries that changed, as ``name.key``."""
    if isinstance(before, dict) and isinstance(now, dict):
        keys = sorted(set(before) | set(now), key=str)
        return [d for k in keys if json.dumps(before.get(k)) != json.dumps(now.get(k))
                for d in _differences(f"{name}.{k}", before.get(k), now.get(k))]
    return [f"{name}: {before!r} -> {now!r}"]


def _changeable() -> str:
    """The settings of :data:`RESUMABLE_CHANGES` as options: ``--epochs, --device, ...``."""
    names = {"progress": "--quiet", "data": "--data (the same data elsewhere)",
             "augment_on": "augment_on (in --config)",
             "selection": "--select", "log": "--log"}
    return ", ".join(names.get(k, "--" + k.replace("_", "-")) for k in sorted(RESUMABLE_CHANGES) if k != "out")


@contextmanager
def restoring(ckpt_path: Path, what: str) -> Iterator[None]:
    """While a job restores its state from ``ckpt_path`` (weights, optimisers, schedules, random states,
    counters), any error of a state that does not fit ``what`` is one CheckpointError naming the file."""
    try:
        yield
    except CheckpointError:
        raise
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as err:
        raise CheckpointError(f"{ckpt_path}: does not fit {what} ({first_line(err, 200)}); was the spec, the genotype "
                              "or the stem width changed, or the file edited? Start the run again with --force or put "
                              "back a copy of the file") from err
