"""Preprocessing: canonical orientation, crop to the non-zero region, resampling, normalisation; cached.

The pipeline for every case (and for a new image at prediction time):

1. **Orientation**: the voxel axes are permuted and flipped to the closest RAS frame (nibabel's
   ``io_orientation``); array axes after this step are called (D, H, W) = (R, A, S).
2. **Crop** to the bounding box of the non-zero region (any channel non-zero, holes filled), as nnU-Net does.
3. **Resampling** to the target spacing (default the paper's 0.7 mm isotropic; ``None`` = the data set's
   median spacing): images with third-order splines, labels per class with linear interpolation of the
   one-hot mask (threshold 0.5) so that they stay labels and stay smooth, as nnU-Net does. Voxel edges are
   kept aligned (``grid_mode``), so the physical extent is unchanged.
4. **Normalisation** per channel: MRI (and anything not declared ``CT``): z-score over the non-zero region,
   zero outside it. CT: clipped to the 0.5 and 99.5 percentiles of the data set's foreground intensities and
   z-scored with the foreground mean and standard deviation.

Results are ``.npy`` files (memory-mappable) in a cache folder, never inside the data set folder: by default
``$SCNAS_CACHE/<name>-<hash of the data set's absolute path>/<setting>`` (one folder per spacing request) with
``SCNAS_CACHE`` defaulting to ``~/.cache/scnas``; a folder given as ``out`` is bound to the spacing of its
first run. A case is redone when the size, modification time or path of one of its files changes or when a
setting changes (normalisation statistics, labels, pipeline version); otherwise it is reused. A run holds the
folder's file lock while it writes; every file is written to a temporary name and renamed into place; on load
every case is checked against the manifest. Labels and images are checked before anything is cached.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from filelock import FileLock, Timeout
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from pydantic import BaseModel, ConfigDict
from scipy import ndimage
from tqdm import tqdm

from scnas_dsl.data.dataset import (
    Case,
    Dataset,
    affine_mismatch,
    load_header,
    load_nifti,
    missing_file_message,
    open_dataset,
    orientation_problem,
)
from scnas_dsl.data.resample import (
    foreground_locations,
    present_classes,
    resample_image,
    resample_label,
    resample_nearest,
    separate_axis,
)
from scnas_dsl.errors import DataError

#: Bump when the pipeline changes what it writes: every cached case is then redone.
PIPELINE_VERSION = 2  # 2: thick slices resampled with nearest neighbour out of plane (nnU-Net)
#: The paper's target spacing (mm).
PAPER_SPACING = (0.7, 0.7, 0.7)
#: Foreground voxels sampled per case for the CT statistics, and per class for foreground-forced patches.
FOREGROUND_SAMPLES = 10_000
_MANIFEST = "preprocessed.json"
#: Marks a folder made by scnas; holds the settings request the folder is bound to (see _claim).
_MARKER = ".scnas-cache"
#: Held (filelock) while a cache folder is written.
_LOCK = ".scnas-lock"
_RAS = axcodes2ornt("RAS")


class CaseMeta(BaseModel):
    """Everything needed to bring a prediction on the preprocessed grid back to the original image."""

    model_config = ConfigDict(frozen=True)
    case_id: str
    original_shape: tuple[int, int, int]
    original_affine: list[list[float]]
    header_b64: str
    orientation: list[list[float]]
    canonical_shape: tuple[int, int, int]
    crop_box: list[tuple[int, int]]
    original_spacing: tuple[float, float, float]
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]

    def affine(self) -> np.ndarray:
        """The original image's 4x4 affine."""
        return np.asarray(self.original_affine, dtype=np.float64)

    def header(self) -> nib.Nifti1Header:
        """A copy of the original image's NIfTI header."""
        return nib.Nifti1Header(base64.b64decode(self.header_b64))

    @property
    def cropped_shape(self) -> tuple[int, int, int]:
        """Shape of the crop box (canonical orientation, original spacing)."""
        return tuple(b - a for a, b in self.crop_box)  # type: ignore[return-value]


class Normalization(BaseModel):
    """How intensities are normalised: per-case z-score over the non-zero region (MRI) or CT statistics."""

    model_config = ConfigDict(frozen=True)
    scheme: Literal["zscore_nonzero", "ct"]
    #: CT only, one entry per channel: foreground mean, std, 0.5 and 99.5 percentiles of the training cases.
    mean: list[float] = []
    std: list[float] = []
    lower: list[float] = []
    upper: list[float] = []


class DatasetInfo(BaseModel):
    """What the preprocessed data keeps of its data set."""

    model_config = ConfigDict(frozen=True)
    name: str
    layout: Literal["msd", "nnunet"]
    modalities: list[str]
    labels: dict[int, str]
    is_ct: bool
    source_root: str

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1


class Preprocessed:
    """A preprocessed data set on disk (see :func:`preprocess_dataset`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        manifest_path = self.root / _MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
            self.dataset = DatasetInfo.model_validate(manifest["dataset"])
            self.normalization = Normalization.model_validate(manifest["normalization"])
            self.spacing: tuple[float, float, float] = tuple(manifest["spacing"])  # type: ignore[assignment]
            self.case_ids: list[str] = list(manifest["case_ids"])
            self.settings_key: str = manifest["settings_key"]
            self._summaries: dict[str, dict[str, Any]] = manifest["cases"]
        except (
            OSError,
            ValueError,
            KeyError,
            TypeError,
        ) as err:  # ValueError covers JSON and pydantic errors
            raise DataError(
                f"{manifest_path}: not a preprocessed data set ({type(err).__name__}: {err}); "
                "run `scnas data preprocess` (again) to make it"
            ) from err
        #: Case ids (re)computed by the preprocess_dataset call that returned this object.
        self.redone: list[str] = []

    def _path(self, case_id: str, suffix: str) -> Path:
        if case_id not in self._summaries:
            raise DataError(f"{self.root}: no preprocessed case {case_id!r}")
        return self.root / "cases" / f"{case_id}{suffix}"

    def _mismatch(self, case_id: str, what: str) -> DataError:
        return DataError(
            f"{self.root}: case {case_id} does not match this cache's manifest {_MANIFEST} ({what}). The "
            "cache was changed after the manifest was read (`scnas data preprocess` ran again after the data "
            "set's files or scnas changed) or a file is damaged. Run `scnas data preprocess "
            f"{self.dataset.source_root}` again with the same settings (and --out, if you gave one) "
            "and restart this job"
        )

    def _record(self, case_id: str) -> bytes | None:
        try:
            return self._path(case_id, ".json").read_bytes()
        except OSError:
            return None

    def _verify(self, case_id: str) -> bytes:
        """The case's record, checked against the manifest (settings key, input files, shape)."""
        raw = self._record(case_id)
        if raw is None:
            raise self._mismatch(case_id, f"its record cases/{case_id}.json is missing")
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        expected = self._summaries[case_id]
        key = record.get("key") if isinstance(record, dict) else None
        if not isinstance(record, dict) or not isinstance(key, dict):
            raise self._mismatch(case_id, f"its record cases/{case_id}.json is not readable")
        if key.get("settings") != self.settings_key:
            raise self._mismatch(
                case_id,
                f"written with settings key {str(key.get('settings'))[:12]}, the manifest's is "
                f"{self.settings_key[:12]}",
            )
        if key != expected.get("key"):
            raise self._mismatch(case_id, "made from other versions of the case's files")
        if record.get("shape") != expected.get("shape"):
            raise self._mismatch(case_id, f"shape {record.get('shape')}, the manifest's is {expected.get('shape')}")
        return raw

    def load(self, case_id: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Image float32 (C, D, H, W) and label int (D, H, W) or None; memory-mapped read-only by default.

        The case's record must match the manifest (settings key, input files, shape) and the arrays its shape,
        before and after they are read; otherwise a DataError says what to do.
        """
        mode: Literal["r"] | None = "r" if mmap else None
        raw = self._verify(case_id)
        shape = tuple(self._summaries[case_id]["shape"])
        labelled = bool(self._summaries[case_id].get("class_voxels"))
        try:
            image = np.load(self._path(case_id, ".image.npy"), mmap_mode=mode)
            label_path = self._path(case_id, ".label.npy")
            label = np.load(label_path, mmap_mode=mode) if labelled or label_path.exists() else None
        except (OSError, ValueError, EOFError) as err:
            raise self._mismatch(case_id, f"{type(err).__name__}: {err}") from err
        channels = len(self.dataset.modalities)
        if image.shape != (channels, *shape):
            raise self._mismatch(case_id, f"image of shape {list(image.shape)}, expected {[channels, *shape]}")
        if label is not None and label.shape != shape:
            raise self._mismatch(case_id, f"label of shape {list(label.shape)}, expected {list(shape)}")
        if self._record(case_id) != raw:
            raise self._mismatch(case_id, "rewritten while it was being read")
        return image, label

    def meta(self, case_id: str) -> CaseMeta:
        """The case's geometry record (:class:`CaseMeta`)."""
        return CaseMeta.model_validate(self._summaries[case_id]["meta"])

    def summary(self, case_id: str) -> dict[str, Any]:
        """The case's fingerprint: shape, spacing, class voxel counts, foreground intensity statistics."""
        self._path(case_id, "")
        return dict(self._summaries[case_id])

    def foreground_locations(self, case_id: str) -> dict[int, np.ndarray]:
        """Sampled voxel coordinates (N, 3) int of every foreground class present in the case."""
        self._verify(case_id)
        with np.load(self._path(case_id, ".locations.npz")) as data:
            return {int(k): data[k] for k in data.files}


# ------------------------------------------------------------------------------------ the pipeline


def _load_channels(image_paths: Sequence[Path], channels: int) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Image (C, X, Y, Z) float32 in file voxel order, and the first file's image (for geometry)."""
    arrays: list[np.ndarray] = []
    ref: nib.Nifti1Image | None = None
    for path in image_paths:
        data, img = load_nifti(Path(path))
        unoriented = orientation_problem(img)
        if unoriented is not None:
            raise DataError(f"{path}: {unoriented}")
        if ref is None:
            ref = img
        elif data.shape[:3] != ref.shape[:3]:
            raise DataError(
                f"{path}: shape {data.shape[:3]} differs from {ref.shape[:3]} of {image_paths[0]}"
            )
        elif (mismatch := affine_mismatch(img.affine, ref.affine, Path(image_paths[0]))) is not None:
            raise DataError(f"{path}: {mismatch}; every channel must lie on the same grid")
        if data.ndim == 4:
            arrays.extend(np.moveaxis(data, -1, 0).astype(np.float32))
        elif data.ndim == 3:
            arrays.append(data.astype(np.float32))
        else:
            raise DataError(f"{path}: image has shape {data.shape}; expected 3D or 4D (channels last)")
    if len(arrays) != channels:
        raise DataError(f"{image_paths[0]}: {len(arrays)} channel(s), but the data set declares {channels}")
    assert ref is not None  # image_paths is never empty here: channels >= 1
    image = np.stack(arrays)
    if not np.isfinite(image).all():
        raise DataError(f"{image_paths[0]}: NaN or infinite intensities; run `scnas data check`")
    return image, ref


def _orient(image: np.ndarray, label: np.ndarray | None, affine: np.ndarray):
    """Reorient (C, X, Y, Z) and (X, Y, Z) to RAS; return them, the canonical affine and the orientation."""
    ornt = io_orientation(affine)
    transform = ornt_transform(ornt, _RAS)
    image_c = np.stack([apply_orientation(ch, transform) for ch in image])
    label_c = apply_orientation(label, transform) if label is not None else None
    canonical_affine = affine @ inv_ornt_aff(transform, image.shape[1:])
    return image_c, label_c, canonical_affine, ornt


def _nonzero_box(image: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Bounding box of the non-zero region of (C, D, H, W) and the (hole-filled) mask."""
    mask = ndimage.binary_fill_holes((image != 0).any(0))
    if not mask.any():
        return [(0, n) for n in mask.shape], np.ones(mask.shape, dtype=bool)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return box, mask


def _zoom(volume: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resample a 3D volume to ``shape`` keeping voxel edges aligned (same physical extent)."""
    if tuple(volume.shape) == tuple(shape):
        return volume
    factors = [n / o for n, o in zip(shape, volume.shape, strict=True)]
    return ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)


def _target_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True))


def _normalize(image: np.ndarray, mask: np.ndarray, norm: Normalization, out: np.ndarray | None = None) -> np.ndarray:
    """Normalised channels, into ``out`` (may be ``image`` itself: then in place) or a new array."""
    out = np.empty_like(image, dtype=np.float32) if out is None else out
    for c in range(image.shape[0]):
        channel, target = image[c], out[c]  # in place: no volume-sized temporaries (large CT, issue 11)
        if norm.scheme == "ct":
            np.clip(channel, norm.lower[c], norm.upper[c], out=target)
            target -= np.float32(norm.mean[c])
            target /= np.float32(max(norm.std[c], 1e-8))
        else:
            values = channel[mask]
            mean = float(values.mean()) if values.size else 0.0
            std = float(values.std()) if values.size else 1.0
            del values
            np.subtract(channel, np.float32(mean), out=target)
            target /= np.float32(max(std, 1e-8))
            np.copyto(target, 0.0, where=~mask)
    return out


def _run_pipeline(
    case_id: str,
    image: np.ndarray,
    label: np.ndarray | None,
    ref: nib.Nifti1Image,
    target: Sequence[float] | None,
    norm: Normalization,
) -> tuple[np.ndarray, np.ndarray | None, CaseMeta, list[np.ndarray]]:
    """Orientation, crop, resampling, normalisation. Returns image, label, meta and, with a label, the raw
    resampled intensities of its foreground per channel (of every voxel when it has none)."""
    affine = np.asarray(ref.affine, dtype=np.float64)
    image_c, label_c, canonical_affine, ornt = _orient(image, label, affine)
    spacing = tuple(float(s) for s in np.sqrt((canonical_affine[:3, :3] ** 2).sum(0)))
    canonical_shape = tuple(int(n) for n in image_c.shape[1:])
    box, mask = _nonzero_box(image_c)
    crop = tuple(slice(a, b) for a, b in box)
    image_c = image_c[(slice(None), *crop)]
    mask = mask[crop]
    label_c = label_c[crop] if label_c is not None else None
    goal = tuple(target) if target is not None else spacing
    shape = _target_shape(image_c.shape[1:], spacing, goal)
    # scnas_dsl/data/resample.py: nnU-Net's orders, thick slices nearest out of plane, slab by slab
    axis = separate_axis(spacing, goal)
    raw = resample_image(image_c, shape, axis=axis)
    mask = resample_nearest(mask, shape)
    label_r = resample_label(label_c, shape, axis=axis) if label_c is not None else None
    actual = tuple(float(s * o / n) for s, o, n in zip(spacing, image_c.shape[1:], shape, strict=True))
    header = ref.header.copy()
    meta = CaseMeta(
        case_id=case_id,
        original_shape=tuple(int(n) for n in image.shape[1:]),  # type: ignore[arg-type]
        original_affine=affine.tolist(),
        header_b64=base64.b64encode(header.binaryblock).decode("ascii"),
        orientation=ornt.tolist(),
        canonical_shape=canonical_shape,  # type: ignore[arg-type]
        crop_box=box,
        original_spacing=spacing,  # type: ignore[arg-type]
        spacing=actual,  # type: ignore[arg-type]
        shape=tuple(int(n) for n in shape),  # type: ignore[arg-type]
    )
    # the summary's raw intensities are taken before the image is normalised in place: one float32 volume
    # less at the peak (large CT, issue 11; docs/benchmarks.md)
    values: list[np.ndarray] = []
    if label_r is not None:
        fg = label_r > 0
        values = [channel[fg] if fg.any() else channel.ravel().copy() for channel in raw]
        del fg
    return _normalize(raw, mask, norm, out=raw), label_r, meta, values


def preprocess_image(image_paths: list[Path], pre: Preprocessed) -> tuple[np.ndarray, CaseMeta]:
    """Preprocess a new image (no label) exactly as the training cases of ``pre`` were.

    Returns the image float32 (C, D, H, W) and its :class:`CaseMeta` for :func:`restore_prediction`.
    """
    if not image_paths:
        raise DataError("no image files given")
    image, ref = _load_channels(image_paths, len(pre.dataset.modalities))
    case_id = _case_id_of(Path(image_paths[0]), pre.dataset.layout)
    out, _, meta, _ = _run_pipeline(case_id, image, None, ref, pre.spacing, pre.normalization)
    return out, meta


def _case_id_of(path: Path, layout: str) -> str:
    name = path.name
    for ending in (".nii.gz", ".nii"):
        if name.endswith(ending):
            name = name[: -len(ending)]
    if layout == "nnunet" and len(name) > 5 and name[-5] == "_" and name[-4:].isdigit():
        name = name[:-5]
    return name


def _back_to_original(volume: np.ndarray, meta: CaseMeta, fill: float) -> np.ndarray:
    """Undo crop and orientation for one 3D volume already on the cropped grid."""
    full = np.full(meta.canonical_shape, fill, dtype=volume.dtype)
    full[tuple(slice(a, b) for a, b in meta.crop_box)] = volume
    back = ornt_transform(_RAS, np.asarray(meta.orientation))
    return apply_orientation(full, back)


def _header_for(meta: CaseMeta, shape: tuple[int, ...], dtype: type) -> nib.Nifti1Header:
    header = meta.header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_slope_inter(1.0, 0.0)
    return header


def restore_prediction(label_map: np.ndarray, meta: CaseMeta) -> nib.Nifti1Image:
    """Bring a label map (D, H, W) int on the preprocessed grid back to the original image.

    Inverse of resampling (nearest neighbour: the label map's own voxels, blocky where the grids differ; the
    predictions of ``scnas predict`` come from :func:`restore_segmentation` instead), crop (zero outside the box) and orientation; the result has the
    original shape, affine and header (data type uint8, or int16 beyond 255 classes).
    """
    label_map = np.asarray(label_map)
    if tuple(label_map.shape) != tuple(meta.shape):
        raise DataError(f"case {meta.case_id}: prediction has shape {label_map.shape}, expected {meta.shape}")
    dtype = np.uint8 if label_map.max(initial=0) <= 255 and label_map.min(initial=0) >= 0 else np.int16
    cropped = _zoom(label_map.astype(dtype), meta.cropped_shape, order=0)
    original = _back_to_original(cropped, meta, 0).astype(dtype)
    return nib.Nifti1Image(original, meta.affine(), _header_for(meta, original.shape, dtype))


#: Slices (along the first array axis of the crop box) resampled at a time by :func:`restore_segmentation`.
RESTORE_SLAB = 16


def _zoom_slab(volume: np.ndarray, shape: Sequence[int], start: int, stop: int) -> np.ndarray:
    """Slices ``start:stop`` (first axis) of ``_zoom(volume, shape, order=1)``, computed on their own: the same
    coordinates as ``zoom(grid_mode=True)`` (output voxel centre ``o`` reads input ``(o + 0.5) * in / out - 0.5``,
    clamped at the edges), equal to it up to float32 rounding."""
    scale = np.array([o / n for n, o in zip(shape, volume.shape, strict=True)])
    offset = 0.5 * scale - 0.5
    offset[0] += start * scale[0]
    return ndimage.affine_transform(volume, scale, offset=offset, output_shape=(stop - start, *shape[1:]),
                                    order=1, mode="nearest")


def restore_segmentation(probs: np.ndarray, meta: CaseMeta, slab: int = RESTORE_SLAB) -> nib.Nifti1Image:
    """The label map on the original image from class probabilities (K, D, H, W) on the preprocessed grid,
    as nnU-Net does it: the probabilities are resampled linearly to the crop box at the original spacing and
    the argmax is taken there (not on the coarser or finer preprocessed grid), then crop and orientation are
    undone as in :func:`restore_prediction` (background outside the box; original shape, affine and header;
    uint8, or int16 beyond 256 classes).

    Memory: the crop box is done ``slab`` slices at a time and class by class with a running maximum, so
    besides ``probs`` and the output (1 byte per voxel of the crop box and of the original image, twice while
    reorienting) it holds three slab-sized buffers (about 9 bytes per slab voxel), never one float32 volume
    per class on the original grid.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 4 or tuple(probs.shape[1:]) != tuple(meta.shape) or probs.shape[0] < 1:
        raise DataError(
            f"case {meta.case_id}: probabilities have shape {probs.shape}, expected (K, *{meta.shape})"
        )
    shape = meta.cropped_shape
    dtype = np.uint8 if probs.shape[0] <= 256 else np.int16
    labels = np.zeros(shape, dtype=dtype)
    for start in range(0, shape[0], max(1, slab)):
        stop = min(start + max(1, slab), shape[0])
        best = _zoom_slab(probs[0], shape, start, stop)
        part = labels[start:stop]
        for k in range(1, probs.shape[0]):
            p = _zoom_slab(probs[k], shape, start, stop)
            better = p > best  # ties keep the lower class, as argmax
            part[better] = k
            np.maximum(best, p, out=best)
    original = _back_to_original(labels, meta, 0).astype(dtype)
    return nib.Nifti1Image(original, meta.affine(), _header_for(meta, original.shape, dtype))


def restore_probabilities(probs: np.ndarray, meta: CaseMeta) -> nib.Nifti1Image:
    """Bring class probabilities (K, D, H, W) back to the original image as a 4D float32 NIfTI (X, Y, Z, K).

    Linear resampling; outside the crop box the background (class 0) has probability 1.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 4 or tuple(probs.shape[1:]) != tuple(meta.shape):
        raise DataError(
            f"case {meta.case_id}: probabilities have shape {probs.shape}, expected (K, *{meta.shape})"
        )
    channels = [
        _back_to_original(
            _zoom(p, meta.cropped_shape, order=1).astype(np.float32), meta, 1.0 if k == 0 else 0.0
        )
        for k, p in enumerate(probs)
    ]
    data = np.stack(channels, axis=-1)
    return nib.Nifti1Image(data, meta.affine(), _header_for(meta, data.shape, np.float32))


# ------------------------------------------------------------------------------- the data set run


def cache_root(dataset: Dataset) -> Path:
    """``$SCNAS_CACHE/<name>-<8 hex digits of the data set's absolute path>`` (``~/.cache/scnas`` by default):
    the data set's folder in the cache, holding one folder per settings (:func:`default_cache_dir`)."""
    base = Path(os.environ.get("SCNAS_CACHE") or Path.home() / ".cache" / "scnas").expanduser()
    digest = hashlib.sha1(str(dataset.root.absolute()).encode()).hexdigest()[:8]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in dataset.name)
    return base / f"{safe}-{digest}"


def settings_name(spacing: Sequence[float] | None) -> str:
    """The cache folder's name for a spacing request: ``spacing-0.7x0.7x0.7`` or ``median-spacing``."""
    if spacing is None:
        return "median-spacing"
    return "spacing-" + "x".join(repr(float(s)) for s in spacing)


def default_cache_dir(dataset: Dataset, spacing: Sequence[float] | None = PAPER_SPACING) -> Path:
    """``cache_root(dataset) / settings_name(spacing)``: different settings never share a folder."""
    return cache_root(dataset) / settings_name(spacing)


def find_preprocessed(dataset: Dataset) -> list[Path]:
    """The folders of the default cache that hold preprocessed data of ``dataset`` (one per settings)."""
    root = cache_root(dataset)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / _MANIFEST).is_file())


def _input_key(dataset: Dataset, case: Case) -> list[list[Any]]:
    """Path (relative to the data set), size and modification time of every file of a case."""
    key = []
    for path in [*case.images, *([case.label] if case.label else [])]:
        missing = missing_file_message(path)
        try:
            st = path.stat()
        except OSError as err:
            missing = missing or f"file is unreadable ({err})"
        if missing is not None:
            raise DataError(f"{path}: case {case.id}: {missing}; run `scnas data check` to list every problem")
        key.append([str(path.relative_to(dataset.root)), st.st_size, st.st_mtime_ns])
    return key


def _atomic(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as handle:
            write(handle)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read_own_json(path: Path) -> Any:
    """One of our cache records, or None when it is missing or unreadable (then it is simply made again)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _npy(array: np.ndarray) -> Callable[[Any], None]:
    """A writer of ``array`` in .npy form, for :func:`_atomic`."""
    return lambda handle: np.save(handle, array)


def _write_json(path: Path, value: Any) -> None:
    _atomic(path, lambda f: f.write(json.dumps(value, indent=1)), mode="w")


def label_dtype(num_classes: int) -> type[np.integer]:
    """The cached labels' type, from the declared maximum: uint8 up to 256 classes, then int16, then int32."""
    if num_classes <= 256:
        return np.uint8
    return np.int16 if num_classes <= 32768 else np.int32


def _load_label(
    case: Case, shape: Sequence[int], ref: nib.Nifti1Image, image_path: Path, num_classes: int
) -> np.ndarray:
    """The case's label (D, H, W) as :func:`label_dtype`, refused unless it fits its image and dataset.json.

    A 4D file with one volume is accepted. Refused, naming the file and the case: another shape, an affine
    that differs from the image's (beyond the tolerance of ``scnas data check``), no orientation, values that
    are not whole numbers, and values that ``dataset.json`` does not declare (they would turn into other
    classes in the cache, or crash training hours later).
    """
    assert case.label is not None
    data, img = load_nifti(case.label)
    where = f"{case.label}: case {case.id}"
    check = "`scnas data check` lists every problem of every case"
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(
            f"{where}: label has shape {data.shape}; expected a 3D volume (a 4D file of one volume is "
            f"accepted); {check}"
        )
    if tuple(data.shape) != tuple(shape):
        raise DataError(
            f"{where}: label shape {data.shape} differs from the image's {tuple(shape)} ({image_path}); {check}"
        )
    unoriented = orientation_problem(img)
    if unoriented is not None:
        raise DataError(f"{where}: {unoriented}")
    mismatch = affine_mismatch(np.asarray(img.affine), np.asarray(ref.affine), image_path)
    if mismatch is not None:
        raise DataError(
            f"{where}: {mismatch}; the label would be placed off its image. If only the header is wrong, save "
            "the label with the image's affine; otherwise resample it onto the image"
        )
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise DataError(f"{where}: label data type {data.dtype} is not a real number type; {check}")
    if np.issubdtype(data.dtype, np.floating):
        finite = np.isfinite(data)
        if not finite.all():
            raise DataError(f"{where}: {int((~finite).sum())} NaN or infinite label values; {check}")
        if (data != np.round(data)).any():
            raise DataError(f"{where}: non-integer label values; labels must be whole numbers; {check}")
    if data.min(initial=0) < 0 or data.max(initial=0) >= num_classes:
        undeclared = np.unique(data[(data < 0) | (data >= num_classes)]).astype(np.int64).tolist()
        shown = ", ".join(map(str, undeclared[:10])) + (" ..." if len(undeclared) > 10 else "")
        raise DataError(
            f"{where}: label values {shown} are not declared in dataset.json (declared: 0 to "
            f"{num_classes - 1}); fix the label file or declare the values in dataset.json; {check}"
        )
    return data.astype(label_dtype(num_classes))


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
        zooms, shape = canonical_geometry(np.asarray(img.affine), img.shape[:3])
        return {"spacing": zooms, "shape": shape, "samples": None}
    image, ref = _load_channels(case.images, channels)
    if case.label is None:
        raise DataError(f"case {case.id}: no label; CT statistics need labelled training cases")
    fg = _load_label(case, image.shape[1:], ref, Path(case.images[0]), num_classes) > 0
    values = image[:, fg]
    rng = np.random.default_rng(int(hashlib.sha1(case.id.encode()).hexdigest()[:8], 16))
    if values.shape[1] > FOREGROUND_SAMPLES:
        values = values[:, rng.choice(values.shape[1], FOREGROUND_SAMPLES, replace=False)]
    zooms, shape = canonical_geometry(np.asarray(ref.affine), image.shape[1:])
    return {"spacing": zooms, "shape": shape, "samples": values.astype(np.float32).tolist()}


def canonical_geometry(affine: np.ndarray, shape: Sequence[int]) -> tuple[list[float], list[int]]:
    """Voxel spacing (mm) and shape of an image of ``affine`` and ``shape`` after orientation to RAS."""
    transform = ornt_transform(io_orientation(affine), _RAS)
    canonical = affine @ inv_ornt_aff(transform, shape)
    spacing = np.sqrt((canonical[:3, :3] ** 2).sum(0)).tolist()
    order = [int(axis) for axis, _ in transform]
    out_shape = [0, 0, 0]
    for i, axis in enumerate(order):
        out_shape[axis] = int(shape[i])
    return [float(s) for s in spacing], out_shape


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
    image, ref = _load_channels(case.images, channels)
    label = None
    if case.label is not None:
        label = _load_label(case, image.shape[1:], ref, Path(case.images[0]), num_classes)
    pre_image, pre_label, meta, raw_values = _run_pipeline(case.id, image, label, ref, target, norm)
    del image, label
    folder = out / "cases"
    _atomic(folder / f"{case.id}.image.npy", _npy(pre_image))
    locations: dict[str, np.ndarray] = {}
    class_voxels: dict[str, int] = {}
    intensity: list[dict[str, float]] = []
    if pre_label is not None:
        _atomic(folder / f"{case.id}.label.npy", _npy(pre_label))
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
    _atomic(folder / f"{case.id}.locations.npz", lambda f: np.savez(f, **locations))  # type: ignore[arg-type]
    summary = {
        "key": key,
        "meta": meta.model_dump(mode="json"),
        "shape": list(meta.shape),
        "spacing": list(meta.spacing),
        "original_spacing": list(meta.original_spacing),
        "class_voxels": class_voxels,
        "foreground_intensity": intensity,
    }
    _write_json(folder / f"{case.id}.json", summary)
    return summary


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


def _prepare_out(dataset: Dataset, out: Path | None, spacing: Sequence[float] | None) -> Path:
    out = Path(out).expanduser().absolute() if out is not None else default_cache_dir(dataset, spacing)
    root = dataset.root.absolute()
    if out == root or root in out.parents:
        raise DataError(
            f"{out}: inside the data set folder {root}; scnas never writes there. Choose another --out"
        )
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another --out")
    if out.exists() and any(p.name != _LOCK for p in out.iterdir()) and not (out / _MARKER).exists():
        raise DataError(f"{out}: exists, is not empty and was not made by scnas; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _describe(request: Any) -> str:
    spacing = request.get("spacing") if isinstance(request, dict) else None
    if spacing == "median":
        return "at the data set's median spacing (--median-spacing)"
    if isinstance(spacing, list):
        return f"at spacing {' x '.join(f'{s:g}' for s in spacing)} mm"
    return "with settings this scnas does not know"


def _claim(out: Path, spacing: Sequence[float] | None) -> None:
    """Bind ``out`` (under its lock) to one spacing request; refuse a folder bound to another.

    Everything else that can change (the data set's files, its labels, the CT statistics, the pipeline
    version) redoes the affected cases in place; a job reading them then refuses them on load.
    """
    request = {"spacing": list(spacing) if spacing is not None else "median"}
    previous = _read_own_json(out / _MARKER)
    if isinstance(previous, dict) and previous and previous != request:
        raise DataError(
            f"{out}: holds data preprocessed {_describe(previous)}, not {_describe(request)}; a folder keeps "
            "one setting so that no job reading it gets cases of another. Leave out --out (the default cache "
            "has a folder per setting) or choose another --out; delete this folder only if no job uses it"
        )
    if previous != request:  # new, or made by an older scnas (empty marker)
        _write_json(out / _MARKER, request)
    (out / "cases").mkdir(exist_ok=True)
    (out / "fingerprint").mkdir(exist_ok=True)


def _locked(out: Path) -> FileLock:
    """The folder's lock, acquired: waits (saying so on stderr) while another run writes the folder."""
    lock = FileLock(out / _LOCK)
    try:
        lock.acquire(timeout=0.5)
    except Timeout:
        print(f"{out}: another `scnas data preprocess` is writing this folder; waiting for it", file=sys.stderr)
        lock.acquire()
    return lock


class _Workers:
    """Runs jobs serially, or in one process pool (started on first use, shared by both passes)."""

    def __init__(self, workers: int, progress: bool) -> None:
        self.workers = workers
        self.progress = progress
        self._pool: ProcessPoolExecutor | None = None

    def map(
        self, fn: Callable[..., Any], jobs: list[tuple[Any, ...]], desc: str, parallel: bool = True
    ) -> list[Any]:
        """``[fn(*job) for job in jobs]`` with a progress bar on stderr."""
        results: list[Any] = []
        bar = tqdm(
            total=len(jobs), desc=desc, file=sys.stderr, unit="case",
            disable=not self.progress or not jobs or not sys.stderr.isatty(),  # no carriage returns in logs
        )
        try:
            if parallel and self.workers > 1 and len(jobs) > 1:
                if self._pool is None:
                    # 'spawn' so that worker processes never inherit threads (torch, tqdm) from the parent.
                    self._pool = ProcessPoolExecutor(
                        max_workers=self.workers, mp_context=get_context("spawn")
                    )
                for result in self._pool.map(fn, *zip(*jobs, strict=True)):
                    results.append(result)
                    bar.update()
            else:
                for job in jobs:
                    results.append(fn(*job))
                    bar.update()
        finally:
            bar.close()
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def preprocess_dataset(
    root: Path | str,
    out: Path | None = None,
    spacing: Sequence[float] | None = PAPER_SPACING,
    workers: int = 1,
    progress: bool = True,
) -> Preprocessed:
    """Preprocess every training case of the data set at ``root`` into ``out`` (see the module docstring).

    ``spacing`` is the target voxel size in mm (D, H, W after orientation to RAS); ``None`` takes the data
    set's median spacing (no resampling for a data set of one spacing). Cases whose files and settings are
    unchanged since the last run are kept as they are. Returns the :class:`Preprocessed` data.
    With ``workers > 1`` cases run in spawned processes: a script calling this needs the usual
    ``if __name__ == "__main__":`` guard.
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
    out = _prepare_out(dataset, out, spacing)
    lock = _locked(out)
    pool = _Workers(workers, progress)
    try:
        _claim(out, spacing)
        return _preprocess(dataset, out, spacing, pool)
    finally:
        pool.close()
        lock.release()


def _preprocess(
    dataset: Dataset, out: Path, spacing: tuple[float, ...] | None, pool: _Workers
) -> Preprocessed:
    channels = len(dataset.modalities)
    keys = {case.id: _input_key(dataset, case) for case in dataset.cases}

    # 1. fingerprint (spacing, shape, CT foreground samples) of the cases whose files changed
    fp_path = out / "fingerprint" / "cases.json"
    fingerprints: dict[str, Any] = _read_own_json(fp_path) or {}
    stale = [
        c
        for c in dataset.cases
        if fingerprints.get(c.id, {}).get("key") != keys[c.id]
        or fingerprints[c.id].get("is_ct") != dataset.is_ct
    ]
    for case, result in zip(
        stale,
        # MRI fingerprints read headers only: not worth a process; CT ones read the data.
        pool.map(
            _fingerprint_case,
            [(c, channels, dataset.is_ct, dataset.num_classes) for c in stale],
            "fingerprint",
            dataset.is_ct,
        ),
        strict=True,
    ):
        samples = result.pop("samples")
        if samples is not None:
            _atomic(out / "fingerprint" / f"{case.id}.samples.npy", _npy(np.asarray(samples, np.float32)))
        fingerprints[case.id] = {**result, "key": keys[case.id], "is_ct": dataset.is_ct}
    fingerprints = {c.id: fingerprints[c.id] for c in dataset.cases}
    if stale:
        _write_json(fp_path, fingerprints)

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
            [np.load(out / "fingerprint" / f"{c.id}.samples.npy") for c in dataset.cases]
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
        record = out / "cases" / f"{case.id}.json"
        previous = _read_own_json(record)
        files_ok = all((out / "cases" / f"{case.id}{s}").exists() for s in (".image.npy", ".locations.npz"))
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
    suffixes = (".image.npy", ".label.npy", ".locations.npz", ".json")
    known = {f"{c.id}{s}" for c in dataset.cases for s in suffixes}
    for path in (out / "cases").iterdir():
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
    manifest_path = out / _MANIFEST
    if todo or _read_own_json(manifest_path) != manifest:
        _write_json(manifest_path, manifest)
    pre = Preprocessed(out)
    pre.redone = [c.id for c in todo]
    return pre
