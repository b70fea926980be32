"""The data of a run: the preprocessed data set and its fold, the patch size, and seeded patch loaders."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from scnas_dsl.data.augment import AugmentConfig
from scnas_dsl.data.cache import MANIFEST
from scnas_dsl.data.loader import PatchLoader, default_workers, make_loader
from scnas_dsl.data.plan import default_patch as patch_rule
from scnas_dsl.data.preprocess import Preprocessed, preprocess_dataset
from scnas_dsl.data.resample import preprocessed_note
from scnas_dsl.data.splits import FoldSplit, get_fold
from scnas_dsl.errors import RunError
from scnas_dsl.model import SearchSpace
from scnas_dsl.model.wiring import reductions
from scnas_dsl.training.config import CommonConfig
from scnas_dsl.training.device import Runtime

#: the paper's patch edge; the default patch is this, shrunk to the median preprocessed shape
PAPER_PATCH = 128


@dataclass
class DataContext:
    """The preprocessed data of a run and its fold."""

    pre: Preprocessed
    fold: FoldSplit
    in_channels: int
    num_classes: int
    label_names: dict[int, str]


def node_of() -> str:
    """Which machine a rank runs on: torchrun's node rank (``GROUP_RANK``), else the host name."""
    import socket

    return os.environ.get("GROUP_RANK") or socket.gethostname()


def open_data(cfg: CommonConfig, runtime: Runtime) -> DataContext:
    """The preprocessed data (``cfg.data`` is a data set folder, preprocessed here into the cache, or an
    already preprocessed folder) and fold ``cfg.fold``.

    Under ``torchrun`` the data is prepared once per node, by its local rank 0 (a node's cache may be its own
    disk; on a file system the nodes share, the cache's lock lets one of them do the work and the others find it
    done), while the node's other ranks wait; then every rank opens its node's copy. Nodes whose copies differ
    (another data set or other settings) are refused."""
    prepares = not runtime.distributed or runtime.local_rank == 0
    root, key, failure = None, None, None
    if prepares:
        try:
            source = Path(cfg.data)
            if (source / MANIFEST).is_file():
                pre = Preprocessed(source)
            else:
                pre = preprocess_dataset(source, spacing=cfg.spacing, progress=cfg.progress and runtime.is_main)
            note = preprocessed_note(pre)  # a target much finer than the data: say what it costs
            if note is not None and runtime.is_main:
                print(note, file=sys.stderr)
            get_fold(pre, cfg.fold, cfg.splits_seed)  # records the search split on disk once
            root, key = str(pre.root), pre.settings_key
        except Exception as err:
            if not runtime.distributed:
                raise
            failure = err  # told to every rank below, so that none waits for a preparation that ended
    if runtime.distributed:  # the others wait for their node's preparation on the long-timeout group
        node = node_of()
        every: list[Any] = [None] * runtime.world_size
        dist.all_gather_object(every, (node, runtime.local_rank, root, key, None if failure is None else str(failure)),
                               group=runtime.wait_group)
        if failure is not None:
            raise failure
        failed = [(entry[0], entry[4]) for entry in every if entry[4] is not None]
        if failed:
            raise RunError(f"the data preparation of node {failed[0][0]} failed: {failed[0][1]}")
        prepared = {entry[0]: (entry[2], entry[3]) for entry in every if entry[1] == 0}
        if node not in prepared:
            raise RunError(f"node {node} has no local rank 0 to prepare its data (LOCAL_RANK, GROUP_RANK of torchrun)")
        if len({k for _, k in prepared.values()}) > 1:
            copies = "; ".join(f"node {n}: {r}" for n, (r, _) in sorted(prepared.items()))
            raise RunError(f"the nodes prepared different data ({copies}): give every node the same data set and "
                           "settings (the same --data contents, --spacing, scnas version)")
        root = prepared[node][0]
    assert root is not None
    pre = Preprocessed(Path(root))
    fold = get_fold(pre, cfg.fold, cfg.splits_seed)
    labels = dict(pre.dataset.labels)
    return DataContext(pre=pre, fold=fold, in_channels=len(pre.dataset.modalities),
                       num_classes=pre.dataset.num_classes,
                       label_names={k: v for k, v in labels.items() if k != 0})


def default_patch(pre: Preprocessed, case_ids: list[str], levels: int) -> tuple[int, int, int]:
    """The patch rule of ``scnas data plan`` (``scnas_dsl.data.plan.default_patch``) on the median preprocessed
    shape of ``case_ids``, every axis a multiple of ``2**levels`` so that the U-Net can take it."""
    median = np.median([pre.meta(c).shape for c in case_ids], axis=0)
    patch = patch_rule([float(m) for m in median], 2**levels, (PAPER_PATCH,) * 3)
    return (patch[0], patch[1], patch[2])


def patch_for(cfg: CommonConfig, data: DataContext, space: SearchSpace) -> tuple[int, int, int]:
    """The configured patch, or :func:`default_patch` for the fold's training cases; checked against the
    space (3D, divisible by 2**levels)."""
    from scnas_dsl.errors import CompileError
    from scnas_dsl.nn import check_input_size

    if space.unet.dims != 3:
        raise RunError(f"space '{space.name}' is {space.unet.dims}D but the data is 3D volumes; use a space with "
                       "`dims 3` (2D training on slices is not supported)")
    patch = cfg.patch if cfg.patch is not None else default_patch(data.pre, data.fold.train, reductions(space))
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


def augments_on_device(cfg: CommonConfig, runtime: Runtime) -> bool:
    """Whether the run augments its batches on the training device (``augment_on``; ``auto``: on a GPU)
    rather than in the loader's workers."""
    if cfg.augment_on == "auto":
        return runtime.device.type == "cuda"
    return cfg.augment_on == "device"


def loader_workers(cfg: CommonConfig, runtime: Runtime) -> int:
    """``cfg.workers``, or the default for the device and the GPU processes on this machine (torchrun's
    ``LOCAL_WORLD_SIZE``) when it is None."""
    if cfg.workers is not None:
        return cfg.workers
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if runtime.distributed else 1
    return default_workers(runtime.device.type, local)


def loader(cfg: CommonConfig, data: DataContext, runtime: Runtime, case_ids: list[str],
           patch: tuple[int, int, int], stream: int, *, augment: bool | None = None,
           num_batches: int | None = None) -> PatchLoader:
    """Seeded training batches from ``case_ids``, delivered on the run's device (pinned on their way to a
    GPU) and augmented where :func:`augments_on_device` says; ``stream`` separates loaders of one run.
    ``augment`` and ``num_batches`` default to the run's settings."""
    augment = cfg.augment if augment is None else augment
    return make_loader(data.pre, case_ids, patch_size=patch, batch_size=per_rank_batch(cfg.batch_size, runtime),
                       foreground_fraction=cfg.foreground_fraction,
                       augment=AugmentConfig() if augment else AugmentConfig.none(),
                       seed=cfg.seed * 1000 + stream, workers=loader_workers(cfg, runtime),
                       num_batches=num_batches or cfg.batches_per_epoch, rank=runtime.rank,
                       world_size=runtime.world_size, augment_in_loader=not augments_on_device(cfg, runtime),
                       device=runtime.device, pin_memory=runtime.device.type == "cuda")


def epoch_batches(source: PatchLoader, epoch: int, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Epoch ``epoch``'s batches (on the loader's device), without the first ``skip`` (already used before a
    resume)."""
    source.set_epoch(epoch)
    for index, batch in enumerate(source):
        if index >= skip:
            yield batch
