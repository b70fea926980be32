"""Stopping a run cleanly: Ctrl-C and SIGTERM become a request the loop answers after a checkpoint."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from scnas_dsl.errors import RunError


class RunInterrupted(RunError):
    """Ctrl-C or SIGTERM stopped a run after its checkpoint was saved."""


class StopSignal:
    """Turns SIGINT and SIGTERM into a request the training loop answers at the end of the current step
    (checkpoint, then exit). A second Ctrl-C while waiting stops at once."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                pass
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


_ACTIVE: list[StopSignal] = []


def stop_requested() -> bool:
    """Whether a stop was requested of a running :class:`StopSignal` (for long work inside a step or an epoch's
    end, such as validation, to give up early)."""
    return any(stop.requested is not None for stop in _ACTIVE)
