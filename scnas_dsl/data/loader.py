"""Random training patches from preprocessed data, as a seeded, repeatable torch DataLoader.

* A patch's lower corner is drawn uniformly so that the patch lies inside the (already cropped to non-zero)
  volume; where the volume is smaller than the patch along an axis, it is placed at a random offset inside
  the patch and the rest is padded with zeros (label background).
* A share ``foreground_fraction`` of the patches (default a third, like nnU-Net) is centred on a foreground
  voxel: a class present in the case is drawn uniformly, then one of its sampled voxel locations. Per batch
  ``floor(B * f)`` samples are forced, plus one more with probability equal to the remainder, so small batches
  get the same share on average (nnU-Net's rule forces none in a batch of one).
* Batch ``i`` of epoch ``e`` on rank ``r`` is drawn from a generator seeded by ``(seed, r, e, i)``: the same
  seed gives the same batches whatever the number of workers; ranks and epochs differ. The worker processes
  are started once per loader (persistent) and are handed ``(epoch, index)`` keys by a sampler in the main
  process, so they always draw the current epoch's batches; the DataLoader returns them in order.
* Labels keep the preprocessed data's small integer type (uint8 up to 256 classes, int16 above: see
  ``label_dtype``); the loss functions take them as they are.
* Augmentation runs either in the workers on the CPU (``augment_in_loader=True``) or, after the batch has been
  moved to ``device``, in the main process (``augment_in_loader=False``: on the GPU when the device is one).
  Both draw the transforms' random numbers from a CPU generator seeded by the batch's own seed, so the same
  seed gives the same augmentation in both places (equal on the CPU, equal up to float rounding on a GPU).
"""

from __future__ import annotations

import atexit
import os
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from scnas_dsl.data.augment import AugmentConfig, augment_batch
from scnas_dsl.data.pipeline import label_dtype
from scnas_dsl.data.preprocess import Preprocessed
from scnas_dsl.errors import DataError
from scnas_dsl.stopping import ignore_signals_in_worker

#: Cases whose memory maps a loader process keeps open at once.
OPEN_CASES = 64
#: The most loader workers chosen by default (:func:`default_workers`): with augmentation on the GPU they only
#: read and crop patches, which a few processes keep up with.
MAX_DEFAULT_WORKERS = 4

#: One batch as the workers hand it over: image, label, and the seed of its augmentation.
RawBatch = tuple[torch.Tensor, torch.Tensor, int]


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, as a batch system sets it), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def default_workers(device_type: str, local_processes: int = 1, cpus: int | None = None) -> int:
    """Loader workers when none are asked for: on a GPU, the CPUs left per training process on this machine
    (``local_processes``: torchrun's ``LOCAL_WORLD_SIZE``) minus the one the process itself uses, at most
    :data:`MAX_DEFAULT_WORKERS` (0 with a single CPU); on the CPU none, since the training step already uses
    every core and workers would only take cores from it."""
    if device_type != "cuda":
        return 0
    per_process = (usable_cpus() if cpus is None else cpus) // max(local_processes, 1)
    return max(0, min(MAX_DEFAULT_WORKERS, per_process - 1))


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


class PatchDataset(Dataset):
    """Batch ``(epoch, index)`` of ``num_batches`` per epoch: image float32 (B, C, *patch), label (B, *patch)
    in the smallest integer type of the data set's classes, and the seed of the batch's augmentation (already
    applied when ``augment`` is set)."""

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
        self.label_dtype = label_dtype(pre.dataset.num_classes)
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

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, key: tuple[int, int]) -> RawBatch:
        epoch, index = key
        return self.raw_batch(index, epoch)

    def make_batch(self, index: int, epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``index`` of epoch ``epoch`` (deterministic given seed, rank and epoch)."""
        image, label, _ = self.raw_batch(index, epoch)
        return image, label

    def raw_batch(self, index: int, epoch: int) -> RawBatch:
        """Batch ``index`` of epoch ``epoch`` and the seed of its augmentation (applied here when this dataset
        has an ``augment``)."""
        rng = np.random.default_rng([self.seed, self.rank, epoch, index])
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
        label_t = torch.from_numpy(np.stack(labels).astype(self.label_dtype, copy=False))
        augment_seed = int(rng.integers(2**63 - 1))
        if self.augment is not None and self.augment.enabled:
            image_t, label_t = augment_batch(image_t, label_t, self.augment, augment_generator(augment_seed),
                                             self.pre.dataset.num_classes)
        return image_t, label_t, augment_seed


def augment_generator(seed: int) -> torch.Generator:
    """The generator of one batch's augmentation: on the CPU wherever the batch is augmented, so that the
    transform choices and parameters are the same in the workers and on a GPU (dense noise on a GPU comes from a
    CUDA generator seeded from it: ``scnas_dsl.data.augment.on_device``)."""
    return torch.Generator().manual_seed(seed)


class _EpochKeys(Sampler):
    """The ``(epoch, index)`` keys of one pass, read in the main process when a pass starts: persistent
    workers draw whatever epoch they are handed."""

    def __init__(self, num_batches: int) -> None:
        self.num_batches = num_batches
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, index) for index in range(self.num_batches)])


class PatchLoader:
    """An iterable of ``num_batches`` batches per pass; each pass is the next epoch (or :meth:`set_epoch`).

    Batches come out on ``device`` (None: where they were made, the CPU), augmented by ``augment`` there when
    it is given (the dataset then only crops). Worker processes start at the first pass and serve every later
    one (:meth:`close` ends them; so does dropping the loader). ``pin_memory`` pins the batches (in a
    DataLoader thread with workers) so that the copy to a GPU runs asynchronously."""

    def __init__(self, dataset: PatchDataset, workers: int, *, augment: AugmentConfig | None = None,
                 device: torch.device | None = None, pin_memory: bool = False) -> None:
        self.dataset = dataset
        self.workers = workers
        self.augment = augment if augment is not None and augment.enabled else None
        self.device = device
        self.pin_memory = pin_memory
        self.epoch = 0
        self._keys = _EpochKeys(dataset.num_batches)
        self._loader: DataLoader | None = None

    def __len__(self) -> int:
        return self.dataset.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass draw epoch ``epoch``'s batches (to resume a run exactly)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        for image, label, seed in self._raw(epoch):
            if self.device is not None:
                image, label = to_device(image, self.device), to_device(label, self.device)
            if self.augment is not None:
                image, label = augment_batch(image, label, self.augment, augment_generator(seed),
                                             self.dataset.pre.dataset.num_classes)
            yield image, label

    def _raw(self, epoch: int) -> Iterator[RawBatch]:
        if self.workers == 0:
            for index in range(self.dataset.num_batches):
                image, label, seed = self.dataset.raw_batch(index, epoch)
                if self.pin_memory:
                    image, label = image.pin_memory(), label.pin_memory()
                yield image, label, seed
            return
        if self._loader is None:
            _close_at_exit(self)
            # batch_size=None: the dataset makes whole batches; the sampler hands out (epoch, index) keys
            self._loader = DataLoader(self.dataset, batch_size=None, sampler=self._keys, num_workers=self.workers,
                                      persistent_workers=True, pin_memory=self.pin_memory,
                                      worker_init_fn=ignore_stop_signals)
        self._keys.epoch = epoch
        yield from self._loader

    def close(self) -> None:
        """End the worker processes (a later pass starts new ones)."""
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


#: loaders whose workers may be running, closed at exit (see :func:`_close_at_exit`)
_LIVE: weakref.WeakSet[PatchLoader] = weakref.WeakSet()
_exit_hook = False


def _close_at_exit(loader: PatchLoader) -> None:
    """End ``loader``'s workers when the interpreter exits, if it is still open then. The workers ignore
    SIGTERM (:func:`ignore_stop_signals`), by which multiprocessing's own exit handler would end them before
    waiting for them: it would wait forever. Registered at the first worker start, so that it runs before
    multiprocessing's and torch's exit handlers (last registered, first run)."""
    global _exit_hook
    _LIVE.add(loader)
    if not _exit_hook:
        atexit.register(_close_all)
        _exit_hook = True


def _close_all() -> None:
    for loader in list(_LIVE):
        loader.close()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``: unchanged when it is there already; onto a GPU through pinned memory (pinned
    here unless it is already), so that the copy runs asynchronously."""
    if on_device(tensor, device):
        return tensor
    if device.type == "cuda":
        if tensor.device.type == "cpu" and not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    return tensor.to(device)


def on_device(tensor: torch.Tensor, device: torch.device) -> bool:
    """Whether ``tensor`` is on ``device`` (a device without an index: any of that type)."""
    return tensor.device.type == device.type and (device.index is None or tensor.device.index == device.index)


def ignore_stop_signals(worker_id: int) -> None:
    """A loader worker's start: the one policy of every worker process (``scnas_dsl.stopping``): a signal to the
    whole process group (Ctrl-C, a batch system's SIGTERM) is answered by the main process, which saves its
    checkpoint and then ends the workers."""
    ignore_signals_in_worker(worker_id)


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
    device: torch.device | str | None = None,
    pin_memory: bool = False,
) -> PatchLoader:
    """Training batches (image float32 (B, C, *patch), label (B, *patch) as ``label_dtype`` of the data set's
    classes: uint8 up to 256) from ``case_ids`` of ``pre``, on ``device`` (None: the CPU, where they are made).

    ``augment`` is applied on the CPU inside the workers when ``augment_in_loader`` (default); with
    ``augment_in_loader=False`` the workers only crop, and each batch is augmented after its move to
    ``device`` (a GPU: in batches there), with the same random numbers as in the workers. The same ``seed``
    gives the same batches (also with workers); each ``rank`` gets its own stream. ``pin_memory``: batches
    in pinned memory, for an asynchronous copy to a GPU.
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
    return PatchLoader(dataset, workers, augment=None if augment_in_loader else augment,
                       device=None if device is None else torch.device(device), pin_memory=pin_memory)
