"""Random training patches from preprocessed data, as a seeded, repeatable torch DataLoader.

* A patch's lower corner is drawn uniformly so that the patch lies inside the (already cropped to non-zero)
  volume; where the volume is smaller than the patch along an axis, it is placed at a random offset inside
  the patch and the rest is padded with zeros (label background).
* A share ``foreground_fraction`` of the patches (default a third, like nnU-Net) is centred on a foreground
  voxel: a class present in the case is drawn uniformly, then one of its sampled voxel locations. Per batch
  ``floor(B * f)`` samples are forced, plus one more with probability equal to the remainder, so small batches
  get the same share on average (nnU-Net's rule forces none in a batch of one).
* Batch ``i`` of epoch ``e`` on rank ``r`` is drawn from a generator seeded by ``(seed, r, e, i)``: the same
  seed gives the same batches whatever the number of workers; ranks and epochs differ. Workers take every
  ``n``-th batch; the DataLoader returns them in order.
"""

from __future__ import annotations

import signal
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from scnas_dsl.data.augment import AugmentConfig, augment_batch
from scnas_dsl.data.preprocess import Preprocessed
from scnas_dsl.errors import DataError

#: Cases whose memory maps a loader process keeps open at once.
OPEN_CASES = 64


def choose_lower_corner(
    shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator, centre: Sequence[int] | None = None
) -> list[int]:
    """Lower corner of a patch: uniform over the allowed range, or centred on ``centre`` and clamped to it.

    The allowed range keeps the patch inside the volume, or the volume inside the patch where it is smaller.
    """
    corner = []
    for axis, (n, p) in enumerate(zip(shape, patch, strict=True)):
        low, high = min(0, n - p), max(0, n - p)
        if centre is None:
            corner.append(int(rng.integers(low, high + 1)))
        else:
            corner.append(int(min(max(int(centre[axis]) - p // 2, low), high)))
    return corner


def extract_patch(volume: np.ndarray, corner: Sequence[int], patch: Sequence[int]) -> np.ndarray:
    """The patch of ``volume`` (..., D, H, W) at ``corner``, zero-padded where it leaves the volume."""
    spatial = volume.shape[-3:]
    out = np.zeros((*volume.shape[:-3], *patch), dtype=volume.dtype)
    src, dst = [], []
    for n, p, lo in zip(spatial, patch, corner, strict=True):
        a, b = max(lo, 0), min(lo + p, n)
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    target: tuple[Any, ...] = (Ellipsis, *dst)
    source: tuple[Any, ...] = (Ellipsis, *src)
    out[target] = volume[source]
    return out


class PatchDataset(IterableDataset):
    """Yields ``num_batches`` batches (image float32 (B, C, *patch), label int64 (B, *patch)) per epoch."""

    def __init__(
        self,
        pre: Preprocessed,
        case_ids: Sequence[str],
        patch_size: Sequence[int],
        batch_size: int,
        foreground_fraction: float,
        augment: AugmentConfig | None,
        seed: int,
        num_batches: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.pre = pre
        self.case_ids = list(case_ids)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_size = batch_size
        self.foreground_fraction = foreground_fraction
        self.augment = augment
        self.seed = seed
        self.num_batches = num_batches
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._open: OrderedDict[str, tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]] = OrderedDict()

    def _case(self, case_id: str) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        # Memory maps are opened lazily inside each worker process. Each one holds a file descriptor, so only
        # the most recently used OPEN_CASES stay open (484 BraTS cases would exceed the usual limit of 1024).
        if case_id in self._open:
            self._open.move_to_end(case_id)
            return self._open[case_id]
        image, label = self.pre.load(case_id, mmap=True)
        if label is None:
            raise DataError(f"{self.pre.root}: case {case_id} has no label; it cannot be used for training")
        self._open[case_id] = (image, label, self.pre.foreground_locations(case_id))
        if len(self._open) > OPEN_CASES:
            self._open.popitem(last=False)
        return self._open[case_id]

    def make_batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``index`` of the current epoch (deterministic given seed, rank and epoch)."""
        rng = np.random.default_rng([self.seed, self.rank, self.epoch, index])
        forced = int(self.batch_size * self.foreground_fraction)
        if rng.random() < self.batch_size * self.foreground_fraction - forced:
            forced += 1
        images, labels = [], []
        for sample in range(self.batch_size):
            case_id = self.case_ids[int(rng.integers(len(self.case_ids)))]
            image, label, locations = self._case(case_id)
            centre = None
            if sample >= self.batch_size - forced and locations:
                classes = sorted(locations)
                coords = locations[classes[int(rng.integers(len(classes)))]]
                centre = coords[int(rng.integers(len(coords)))]
            corner = choose_lower_corner(label.shape, self.patch_size, rng, centre)
            images.append(extract_patch(image, corner, self.patch_size))
            labels.append(extract_patch(label, corner, self.patch_size))
        image_t = torch.from_numpy(np.stack(images).astype(np.float32, copy=False))
        label_t = torch.from_numpy(np.stack(labels).astype(np.int64))
        if self.augment is not None and self.augment.enabled:
            generator = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
            image_t, label_t = augment_batch(image_t, label_t, self.augment, generator)
        return image_t, label_t

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for index in range(worker, self.num_batches, workers):
            yield self.make_batch(index)


class PatchLoader:
    """An iterable of ``num_batches`` batches per pass; each pass is the next epoch (or :meth:`set_epoch`)."""

    def __init__(self, dataset: PatchDataset, workers: int) -> None:
        self.dataset = dataset
        self.workers = workers
        self.epoch = 0

    def __len__(self) -> int:
        return self.dataset.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass draw epoch ``epoch``'s batches (to resume a run exactly)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.dataset.epoch = self.epoch
        self.epoch += 1
        if self.workers == 0:
            yield from self.dataset
            return
        # Workers are started per pass, so they see this pass's epoch; batch_size=None since batches are
        # made whole by the dataset.
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.workers, persistent_workers=False,
                            worker_init_fn=ignore_stop_signals)
        yield from loader


def ignore_stop_signals(worker_id: int) -> None:
    """A loader worker ignores SIGINT and SIGTERM: a signal to the whole process group (Ctrl-C, a batch
    system's SIGTERM) is answered by the main process, which saves its checkpoint and then ends the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(
    pre: Preprocessed,
    case_ids: Sequence[str],
    *,
    patch_size: Sequence[int],
    batch_size: int,
    foreground_fraction: float = 1 / 3,
    augment: AugmentConfig | None = None,
    seed: int,
    workers: int = 0,
    num_batches: int,
    rank: int = 0,
    world_size: int = 1,
    augment_in_loader: bool = True,
) -> PatchLoader:
    """Training batches (image float32 (B, C, *patch), label int64 (B, *patch)) from ``case_ids`` of ``pre``.

    ``augment`` is applied on the CPU inside the workers when ``augment_in_loader`` (default); pass
    ``augment_in_loader=False`` to get raw patches and call :func:`augment_batch` on the GPU instead. The same
    ``seed`` gives the same batches (also with workers); each ``rank`` gets its own stream.
    """
    if not case_ids:
        raise DataError("no cases to draw training patches from")
    unknown = sorted(set(case_ids) - set(pre.case_ids))
    if unknown:
        raise DataError(f"{pre.root}: unknown case(s) {', '.join(unknown[:5])}")
    if len(patch_size) != 3 or min(patch_size) < 1:
        raise DataError(f"patch size must be three positive sizes (got {list(patch_size)})")
    if batch_size < 1 or num_batches < 1 or workers < 0:
        raise DataError(
            f"batch_size and num_batches must be >= 1 and workers >= 0 (got {batch_size}, "
            f"{num_batches}, {workers})"
        )
    if not 0.0 <= foreground_fraction <= 1.0:
        raise DataError(f"foreground_fraction must be between 0 and 1 (got {foreground_fraction})")
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world size {world_size}")
    dataset = PatchDataset(
        pre,
        case_ids,
        patch_size,
        batch_size,
        foreground_fraction,
        augment if augment_in_loader else None,
        seed,
        num_batches,
        rank,
        world_size,
    )
    return PatchLoader(dataset, workers)
