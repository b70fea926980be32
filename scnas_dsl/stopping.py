"""Stopping a run cleanly: Ctrl-C and SIGTERM become a request the running job answers within seconds.

Where a stop is honoured (see docs/training.md, "Checkpoints, resuming, signals"): between training steps
(the checkpoint of the last finished step), between batches of sliding windows in validation and prediction,
between batches of the search's discretisation gap, and between cases of preprocessing. A stopped command
exits with status 130 (:class:`RunInterrupted`) and says how to continue.

Ground floor (the data layer's preprocessing and loaders stop here too): no torch, no other scnas module but the
errors. Worker processes of every kind (a preprocessing pool, a loader's workers) follow one policy,
:func:`ignore_signals_in_worker`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from scnas_dsl.errors import RunError


class RunInterrupted(RunError):
    """Ctrl-C or SIGTERM stopped a run cleanly (after its checkpoint, or with its finished parts kept)."""


class SecondInterrupt(KeyboardInterrupt):
    """A second Ctrl-C while a requested stop was under way: stop at once."""


class StopSignal:
    """Turns SIGINT and SIGTERM into a request the running job answers at its next safe point (the end of the
    current step, batch of windows or case). A second Ctrl-C while waiting stops at once; a second SIGTERM
    does not (a batch system and ``torchrun`` may both send one: the clean stop goes on)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            if name == "SIGINT" == self.requested:
                raise SecondInterrupt
            return
        self.requested = name

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


def requested_signal() -> str:
    """The name of the signal that asked for the stop (``SIGTERM`` when none is known)."""
    return next((stop.requested for stop in _ACTIVE if stop.requested is not None), "SIGTERM")


class StopRequested(Exception):  # noqa: N818 (a stop, not an error)
    """Raised by :func:`check_stop` in long work that has no checkpoint of its own (the search's choice of its
    genotype after the last epoch); the job that started the work turns it into :class:`RunInterrupted`."""


def check_stop() -> None:
    """Raise :class:`StopRequested` when a running :class:`StopSignal` was asked to stop (a safe point of work
    that can simply be done again)."""
    if stop_requested():
        raise StopRequested(requested_signal())


def ignore_signals_in_worker(*_: object) -> None:
    """For worker processes (a pool's initializer, a loader's ``worker_init_fn``): ignore SIGINT and the first
    SIGTERM, so that a signal to the whole process group (Ctrl-C, a batch system's SIGTERM) is answered by the
    main process alone, which then ends them. A later SIGTERM ends the worker: that is how the main process's
    exit ends workers still running (``multiprocessing`` terminates them and waits; a worker ignoring every
    SIGTERM would keep it waiting for ever)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _first_sigterm)


def _first_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the next one ends the process


class CollectiveStop:
    """A stop decision that every rank takes at the same point, for work that ranks do in unequal shares
    (validation: each rank scores its own cases, of different sizes).

    Every call (before a batch of windows) is one collective ``reduce`` of ``[stop requested here, still
    working]``; a rank whose share is done calls :meth:`drain`, which keeps answering the others' calls until
    no rank works any more. So the ranks' calls pair up one to one, all ranks see the same answer at the same
    call, and a stop requested on any rank stops them all there (no rank left waiting in a collective).
    ``reduce`` sums (or averages) a list of numbers over the ranks (``Runtime.mean_values``)."""

    def __init__(self, reduce: Callable[[list[float]], list[float]],
                 requested: Callable[[], bool] = stop_requested) -> None:
        self.reduce = reduce
        self.requested = requested
        self.stopped = False

    def _ask(self, working: bool) -> tuple[bool, bool]:
        stop, busy = self.reduce([float(self.requested()), float(working)])
        self.stopped = self.stopped or stop > 0
        return stop > 0, busy > 0

    def __call__(self) -> bool:
        """Whether to stop now (a working rank, before its next batch)."""
        return self._ask(True)[0]

    def drain(self) -> bool:
        """This rank's share is done: answer the other ranks' calls until none works; whether they stopped."""
        while True:
            stop, busy = self._ask(False)
            if stop or not busy:
                return stop
