"""The epoch loop that search and retraining share.

One loop runs the steps of every epoch and does, the same way for both jobs: the stop signal (Ctrl-C or
SIGTERM: a checkpoint of the last finished step, then :class:`RunInterrupted`), the NaN check, the progress
bar inside an epoch (only on a terminal), one report line per epoch (on the terminal unless quiet, and always
in the run's ``log.txt``; no carriage returns, so a log file stays readable), the record in ``metrics.jsonl``
with the elapsed time and an estimate for the whole run (and in the trackers of ``--log``: ``tracking.py``), the plots redrawn after every epoch (an interrupted
run has them; when drawing would take more than a tenth of the run's time, every few epochs and always at the
end), the checkpoint after every epoch, and the early stops (``stop_after_epochs``, or a reason the
job gives, such as retraining's learning-rate floor).

What differs between the jobs comes in as a :class:`Job`: how to get an epoch's batches, how to run one step
(returning its losses), what to do at the end of an epoch (schedulers, validation, the job's own figures and
report), how to save a checkpoint and how to draw the plots.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from scnas_dsl.errors import RunError
from scnas_dsl.inference.sliding_window import InferenceStopped
from scnas_dsl.stopping import RunInterrupted, StopSignal
from scnas_dsl.training.config import AdamConfig, PlateauConfig
from scnas_dsl.training.device import Runtime
from scnas_dsl.training.runs import LOG, METRICS, RunFolder, read_jsonl
from scnas_dsl.training.tracking import Tracking


@dataclass
class LoopState:
    """Where a run stands: the next epoch and step to run, and the loss sums of the epoch so far."""

    epoch: int = 0
    step: int = 0
    sums: dict[str, float] = field(default_factory=dict)


@dataclass
class EpochEnd:
    """What a job adds at the end of an epoch: its fields of the record, the middle of the report line,
    and a reason to stop the whole run early (None: go on)."""

    record: dict[str, Any]
    summary: str
    stop: str | None = None


class Job(Protocol):
    """The parts of a training job that the loop calls."""

    def batches(self, epoch: int, skip: int) -> Iterable[Any]:
        """Epoch ``epoch``'s batches without the first ``skip``."""

    def begin_epoch(self, epoch: int, first: int) -> None:
        """Before the first step of an epoch; ``first`` is the step it starts at (not 0 after a resume)."""

    def step(self, epoch: int, step: int, batch: Any) -> dict[str, torch.Tensor]:
        """One training step; its losses by name (this rank's values)."""

    def learning_rates(self) -> dict[str, float]:
        """The current learning rates by name (for the report and the NaN advice)."""

    def end_epoch(self, epoch: int, means: dict[str, float]) -> EpochEnd:
        """After the last step of an epoch, with the epoch's mean losses (over steps and ranks)."""

    def save(self, state: LoopState) -> None:
        """Write the checkpoint of ``state`` (called on every rank; only rank 0 writes)."""

    def plot(self) -> None:
        """Redraw the run's plots from its records (called on rank 0 only)."""


@dataclass
class LoopEnd:
    """How the loop ended: ``finished`` (all epochs), ``early`` (the job's stop reason, in ``reason``) or
    ``paused`` (``stop_after_epochs``, a checkpoint to resume from); ``epoch`` is the last epoch run."""

    how: str
    epoch: int
    reason: str = ""


def lr_of(optimizer: torch.optim.Optimizer) -> float:
    """The current learning rate of ``optimizer`` (its first parameter group)."""
    return float(optimizer.param_groups[0]["lr"])


def adam(params: Iterable[torch.nn.Parameter], settings: AdamConfig) -> torch.optim.Adam:
    """An Adam optimiser as the run's settings say."""
    return torch.optim.Adam(params, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)


def plateau(optimizer: torch.optim.Optimizer, settings: PlateauConfig) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """The paper's schedule: lr x factor after ``patience`` epochs without a lower training loss."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=settings.factor,
                                                      patience=settings.patience, threshold=settings.threshold)


def adam_text(settings: AdamConfig) -> str:
    """``Adam lr 0.025 betas (0.1, 0.001)`` of an :class:`~scnas_dsl.training.config.AdamConfig`."""
    return f"Adam lr {settings.lr:g} betas ({settings.betas[0]:g}, {settings.betas[1]:g})"


def check_finite(values: dict[str, float], epoch: int, step: int, steps: int, lrs: dict[str, float]) -> None:
    """Stop the run with advice when a loss is NaN or infinite."""
    for what, loss in values.items():
        if not math.isfinite(loss):
            now = ", ".join(f"{k} {v:g}" for k, v in lrs.items())
            raise RunError(
                f"the {what.replace('_', ' ')} became {loss} at epoch {epoch + 1}, step {step + 1} of {steps}; the "
                f"run stopped (the last checkpoint is from before). Try a lower learning rate (now {now}), a "
                "smaller batch or patch, or check the data with `scnas data check DATA_DIR` (NaN or extreme "
                "intensities)"
            )


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """A tqdm bar on stderr with an ETA, only when stderr is a terminal (a log file gets no carriage-return
    bars); silent when disabled or on ranks other than 0."""
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not (enabled and sys.stderr.isatty()),
                dynamic_ncols=True, leave=False, mininterval=1.0)


def clock(seconds: float) -> str:
    """``h:mm:ss``."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class EpochLoop:
    """Runs epochs ``state.epoch .. epochs - 1`` of a job (see the module's docstring)."""

    def __init__(self, *, kind: str, run: RunFolder, runtime: Runtime, epochs: int, steps: int,
                 resume_hint: str, checkpoint_path: Any, echo: bool = True,
                 stop_after_epochs: int | None = None, tracking: Tracking | None = None) -> None:
        self.kind = kind
        self.run = run
        self.runtime = runtime
        self.epochs = epochs
        self.steps = steps
        self.resume_hint = resume_hint
        self.checkpoint_path = checkpoint_path
        self.echo = echo and runtime.is_main
        self.stop_after_epochs = stop_after_epochs
        self._plotted_at, self._plot_seconds = time.monotonic(), 0.0
        #: the optional trackers (TensorBoard, W&B): each epoch's record goes to them too
        self.tracking = tracking or Tracking((), run.path, kind=kind, settings={}, start_epoch=0)

    @classmethod
    def for_run(cls, kind: str, cfg: Any, run: RunFolder, runtime: Runtime, state: LoopState, held: ExitStack, *,
                resume_hint: str, checkpoint_path: Any, stop_after_epochs: int | None = None) -> EpochLoop:
        """The loop of a job configured by ``cfg`` (epochs, steps, progress, the trackers of ``--log``), resuming
        at ``state``; its trackers close when ``held`` does (only the main process logs)."""
        tracking = Tracking(cfg.log, run.path, kind=kind, settings=cfg.model_dump(mode="json"),
                            start_epoch=state.epoch, enabled=runtime.is_main)
        held.callback(tracking.close)
        return cls(kind=kind, run=run, runtime=runtime, epochs=cfg.epochs, steps=cfg.batches_per_epoch,
                   resume_hint=resume_hint, checkpoint_path=checkpoint_path, echo=cfg.progress,
                   stop_after_epochs=stop_after_epochs, tracking=tracking)

    def say(self, line: str, terminal: bool = True) -> None:
        """One line of the run's report: on the terminal (rank 0, unless quiet) and in ``log.txt``."""
        if self.echo and terminal:
            print(line, flush=True)
        if self.run.writer:
            with (self.run.path / LOG).open("a", encoding="utf-8") as f:
                f.write(line + "\n")

    def announce(self, what: str, cfg: Any, patch: tuple[int, ...], state: LoopState, resume: bool,
                 details: str) -> None:
        """The run's first report line: what runs on which data, its sizes, ``details`` (optimisers...)."""
        runtime = self.runtime
        where = f"{runtime.device}{f' x {runtime.world_size}' if runtime.distributed else ''}"
        self.say(f"{self.kind} {what} on {Path(cfg.data).name} fold {cfg.fold} "
                 f"({f'resumed at epoch {state.epoch + 1}' if resume else 'new'}): patch {'x'.join(map(str, patch))}, "
                 f"batch {cfg.batch_size}, {cfg.epochs} epochs x {cfg.batches_per_epoch} steps, stem width "
                 f"{cfg.stem_width}, {where}; {details}; run folder {self.run.path}")

    def interrupted(self, signal_name: str, where: str) -> RunInterrupted:
        """The stop of a run by ``signal_name`` ``where`` it was, logged, with how to continue."""
        message = (f"{signal_name}: stopped {where}; checkpoint saved to {self.checkpoint_path}; continue with "
                   f"`{self.resume_hint}`")
        self.say(f"{self.kind}: {message}", terminal=False)  # the command prints it; the log keeps it too
        return RunInterrupted(message)

    def run_job(self, job: Job, state: LoopState) -> LoopEnd:
        """Run the epochs; raises :class:`RunInterrupted` on a stop signal (after the checkpoint)."""
        runtime, steps = self.runtime, self.steps
        previous = read_jsonl(self.run.path / METRICS) if self.run.writer else []
        elapsed = previous[-1].get("elapsed") if previous else None  # the earlier sessions' time (a report)
        elapsed_before = float(elapsed) if isinstance(elapsed, int | float) and math.isfinite(elapsed) else 0.0
        session_start, session_epochs = time.time(), 0
        epochs_run, epoch = 0, state.epoch - 1
        if state.epoch >= self.epochs:
            self.say(f"{self.kind}: the run has done {state.epoch} epoch(s) already, --epochs is {self.epochs}: "
                     "nothing more to run (a larger --epochs extends it)")
        with StopSignal() as stop:
            for epoch in range(state.epoch, self.epochs):
                started = time.time()
                first = state.step if epoch == state.epoch else 0
                if first == 0:
                    state.sums = {}
                job.begin_epoch(epoch, first)
                bar = progress_bar(steps, f"{self.kind} epoch {epoch + 1}/{self.epochs}", self.echo)
                bar.update(first)
                # ``first == steps``: stopped during the epoch's validation, only its end is left to run
                batches = job.batches(epoch, first) if first < steps else ()
                stopped_at = self._steps(job, state, stop, epoch, first, batches, bar)
                batches = ()  # the epoch's batch iterators end here: not kept alive by the stop's traceback
                bar.close()
                if stopped_at is not None:
                    job.save(LoopState(epoch, stopped_at, dict(state.sums)))
                    if epoch > 0:  # earlier epochs are recorded: their plots
                        self._plot(job, force=True)
                    raise self.interrupted(stop.requested or "SIGTERM", f"at epoch {epoch + 1}, step {stopped_at}")
                means = {name: total / steps for name, total in state.sums.items()}
                try:
                    end = job.end_epoch(epoch, means)
                except InferenceStopped:  # a stop signal during validation: every step of the epoch is done
                    job.save(LoopState(epoch, steps, dict(state.sums)))
                    if epoch > 0:
                        self._plot(job, force=True)
                    raise self.interrupted(stop.requested or "SIGTERM",
                                            f"during the validation of epoch {epoch + 1}") from None
                seconds = time.time() - started
                session_epochs += 1
                elapsed = elapsed_before + (time.time() - session_start)
                per_epoch = (time.time() - session_start) / session_epochs
                total = elapsed + per_epoch * (self.epochs - epoch - 1)
                record = {"epoch": epoch, **means, **end.record, "seconds": round(seconds, 3),
                          "elapsed": round(elapsed, 3), "estimated_total": round(total, 3)}
                self.run.append_jsonl(METRICS, record)
                self.tracking.epoch(epoch, record)
                self.say(f"{self.kind} epoch {epoch + 1}/{self.epochs} | {end.summary} | {seconds:.1f} s | "
                         f"elapsed {clock(elapsed)} | whole run ~{clock(total)}")
                state.epoch, state.step = epoch + 1, 0
                job.save(LoopState(epoch + 1, 0, dict(state.sums)))
                epochs_run += 1
                stopping = runtime.mean_values([float(bool(stop.requested))])[0] > 0  # every rank decides alike
                paused = (self.stop_after_epochs is not None and epochs_run >= self.stop_after_epochs
                          and epoch + 1 < self.epochs)
                ending = end.stop is not None or stopping or paused or epoch + 1 == self.epochs
                self._plot(job, force=ending)
                if end.stop is not None:
                    self.say(f"{self.kind}: stopped after epoch {epoch + 1}: {end.stop}")
                    return LoopEnd("early", epoch, end.stop)
                if stopping:
                    raise self.interrupted(stop.requested or "SIGTERM", f"after epoch {epoch + 1}")
                if paused:
                    return LoopEnd("paused", epoch)
        return LoopEnd("finished", epoch)

    def _steps(self, job: Job, state: LoopState, stop: StopSignal, epoch: int, first: int, batches: Iterable[Any],
               bar: tqdm) -> int | None:
        """The steps of one epoch from step ``first``; the number of steps done when a stop signal ends the
        epoch early (any rank's: the ranks decide together), else None (after the epoch's last step the
        epoch's end comes first)."""
        steps, runtime = self.steps, self.runtime
        for step, batch in enumerate(batches, start=first):
            losses = job.step(epoch, step, batch)
            names = list(losses)
            # one read of the step's losses (one wait for the device, not one per loss: the NaN check below needs
            # them now; a search's sampler waits for the device once per step anyway), and one all_reduce for
            # them and the stop request, so that every rank stops at the same step even when the signal reaches
            # the ranks at different moments
            read = torch.stack([losses[n].detach().float().reshape(()) for n in names]).tolist()
            *values, stopping = runtime.mean_values([*read, float(bool(stop.requested))])
            means = dict(zip(names, values, strict=True))
            check_finite(means, epoch, step, steps, job.learning_rates())
            for name, value in means.items():
                state.sums[name] = state.sums.get(name, 0.0) + value
            bar.set_postfix({n: f"{v:.4f}" for n, v in means.items()})
            bar.update()
            if stopping > 0 and step + 1 < steps:
                return step + 1
        return None

    def _plot(self, job: Job, force: bool) -> None:
        """Redraw the plots (rank 0): after every epoch, unless drawing would take more than a tenth of the
        run's time (short epochs: then every few epochs), and always when the loop ends."""
        if not self.runtime.is_main:
            return
        now = time.monotonic()
        if force or now - self._plotted_at >= 10 * self._plot_seconds:
            job.plot()
            self._plotted_at, self._plot_seconds = time.monotonic(), time.monotonic() - now


def fmt(value: float | None, digits: int = 4) -> str:
    """A number for the report line; ``-`` for a missing or NaN value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"

