"""Predictions back to the original image: the inverse of resampling, crop and orientation
(``scnas_dsl/data/pipeline.py``), with the original shape, affine and header."""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, ornt_transform
from scipy import ndimage

from scnas_dsl.data.cache import CaseMeta
from scnas_dsl.data.pipeline import RAS
from scnas_dsl.errors import DataError


def _zoom(volume: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resample a 3D volume to ``shape`` keeping voxel edges aligned (same physical extent)."""
    if tuple(volume.shape) == tuple(shape):
        return volume
    factors = [n / o for n, o in zip(shape, volume.shape, strict=True)]
    return ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)


def _back_to_original(volume: np.ndarray, meta: CaseMeta, fill: float) -> np.ndarray:
    """Undo crop and orientation for one 3D volume already on the cropped grid."""
    full = np.full(meta.canonical_shape, fill, dtype=volume.dtype)
    full[tuple(slice(a, b) for a, b in meta.crop_box)] = volume
    back = ornt_transform(RAS, np.asarray(meta.orientation))
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
