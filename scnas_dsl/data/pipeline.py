"""One case's preprocessing: canonical orientation, crop to the non-zero region, resampling, normalisation.

The pipeline for every case (and for a new image at prediction time):

1. **Orientation**: the voxel axes are permuted and flipped to the closest RAS frame (nibabel's
   ``io_orientation``); array axes after this step are called (D, H, W) = (R, A, S).
2. **Crop** to the bounding box of the non-zero region (any channel non-zero, holes filled), as nnU-Net does.
3. **Resampling** to the target spacing (default the paper's 0.7 mm isotropic; ``None`` = the data set's
   median spacing): images with third-order splines, labels per class with linear interpolation of the
   one-hot mask (threshold 0.5) so that they stay labels and stay smooth, as nnU-Net does. Voxel edges are
   kept aligned (``grid_mode``), so the physical extent is unchanged (``scnas_dsl/data/resample.py``).
4. **Normalisation** per channel: MRI (and anything not declared ``CT``): z-score over the non-zero region,
   zero outside it. CT: clipped to the 0.5 and 99.5 percentiles of the data set's foreground intensities and
   z-scored with the foreground mean and standard deviation.

Labels and images are checked before anything is computed (:func:`load_channels`, :func:`load_label`).
``scnas_dsl/data/restore.py`` undoes steps 1 to 3 for predictions.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from scipy import ndimage

from scnas_dsl.data.cache import CaseMeta, Normalization, Preprocessed
from scnas_dsl.data.dataset import Case, affine_mismatch, intensity_problem, load_nifti, orientation_problem
from scnas_dsl.data.names import strip_channel_suffix, strip_nifti_ending
from scnas_dsl.data.resample import resample_image, resample_label, resample_nearest, separate_axis
from scnas_dsl.errors import DataError

RAS = axcodes2ornt("RAS")


def load_channels(image_paths: Sequence[Path], channels: int) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Image (C, X, Y, Z) float32 in file voxel order, and the first file's image (for geometry)."""
    arrays: list[np.ndarray] = []
    ref: nib.Nifti1Image | None = None
    for path in image_paths:
        data, img = load_nifti(Path(path))
        problem = intensity_problem(data)  # check's rule, so that check and preprocess agree
        if problem is not None:
            raise DataError(f"{path}: {problem} (`scnas data check` lists every such image)")
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
    return image, ref


def label_dtype(num_classes: int) -> type[np.integer]:
    """The cached labels' type, from the declared maximum: uint8 up to 256 classes, then int16, then int32."""
    if num_classes <= 256:
        return np.uint8
    return np.int16 if num_classes <= 32768 else np.int32


def load_label(
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
        undeclared = np.unique(data[(data < 0) | (data >= num_classes)]).tolist()  # as stored: 1e30 stays 1e30
        shown = ", ".join(f"{v:g}" for v in undeclared[:10]) + (" ..." if len(undeclared) > 10 else "")
        raise DataError(
            f"{where}: label values {shown} are not declared in dataset.json (declared: 0 to "
            f"{num_classes - 1}); fix the label file or declare the values in dataset.json; {check}"
        )
    return data.astype(label_dtype(num_classes))


def _to_ras(affine: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The orientation of an image of ``affine`` and ``shape`` (X, Y, Z), the transform that takes its axes to
    RAS, and its affine after that transform."""
    ornt = io_orientation(affine)
    transform = ornt_transform(ornt, RAS)
    return ornt, transform, affine @ inv_ornt_aff(transform, shape)


def _voxel_spacing(affine: np.ndarray) -> list[float]:
    """Voxel size (mm) along each array axis of an image of ``affine``."""
    return [float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(0))]


def canonical_geometry(affine: np.ndarray, shape: Sequence[int]) -> tuple[list[float], list[int]]:
    """Voxel spacing (mm) and shape of an image of ``affine`` and ``shape`` after orientation to RAS."""
    _, transform, canonical = _to_ras(affine, shape)
    out_shape = [0, 0, 0]
    for i, axis in enumerate(int(axis) for axis, _ in transform):
        out_shape[axis] = int(shape[i])
    return _voxel_spacing(canonical), out_shape


def _orient(image: np.ndarray, label: np.ndarray | None, affine: np.ndarray):
    """Reorient (C, X, Y, Z) and (X, Y, Z) to RAS; return them, the canonical affine and the orientation."""
    ornt, transform, canonical_affine = _to_ras(affine, image.shape[1:])
    image_c = np.stack([apply_orientation(ch, transform) for ch in image])
    label_c = apply_orientation(label, transform) if label is not None else None
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
            mean, std = norm.mean[c], norm.std[c]
        else:
            values = channel[mask]
            # in float64: a float32 sum of squares overflows for intensities above ~1e19 (the image became zeros)
            mean = float(np.mean(values, dtype=np.float64)) if values.size else 0.0
            std = float(np.std(values, dtype=np.float64)) if values.size else 1.0
            del values
            np.subtract(channel, np.float32(mean), out=target)
            target /= np.float32(max(std, 1e-8))
            np.copyto(target, 0.0, where=~mask)
        if not np.isfinite(target).all():  # what the cache must never hold
            raise DataError(f"channel {c}: normalisation gave NaN or infinite values (mean {mean:.3g}, std "
                            f"{std:.3g}); the image's intensities are out of range: rescale it")
    return out


def run_pipeline(
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
    spacing = tuple(_voxel_spacing(canonical_affine))
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

    Returns the image float32 (C, D, H, W) and its :class:`CaseMeta` for ``scnas_dsl.data.restore``.
    """
    if not image_paths:
        raise DataError("no image files given")
    image, ref = load_channels(image_paths, len(pre.dataset.modalities))
    case_id = _case_id_of(Path(image_paths[0]), pre.dataset.layout)
    out, _, meta, _ = run_pipeline(case_id, image, None, ref, pre.spacing, pre.normalization)
    return out, meta


def _case_id_of(path: Path, layout: str) -> str:
    """The case name of an image file: without its NIfTI ending and, for nnU-Net data, its channel number."""
    name = strip_nifti_ending(path.name)
    name = path.name if name is None else name
    case = strip_channel_suffix(name) if layout == "nnunet" else None
    return name if case is None else case
