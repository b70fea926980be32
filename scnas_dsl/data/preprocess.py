"""Preprocessing of a data set into the cache: fingerprint, settings, one job per case, the manifest.

Which file does what:

- ``pipeline.py``: one case's preprocessing (orientation, crop, resampling, normalisation; the checks of its
  images and label); ``resample.py`` the resampling itself.
- ``cache.py``: the cache folders, keys and lock, the manifest's records and the reader :class:`Preprocessed`.
- ``restore.py``: predictions back to the original image.
- this module: :func:`preprocess_dataset`, which runs the cases of a data set (in worker processes) into a
  cache folder, redoing only what changed. The public names of the others are importable from here too.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from scnas_dsl.data.cache import (
    CASE_PARTS,
    CASES,
    FINGERPRINTS,
    MANIFEST,
    PAPER_SPACING,
    CaseMeta,
    DatasetInfo,
    Normalization,
    Preprocessed,
    cache_root,
    case_file,
    claim_folder,
    default_cache_dir,
    find_preprocessed,
    fingerprint_file,
    input_key,
    lock_folder,
    prepare_out,
    settings_name,
)
from scnas_dsl.data.dataset import (
    Case,
    Dataset,
    load_header,
    missing_file_message,
    open_dataset,
    orientation_problem,
)
from scnas_dsl.data.files import atomic_write, npy, read_json_or_none, write_json
from scnas_dsl.data.pipeline import (
    canonical_geometry,
    label_dtype,
    load_channels,
    load_label,
    preprocess_image,
    run_pipeline,
)
from scnas_dsl.data.resample import foreground_locations, present_classes
from scnas_dsl.data.restore import (
    RESTORE_SLAB,
    restore_prediction,
    restore_probabilities,
    restore_segmentation,
)
from scnas_dsl.errors import DataError
from scnas_dsl.stopping import (
    RunInterrupted,
    StopSignal,
    ignore_signals_in_worker,
    requested_signal,
    stop_requested,
)

__all__ = [
    "FOREGROUND_SAMPLES",
    "PAPER_SPACING",
    "PIPELINE_VERSION",
    "RESTORE_SLAB",
    "CaseMeta",
    "DatasetInfo",
    "Normalization",
    "Preprocessed",
    "cache_root",
    "canonical_geometry",
    "default_cache_dir",
    "find_preprocessed",
    "label_dtype",
    "preprocess_dataset",
    "preprocess_image",
    "restore_prediction",
    "restore_probabilities",
    "restore_segmentation",
    "settings_name",
]

#: Bump when the pipeline changes what it writes: every cached case is then redone.
PIPELINE_VERSION = 2  # 2: thick slices resampled with nearest neighbour out of plane (nnU-Net)
#: Foreground voxels sampled per case for the CT statistics, and per class for foreground-forced patches.
FOREGROUND_SAMPLES = 10_000


def _fingerprint_case(case: Case, channels: int, is_ct: bool, num_classes: int) -> dict[str, Any]:
    """Canonical spacing and shape of a case, and for CT a sample of its foreground intensities per channel."""
    if not is_ct:
        missing = missing_file_message(case.images[0])
        if missing is not None:
            raise DataError(f"{case.images[0]}: case {case.id}: {missing}")
        img = load_header(case.images[0])
        if len(img.shape) not in (3, 4):
            raise DataError(
                f"{case.images[0]}: case {case.id}: image has shape {img.shape}; expected 3D or 4D "
                "(channels last)"
            )
        unusable = orientation_problem(img)  # check's geometry rule, before the geometry is read
        if unusable is not None:
            raise DataError(f"{case.images[0]}: {unusable} (`scnas data check` lists every such image)")
        zooms, shape = canonical_geometry(np.asarray(img.affine), img.shape[:3])
        return {"spacing": zooms, "shape": shape, "samples": None}
    image, ref = load_channels(case.images, channels)
    if case.label is None:
        raise DataError(f"case {case.id}: no label; CT statistics need labelled training cases")
    fg = load_label(case, image.shape[1:], ref, Path(case.images[0]), num_classes) > 0
    values = image[:, fg]
    rng = np.random.default_rng(int(hashlib.sha1(case.id.encode()).hexdigest()[:8], 16))
    if values.shape[1] > FOREGROUND_SAMPLES:
        values = values[:, rng.choice(values.shape[1], FOREGROUND_SAMPLES, replace=False)]
    zooms, shape = canonical_geometry(np.asarray(ref.affine), image.shape[1:])
    return {"spacing": zooms, "shape": shape, "samples": values.astype(np.float32).tolist()}


def _process_case(
    case: Case,
    out: Path,
    channels: int,
    target: Sequence[float] | None,
    norm: Normalization,
    num_classes: int,
    key: dict[str, Any],
) -> dict[str, Any]:
    """Preprocess one case and write its files; return its summary (also written as the commit marker)."""
    image, ref = load_channels(case.images, channels)
    label = None
    if case.label is not None:
        label = load_label(case, image.shape[1:], ref, Path(case.images[0]), num_classes)
    pre_image, pre_label, meta, raw_values = run_pipeline(case.id, image, label, ref, target, norm)
    del image, label
    atomic_write(case_file(out, case.id, "image"), npy(pre_image))
    locations: dict[str, np.ndarray] = {}
    class_voxels: dict[str, int] = {}
    intensity: list[dict[str, float]] = []
    if pre_label is not None:
        atomic_write(case_file(out, case.id, "label"), npy(pre_label))
        rng = np.random.default_rng(int(hashlib.sha1(case.id.encode()).hexdigest()[:8], 16))
        # counted with bincount and sampled chunk by chunk: never a coordinate list of every voxel
        counts = present_classes(pre_label)
        class_voxels = {str(value): counts.get(value, 0) for value in range(num_classes)}
        sampled = foreground_locations(pre_label, counts, FOREGROUND_SAMPLES, rng)
        locations = {str(value): coords for value, coords in sampled.items()}
        for values in raw_values:
            intensity.append(
                {
                    "mean": float(values.mean()),
                    "std": float(values.std()),
                    "p00_5": float(np.percentile(values, 0.5)),
                    "p99_5": float(np.percentile(values, 99.5)),
                }
            )
    atomic_write(case_file(out, case.id, "locations"), lambda f: np.savez(f, **locations))  # type: ignore[arg-type]
    summary = {
        "key": key,
        "meta": meta.model_dump(mode="json"),
        "shape": list(meta.shape),
        "spacing": list(meta.spacing),
        "original_spacing": list(meta.original_spacing),
        "class_voxels": class_voxels,
        "foreground_intensity": intensity,
    }
    write_json(case_file(out, case.id, "record"), summary)
    return summary


def _record_fingerprints(out: Path, stale: list[Case], results: dict[int, dict[str, Any]],
                         fingerprints: dict[str, Any], keys: dict[str, Any], is_ct: bool) -> None:
    """Enter the measured fingerprints (``results`` by index into ``stale``); CT samples go to their file."""
    for index, result in sorted(results.items()):
        case = stale[index]
        samples = result.pop("samples")
        if samples is not None:
            atomic_write(fingerprint_file(out, case.id), npy(np.asarray(samples, np.float32)))
        fingerprints[case.id] = {**result, "key": keys[case.id], "is_ct": is_ct}


def _ct_normalization(samples: list[np.ndarray]) -> Normalization:
    values = np.concatenate(samples, axis=1) if samples else np.zeros((1, 0))
    if values.shape[1] == 0:
        raise DataError(
            "CT data set without any foreground voxel: cannot compute CT normalisation statistics"
        )
    return Normalization(
        scheme="ct",
        mean=values.mean(1).tolist(),
        std=values.std(1).tolist(),
        lower=np.percentile(values, 0.5, axis=1).tolist(),
        upper=np.percentile(values, 99.5, axis=1).tolist(),
    )


class _Stopped(Exception):  # noqa: N818 (a stop, not an error)
    """A stop signal ended a pass between cases: ``done`` holds the finished jobs' results by index."""

    def __init__(self, done: dict[int, Any], total: int) -> None:
        super().__init__(f"stopped after {len(done)} of {total} case(s)")
        self.done, self.total = done, total


class _Workers:
    """Runs jobs serially, or in one process pool (started on first use, shared by both passes).

    A stop signal (Ctrl-C, SIGTERM) is answered between cases with :class:`_Stopped`: no new case is started;
    the pool's workers ignore the signals themselves (a signal to the process group reaches them too) and are
    killed by :meth:`close`, so a case cut off there is never recorded (its record is written last)."""

    def __init__(self, workers: int, progress: bool) -> None:
        self.workers = workers
        self.progress = progress
        self._pool: ProcessPoolExecutor | None = None
        self._stopped = False

    def map(
        self, fn: Callable[..., Any], jobs: list[tuple[Any, ...]], desc: str, parallel: bool = True
    ) -> list[Any]:
        """``[fn(*job) for job in jobs]`` with a progress bar on stderr; :class:`_Stopped` on a stop signal."""
        done: dict[int, Any] = {}
        bar = tqdm(
            total=len(jobs), desc=desc, file=sys.stderr, unit="case",
            disable=not self.progress or not jobs or not sys.stderr.isatty(),  # no carriage returns in logs
        )
        try:
            if parallel and self.workers > 1 and len(jobs) > 1:
                self._in_pool(fn, jobs, done, bar)
            else:
                for index, job in enumerate(jobs):
                    self._check(done, len(jobs))
                    done[index] = fn(*job)
                    self._finished(bar)
        finally:
            bar.close()
        return [done[i] for i in range(len(jobs))]

    def _in_pool(self, fn: Callable[..., Any], jobs: list[tuple[Any, ...]], done: dict[int, Any], bar: tqdm) -> None:
        if self._pool is None:
            # 'spawn' so that worker processes never inherit threads (torch, tqdm) from the parent.
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=get_context("spawn"), initializer=ignore_signals_in_worker
            )
        waiting = list(enumerate(jobs))[::-1]
        running: dict[Future[Any], int] = {}
        while waiting or running:
            self._check(done, len(jobs))
            while waiting and len(running) < self.workers:  # hand out work only while there is no stop
                index, job = waiting.pop()
                running[self._pool.submit(fn, *job)] = index
            finished, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in finished:
                done[running.pop(future)] = future.result()
                self._finished(bar)

    def _check(self, done: dict[int, Any], total: int) -> None:
        if stop_requested():
            self._stopped = True
            raise _Stopped(done, total)

    def _finished(self, bar: tqdm) -> None:
        """A case is done (a hook for tests)."""
        bar.update()

    def close(self) -> None:
        """End the pool: after the running cases, or at once after a stop (the workers are killed)."""
        if self._pool is not None:
            if self._stopped:
                for process in list(getattr(self._pool, "_processes", {}).values()):
                    process.kill()
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def preprocess_dataset(
    root: Path | str,
    out: Path | None = None,
    spacing: Sequence[float] | None = PAPER_SPACING,
    workers: int = 1,
    progress: bool = True,
) -> Preprocessed:
    """Preprocess every training case of the data set at ``root`` into ``out`` (see ``pipeline.py``, ``cache.py``).

    ``spacing`` is the target voxel size in mm (D, H, W after orientation to RAS); ``None`` takes the data
    set's median spacing (no resampling for a data set of one spacing). Cases whose files and settings are
    unchanged since the last run are kept as they are. Returns the :class:`Preprocessed` data.
    With ``workers > 1`` cases run in spawned processes: a script calling this needs the usual
    ``if __name__ == "__main__":`` guard. Ctrl-C or SIGTERM stops between cases with :class:`RunInterrupted`:
    the finished cases are kept, the lock released, and calling it again continues with the rest.
    """
    dataset = open_dataset(root)
    if not dataset.cases:
        raise DataError(f"{dataset.root / 'dataset.json'}: no training cases")
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise DataError(f"target spacing must be three positive sizes in mm (got {list(spacing)})")
    if workers < 1:
        raise DataError(f"workers must be at least 1 (got {workers})")
    out = prepare_out(dataset, out, spacing)
    with StopSignal():
        lock = lock_folder(out)
        pool = _Workers(workers, progress)
        try:
            claim_folder(out, spacing)
            return _preprocess(dataset, out, spacing, pool)
        except _Stopped as stop:
            raise RunInterrupted(
                f"{requested_signal()}: preprocessing stopped after {len(stop.done)} of {stop.total} case(s) "
                f"of this pass; the finished cases are kept in {out}, running the command again continues "
                "with the rest"
            ) from None
        finally:
            pool.close()
            lock.release()


def _preprocess(
    dataset: Dataset, out: Path, spacing: tuple[float, ...] | None, pool: _Workers
) -> Preprocessed:
    channels = len(dataset.modalities)
    keys = {case.id: input_key(dataset, case) for case in dataset.cases}
    # a worker killed by a stop may leave a temporary file (we hold the lock: no one else is writing)
    for folder in (CASES, FINGERPRINTS):
        for path in (out / folder).glob(".*.tmp"):
            path.unlink(missing_ok=True)

    # 1. fingerprint (spacing, shape, CT foreground samples) of the cases whose files changed
    fp_path = fingerprint_file(out)
    fingerprints: dict[str, Any] = read_json_or_none(fp_path) or {}
    stale = [
        c
        for c in dataset.cases
        if fingerprints.get(c.id, {}).get("key") != keys[c.id]
        or fingerprints[c.id].get("is_ct") != dataset.is_ct
    ]
    try:
        # MRI fingerprints read headers only: not worth a process; CT ones read the data.
        results = dict(enumerate(pool.map(
            _fingerprint_case,
            [(c, channels, dataset.is_ct, dataset.num_classes) for c in stale],
            "fingerprint",
            dataset.is_ct,
        )))
    except _Stopped as stop:  # keep what was measured: the next call measures only the rest
        _record_fingerprints(out, stale, stop.done, fingerprints, keys, dataset.is_ct)
        write_json(fp_path, fingerprints)
        raise
    _record_fingerprints(out, stale, results, fingerprints, keys, dataset.is_ct)
    fingerprints = {c.id: fingerprints[c.id] for c in dataset.cases}
    if stale:
        write_json(fp_path, fingerprints)

    target = (
        spacing
        if spacing is not None
        else tuple(
            round(float(s), 6)
            for s in np.median([fingerprints[c.id]["spacing"] for c in dataset.cases], axis=0)
        )
    )
    if dataset.is_ct:
        norm = _ct_normalization(
            [np.load(fingerprint_file(out, c.id)) for c in dataset.cases]
        )
    else:
        norm = Normalization(scheme="zscore_nonzero")
    info = DatasetInfo(
        name=dataset.name,
        layout=dataset.layout,
        modalities=dataset.modalities,
        labels=dataset.labels,
        is_ct=dataset.is_ct,
        source_root=str(dataset.root),
    )
    settings = {
        "version": PIPELINE_VERSION,
        "spacing": list(target),
        "normalization": norm.model_dump(),
        "modalities": dataset.modalities,
        "labels": {str(k): v for k, v in dataset.labels.items()},
    }
    settings_key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    # 2. the cases whose files or settings changed, or whose outputs are incomplete
    summaries: dict[str, Any] = {}
    todo: list[Case] = []
    for case in dataset.cases:
        key = {"files": keys[case.id], "settings": settings_key}
        previous = read_json_or_none(case_file(out, case.id, "record"))
        files_ok = all(case_file(out, case.id, part).exists() for part in ("image", "locations"))
        if previous is not None and previous.get("key") == key and files_ok:
            summaries[case.id] = previous
        else:
            todo.append(case)
    jobs = [
        (c, out, channels, target, norm, dataset.num_classes, {"files": keys[c.id], "settings": settings_key})
        for c in todo
    ]
    for case, summary in zip(todo, pool.map(_process_case, jobs, "preprocess"), strict=True):
        summaries[case.id] = summary

    # 3. forget cases that left the data set, then commit the manifest
    known = {case_file(out, c.id, part).name for c in dataset.cases for part in CASE_PARTS}
    for path in (out / CASES).iterdir():
        if path.name not in known and not path.name.startswith("."):
            path.unlink()
    manifest = {
        "dataset": info.model_dump(mode="json"),
        "normalization": norm.model_dump(),
        "spacing": list(target),
        "settings_key": settings_key,
        "case_ids": [c.id for c in dataset.cases],
        "cases": {c.id: summaries[c.id] for c in dataset.cases},
    }
    manifest_path = out / MANIFEST
    if todo or read_json_or_none(manifest_path) != manifest:
        write_json(manifest_path, manifest)
    pre = Preprocessed(out)
    pre.redone = [c.id for c in todo]
    return pre
