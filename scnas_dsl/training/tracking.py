"""Experiment tracking: a run's per-epoch record fanned out to the trackers a user asks for (``--log
tensorboard,wandb`` or ``"log": [...]`` in the config), as nnU-Net's ``MetaLogger`` fans out to its local log and
Weights & Biases.

The local files (``metrics.jsonl``, ``log.txt``, the plots) are always written by the epoch loop; this module only
adds the optional trackers, each an extra (``pip install 'scnas_dsl[tracking]'``):

* ``tensorboard``: event files in ``RUN/tensorboard/`` (``tensorboard --logdir RUN``). Every number of an epoch's
  record is a scalar at step ``epoch`` (0-based, as in ``metrics.jsonl``): the losses, Dice, learning rates,
  temperature, entropy, the discretisation gap, and after a search the self-check's rank; nested values are
  named ``parent/child`` (``self_check/rank``). A search adds the heat map of softmax(alpha) per cell as an
  image each epoch. A resumed run purges the steps from its checkpoint's epoch on (``purge_step``), so the
  curves continue without duplicate steps.
* ``wandb``: a Weights & Biases run in ``RUN/wandb/``, offline unless ``WANDB_MODE`` says otherwise (nothing is
  sent; ``wandb sync RUN/wandb/offline-run-*`` uploads it later). The same scalars and images at the same steps;
  the run's id is kept in ``RUN/wandb/scnas-run-id`` so that a resumed run continues the same W&B run, and the last
  step logged in ``RUN/wandb/scnas-last-step``, so that a step is never logged twice (an epoch that a kill between
  its record and its checkpoint makes run again keeps its first values in W&B).

Only the main process of a ``torchrun`` job logs.
"""

from __future__ import annotations

import importlib.util
import math
import os
import uuid
from pathlib import Path
from typing import Any

from scnas_dsl.errors import RunError

#: the trackers ``--log`` accepts, and the package each needs
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb"}
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
WANDB_ID = "scnas-run-id"
WANDB_STEP = "scnas-last-step"  # the last epoch logged to W&B: a resumed run does not log a step twice


def parse_trackers(value: Any) -> tuple[str, ...]:
    """``"tensorboard,wandb"`` (or a list of names) as a tuple of known tracker names; anything else is a ValueError
    that lists the names."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = []
    for item in items:
        name = str(item).strip().lower()
        if not name:
            continue
        if name not in TRACKERS:
            raise ValueError(f"unknown tracker {item!r}: choose from {', '.join(TRACKERS)} (comma-separated)")
        if name not in names:
            names.append(name)
    for name in names:  # before the run starts: a missing package is a message, not a half-made run folder
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ValueError(f"--log {name} needs the {TRACKERS[name]} package: pip install 'scnas_dsl[tracking]' "
                             f"(or pip install {TRACKERS[name]}), or leave {name} out")
    return tuple(names)


def scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite number of ``record`` (nested dictionaries as ``parent/child``; booleans as 0/1; lists,
    strings and the epoch itself left out)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if key == "epoch" and not prefix:
            continue
        if isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)):
            if math.isfinite(value):
                out[name] = float(value)
        elif isinstance(value, dict):
            out.update(scalars(value, f"{name}/"))
    return out


def figure_pixels(figure: Any) -> Any:
    """A matplotlib figure rendered to an RGB array (height, width, 3), for both trackers."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class Tracking:
    """The trackers of one run (none: every call does nothing). ``start_epoch`` is the epoch the run (re)starts
    at: earlier steps were logged by the run before."""

    def __init__(self, names: tuple[str, ...], run: Path, *, kind: str, settings: dict[str, Any],
                 start_epoch: int, enabled: bool = True) -> None:
        self.names = names if enabled else ()
        self._tb: Any = None
        self._wandb: Any = None
        self._wandb_last = start_epoch - 1
        for name in self.names:
            try:
                __import__(TRACKERS[name])
            except ImportError as err:
                raise RunError(f"--log {name} needs the {TRACKERS[name]} package: pip install "
                               f"'scnas_dsl[tracking]' (or pip install {TRACKERS[name]}); or leave {name} out") from err
        if "tensorboard" in self.names:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run / TENSORBOARD_DIR), purge_step=start_epoch or None)
        if "wandb" in self.names:
            self._wandb = _wandb_run(run, kind, settings)
            self._wandb_step_file = run / WANDB_DIR / WANDB_STEP
            if self._wandb_step_file.is_file():  # what an earlier session of this run logged already
                try:
                    self._wandb_last = max(self._wandb_last, int(self._wandb_step_file.read_text().strip()))
                except ValueError:
                    pass

    def epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """The numbers of an epoch's record, at step ``epoch``."""
        values = scalars(record)
        self._tensorboard(epoch, values)
        if self._wandb is not None and epoch > self._wandb_last:
            from scnas_dsl.files import write_text

            self._wandb.log(values, step=epoch)
            self._wandb_last = epoch
            write_text(self._wandb_step_file, f"{epoch}\n")

    def amend(self, epoch: int, record: dict[str, Any]) -> None:
        """Numbers added to epoch ``epoch``'s record after it was logged (the search's self-check)."""
        values = scalars(record)
        self._tensorboard(epoch, values)
        if self._wandb is not None:
            for name, value in values.items():  # a logged step cannot take more values: the summary keeps them
                self._wandb.summary[name] = value

    def _tensorboard(self, epoch: int, values: dict[str, float]) -> None:
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(name, value, epoch)
            self._tb.flush()

    def figure(self, epoch: int, tag: str, figure: Any) -> None:
        """A matplotlib figure as an image at step ``epoch`` (only rendered when a tracker is on)."""
        if self._tb is None and self._wandb is None:
            return
        pixels = figure_pixels(figure)
        if self._tb is not None:
            self._tb.add_image(tag, pixels, epoch, dataformats="HWC")
            self._tb.flush()
        if self._wandb is not None and epoch > self._wandb_last:  # before the epoch's scalars, at the same step
            import wandb

            self._wandb.log({tag: wandb.Image(pixels)}, step=epoch, commit=False)

    @property
    def active(self) -> bool:
        return self._tb is not None or self._wandb is not None

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _wandb_run(run: Path, kind: str, settings: dict[str, Any]) -> Any:
    """The W&B run of ``run`` (a new one, or the one its id file names), offline unless ``WANDB_MODE`` is set."""
    import wandb

    folder = run / WANDB_DIR
    folder.mkdir(parents=True, exist_ok=True)
    id_file = folder / WANDB_ID
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    if not id_file.is_file():
        from scnas_dsl.files import write_text

        write_text(id_file, run_id + "\n")
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "scnas"), dir=str(run), id=run_id, resume="allow",
                      name=f"{run.name}", job_type=kind, config=settings,
                      mode=os.environ.get("WANDB_MODE", "offline"),  # type: ignore[arg-type]
                      settings=wandb.Settings(silent=True, console="off"))

