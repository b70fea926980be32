"""What search and retraining share: opening the data, the patch size, loaders, the stop signal, the NaN
check, progress bars, and writing a genotype that ``scnas train`` can load."""

from __future__ import annotations

import math
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from scnas_dsl.data.augment import AugmentConfig
from scnas_dsl.data.loader import PatchLoader, make_loader
from scnas_dsl.data.preprocess import Preprocessed, preprocess_dataset
from scnas_dsl.data.splits import FoldSplit, get_fold
from scnas_dsl.errors import CheckpointError, RunError
from scnas_dsl.model import Document, Genotype, Import, SearchSpace
from scnas_dsl.train.checkpoint import load_checkpoint
from scnas_dsl.train.config import CommonConfig
from scnas_dsl.train.device import Runtime

#: the paper's patch edge; the default patch is this, shrunk to the median preprocessed shape
PAPER_PATCH = 128


class RunInterrupted(RunError):
    """Ctrl-C or SIGTERM stopped a run after its checkpoint was saved."""


@dataclass
class DataContext:
    """The preprocessed data of a run and its fold."""

    pre: Preprocessed
    fold: FoldSplit
    in_channels: int
    num_classes: int
    label_names: dict[int, str]


def open_data(cfg: CommonConfig, runtime: Runtime) -> DataContext:
    """The preprocessed data (``cfg.data`` is a data set folder, preprocessed here into the cache, or an
    already preprocessed folder) and fold ``cfg.fold``. Rank 0 preprocesses; the other ranks wait for it."""
    root: list[Any] = [None]
    if runtime.is_main:
        source = Path(cfg.data)
        if (source / "preprocessed.json").is_file():
            pre = Preprocessed(source)
        else:
            pre = preprocess_dataset(source, spacing=cfg.spacing, progress=cfg.progress)
        get_fold(pre, cfg.fold, cfg.splits_seed)  # records the search split on disk once
        root[0] = str(pre.root)
    if runtime.distributed:
        dist.broadcast_object_list(root, src=0)
    pre = Preprocessed(Path(root[0]))
    fold = get_fold(pre, cfg.fold, cfg.splits_seed)
    labels = dict(pre.dataset.labels)
    return DataContext(pre=pre, fold=fold, in_channels=len(pre.dataset.modalities),
                       num_classes=pre.dataset.num_classes,
                       label_names={k: v for k, v in labels.items() if k != 0})


def default_patch(pre: Preprocessed, case_ids: list[str], levels: int) -> tuple[int, int, int]:
    """128^3 (the paper's patch) shrunk per axis to the median preprocessed shape, rounded up to a multiple
    of ``2**levels`` so that the U-Net can take it."""
    step = 2**levels
    median = np.median([pre.meta(c).shape for c in case_ids], axis=0)
    return tuple(int(max(step, min(PAPER_PATCH // step * step, math.ceil(m / step) * step)))  # type: ignore[return-value]
                 for m in median)


def levels_of(space: SearchSpace) -> int:
    """How many down-samplings the U-Net of ``space`` makes (its reduction cells)."""
    roles = [space.cell(ref.name).role for _, ref in space.unet.sequence()]  # type: ignore[union-attr]
    return roles.count("reduction")


def patch_for(cfg: CommonConfig, data: DataContext, space: SearchSpace) -> tuple[int, int, int]:
    """The configured patch, or :func:`default_patch` for the fold's training cases; checked against the
    space (3D, divisible by 2**levels)."""
    from scnas_dsl.errors import CompileError
    from scnas_dsl.nn import check_input_size

    if space.unet.dims != 3:
        raise RunError(f"space '{space.name}' is {space.unet.dims}D but the data is 3D volumes; use a space with "
                       "`dims 3` (2D training on slices is not supported)")
    patch = cfg.patch if cfg.patch is not None else default_patch(data.pre, data.fold.train, levels_of(space))
    try:
        check_input_size(space, patch)
    except CompileError as err:
        raise RunError(f"--patch {' '.join(map(str, patch))} does not fit space '{space.name}': {err}") from err
    return patch


def per_rank_batch(batch_size: int, runtime: Runtime) -> int:
    """The global batch is split over the ranks (the paper: batch 4 over 4 GPUs = 1 per GPU)."""
    if batch_size % runtime.world_size:
        raise RunError(f"batch size {batch_size} cannot be split evenly over {runtime.world_size} processes; "
                       "use a multiple of the number of processes")
    return batch_size // runtime.world_size


def loader(cfg: CommonConfig, data: DataContext, runtime: Runtime, case_ids: list[str],
           patch: tuple[int, int, int], stream: int) -> PatchLoader:
    """Seeded training batches from ``case_ids``; ``stream`` separates loaders of one run."""
    return make_loader(data.pre, case_ids, patch_size=patch, batch_size=per_rank_batch(cfg.batch_size, runtime),
                       foreground_fraction=cfg.foreground_fraction,
                       augment=AugmentConfig() if cfg.augment else AugmentConfig.none(),
                       seed=cfg.seed * 1000 + stream, workers=cfg.workers,
                       num_batches=cfg.batches_per_epoch, rank=runtime.rank, world_size=runtime.world_size)


def epoch_batches(source: PatchLoader, epoch: int, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Epoch ``epoch``'s batches, without the first ``skip`` (already used before a resume)."""
    source.set_epoch(epoch)
    for index, batch in enumerate(source):
        if index >= skip:
            yield batch


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
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def check_finite(loss: float, epoch: int, step: int, steps: int, what: str, lr: float) -> None:
    """Stop the run with advice when a loss is NaN or infinite."""
    if not math.isfinite(loss):
        raise RunError(
            f"the {what} became {loss} at epoch {epoch + 1}, step {step + 1} of {steps}; the run stopped "
            f"(the last checkpoint is from before). Try a lower learning rate (now {lr:g}), a smaller batch or "
            "patch, or check the data with `scnas data check DATA_DIR` (NaN or extreme intensities)"
        )


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """A tqdm bar on stderr with an ETA; silent when disabled or on ranks other than 0."""
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, dynamic_ncols=True,
                leave=False, mininterval=1.0)


def space_text(space: SearchSpace, source_text: str | None, self_contained: bool) -> str:
    """The text of ``space.scn`` in a run folder: the spec's own text when it stands alone (comments kept),
    else the canonical print of the space."""
    from scnas_dsl.graph.printer import print_document

    if source_text is not None and self_contained:
        return source_text
    return print_document(Document(spaces=(space,)))


def genotype_text(genotype: Genotype, header: str) -> str:
    """``genotype.scn``: a comment header, ``import "space.scn"`` and the genotype."""
    from scnas_dsl.graph.printer import print_document

    body = print_document(Document(imports=(Import(path="space.scn"),), genotypes=(genotype,)))
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + body


def genotype_body(genotype: Genotype) -> str:
    """The genotype alone as ``.scn`` text (for the per-epoch records)."""
    from scnas_dsl.graph.printer import print_document

    return print_document(Document(genotypes=(genotype,)))


#: settings that may change when a run is resumed (they do not change what the run computes, or extend it)
RESUMABLE_CHANGES = {"out", "device", "workers", "progress", "epochs", "data"}


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
    import json

    path = run_dir / "config.json"
    if not path.is_file():
        return
    before = json.loads(path.read_text())
    changed = sorted(k for k, v in settings.items()
                     if k not in RESUMABLE_CHANGES and k in before and json.dumps(before[k]) != json.dumps(v))
    if changed:
        details = "; ".join(f"{k}: {before[k]!r} -> {settings[k]!r}" for k in changed)
        raise RunError(f"{path}: the run was started with other settings ({details}); resume with the same "
                       "settings (only --epochs, --device, --workers may change) or start a new run")


def lr_of(optimizer: torch.optim.Optimizer) -> float:
    """The current learning rate of ``optimizer`` (its first parameter group)."""
    return float(optimizer.param_groups[0]["lr"])


def plateau(optimizer: torch.optim.Optimizer, factor: float, patience: int, threshold: float
            ) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """The paper's schedule: lr x factor after ``patience`` epochs without a lower training loss."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience,
                                                      threshold=threshold)
