"""Generated data sets in the Medical Segmentation Decathlon's shape, for tests and the demo.

Three tasks mirror the paper's: ``brain`` (four MRI channels like Task01_BrainTumour, labels edema /
non-enhancing tumour / enhancing tumour nested as in BraTS), ``heart`` (one MRI channel, one label like
Task02_Heart) and ``lung`` (one CT channel in Hounsfield-like units, one label like Task06_Lung).

Every case is a body region (zero outside it, so cropping to the non-zero region matters) holding
randomly placed, randomly deformed blobs whose classes differ in mean intensity and in texture per channel,
with Gaussian noise and a smooth multiplicative bias field. Voxels are anisotropic and the affines are
flipped, slightly rotated and shifted, so that orientation and resampling are exercised. The labels can be
learned from the images: a small 3D convolutional network reaches a clearly non-trivial Dice in a minute or
two on a CPU (see docs/data.md for the figure).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from scipy import ndimage

from scnas_dsl.errors import DataError
from scnas_dsl.files import write_text

Task = Literal["brain", "heart", "lung"]
Layout = Literal["msd", "nnunet"]

#: Voxel size (mm) of the generated images per task, in array axis order (the last axis is the slice axis).
SYNTH_SPACING: dict[str, tuple[float, float, float]] = {
    "brain": (1.0, 1.0, 1.5),
    "heart": (1.25, 1.25, 2.0),
    "lung": (0.8, 0.8, 2.5),
}

_MODALITIES = {
    "brain": ["FLAIR", "T1w", "t1gd", "T2w"],
    "heart": ["MRI"],
    "lung": ["CT"],
}
_LABELS = {
    "brain": {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"},
    "heart": {0: "background", 1: "left atrium"},
    "lung": {0: "background", 1: "cancer"},
}
_NAMES = {"brain": "SynthBrainTumour", "heart": "SynthHeart", "lung": "SynthLung"}


def synthesize(
    out: Path,
    task: Task = "brain",
    cases: int = 10,
    shape: Sequence[int] = (48, 48, 48),
    seed: int = 0,
    layout: Layout = "msd",
    test_cases: int = 0,
) -> Path:
    """Write a valid generated data set into the new folder ``out`` and return ``out``.

    ``cases`` labelled training cases go to ``imagesTr``/``labelsTr`` and ``test_cases`` unlabelled ones to
    ``imagesTs``; ``shape`` is the voxel grid (D, H, W) of every case. ``layout="msd"`` writes the original
    Decathlon layout (multi-channel images as one 4D NIfTI), ``"nnunet"`` nnU-Net v2's (one file per channel,
    ``case_0000.nii.gz``). The same seed gives the same files. Refuses to write into a non-empty folder.
    """
    if task not in _MODALITIES:
        raise DataError(f"unknown synthetic task {task!r}: choose one of brain, heart, lung")
    if layout not in ("msd", "nnunet"):
        raise DataError(f"unknown layout {layout!r}: choose msd or nnunet")
    if cases < 1 or test_cases < 0:
        raise DataError(f"need at least one training case (got cases={cases}, test_cases={test_cases})")
    shape_t = tuple(int(s) for s in shape)
    if len(shape_t) != 3 or min(shape_t) < 16:
        raise DataError(f"shape must be three sizes of at least 16 voxels (got {list(shape)})")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not an empty folder; choose a new output folder")
    for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if test_cases else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)

    modalities = _MODALITIES[task]
    prefix = task
    training: list[dict[str, str]] = []
    test: list[str] = []
    root_seq = np.random.SeedSequence([seed, list(_MODALITIES).index(task)])
    children = root_seq.spawn(cases + test_cases)
    for index in range(cases + test_cases):
        rng = np.random.default_rng(children[index])
        image, label = _make_case(task, shape_t, rng)
        affine = _make_affine(SYNTH_SPACING[task], shape_t, rng)
        case_id = f"{prefix}_{index:03d}"
        images_dir = "imagesTr" if index < cases else "imagesTs"
        image_files = _write_image(out / images_dir, case_id, image, affine, layout, task == "lung")
        if index < cases:
            label_img = nib.Nifti1Image(label.astype(np.uint8), affine)
            label_img.header.set_xyzt_units("mm", "sec")
            nib.save(label_img, out / "labelsTr" / f"{case_id}.nii.gz")
            training.append(
                {"image": f"./imagesTr/{image_files[0]}", "label": f"./labelsTr/{case_id}.nii.gz"}
            )
        else:
            test.append(f"./imagesTs/{image_files[0]}")

    meta: dict[str, object]
    if layout == "msd":
        meta = {
            "name": _NAMES[task],
            "description": f"scnas generated data set (task {task}, seed {seed})",
            "tensorImageSize": "4D" if len(modalities) > 1 else "3D",
            "modality": {str(i): m for i, m in enumerate(modalities)},
            "labels": {str(k): v for k, v in _LABELS[task].items()},
            "numTraining": cases,
            "numTest": test_cases,
            "training": training,
            "test": test,
        }
    else:
        meta = {
            "name": _NAMES[task],
            "description": f"scnas generated data set (task {task}, seed {seed})",
            "channel_names": {str(i): m for i, m in enumerate(modalities)},
            "labels": {v: k for k, v in _LABELS[task].items()},
            "numTraining": cases,
            "file_ending": ".nii.gz",
        }
    write_text(out / "dataset.json", json.dumps(meta, indent=2) + "\n")
    return out


def _write_image(
    folder: Path, case_id: str, image: np.ndarray, affine: np.ndarray, layout: str, is_ct: bool
) -> list[str]:
    """Write ``image`` (C, D, H, W) in the layout's way; return the written file names."""
    dtype = np.int16 if is_ct else np.float32
    if layout == "msd":
        data = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
        img = nib.Nifti1Image(data.astype(dtype), affine)
        img.header.set_xyzt_units("mm", "sec")
        name = f"{case_id}.nii.gz"
        nib.save(img, folder / name)
        return [name]
    names = []
    for c in range(image.shape[0]):
        img = nib.Nifti1Image(image[c].astype(dtype), affine)
        img.header.set_xyzt_units("mm", "sec")
        name = f"{case_id}_{c:04d}.nii.gz"
        nib.save(img, folder / name)
        names.append(name)
    return names


def _make_affine(spacing: Sequence[float], shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A scanner-like affine: x and y flipped (as from DICOM's LPS), a small rotation, a random origin."""
    angle = np.deg2rad(rng.uniform(-8.0, 8.0))
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    extent = np.asarray(shape) * np.asarray(spacing)
    affine[:3, 3] = rng.uniform(-20.0, 20.0, size=3) + np.array(
        [extent[0] / 2, extent[1] / 2, -extent[2] / 2]
    )
    return affine


def _smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered noise: a texture (small sigma) or a bias field (large)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-6)


def _blob(
    shape: tuple[int, ...],
    center: np.ndarray,
    radii: np.ndarray,
    rng: np.random.Generator,
    wobble: float = 0.15,
) -> np.ndarray:
    """Normalised distance to a randomly rotated ellipsoid whose surface is deformed by smooth noise.

    Values below 1 are inside. Nested thresholds of the same field give nested regions.
    """
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), axis=-1)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    local = (grid - center) @ q
    dist = np.sqrt(((local / radii) ** 2).sum(-1))
    return dist * (1.0 + wobble * _smooth_noise(shape, max(shape) / 8, rng))


def _body(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """The body region: a large ellipsoid leaving zero background near the borders."""
    center = np.asarray(shape, dtype=np.float32) / 2 + rng.uniform(-1.5, 1.5, size=3)
    radii = np.asarray(shape, dtype=np.float32) * rng.uniform(0.40, 0.46, size=3)
    return _blob(shape, center, radii, rng, wobble=0.03) < 1.0


def _inside_point(shape: tuple[int, ...], margin: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random centre at least ``margin`` voxels away from every border."""
    lo = np.maximum(margin, 0)
    hi = np.asarray(shape) - margin
    return np.array([rng.uniform(a, max(a + 1e-3, b)) for a, b in zip(lo, hi, strict=True)], dtype=np.float32)


def _make_case(task: str, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One case: image (C, D, H, W) float32 and label (D, H, W) uint8."""
    body = _body(shape, rng)
    size = np.asarray(shape, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    if task == "brain":
        # Mean intensity per class (rows: tissue, CSF-like distractor, edema, non-enhancing, enhancing) and
        # channel (FLAIR, T1w, T1gd, T2w): each tumour class stands out in at least one channel.
        means = np.array(
            [
                [1.0, 1.0, 1.0, 1.0],
                [0.4, 0.5, 0.5, 2.0],
                [1.9, 0.8, 0.9, 1.7],
                [1.2, 0.5, 0.6, 2.3],
                [1.4, 0.9, 2.4, 1.2],
            ],
            dtype=np.float32,
        )
        textures = [(1.5, 0.04), (1.0, 0.03), (2.0, 0.10), (1.0, 0.12), (0.8, 0.08)]
        region = np.zeros(shape, dtype=np.int64)
        radii_d = size * rng.uniform(0.08, 0.11, size=3)
        distractor = _blob(shape, _inside_point(shape, size * 0.3, rng), radii_d, rng) < 1.0
        region[distractor & body] = 1
        radii = size * rng.uniform(0.19, 0.25, size=3)
        field = _blob(shape, _inside_point(shape, radii * 1.3 + size * 0.06, rng), radii, rng)
        tumour = (field < 1.0) & body
        core = (field < 0.7) & body
        necrotic = (field < 0.45) & body
        region[tumour] = 2
        region[core] = 4
        region[necrotic] = 3
        label[tumour] = 1
        label[core] = 3
        label[necrotic] = 2
        scale = 100.0
    elif task == "heart":
        means = np.array([[1.0], [1.35], [2.0]], dtype=np.float32)
        textures = [(1.5, 0.05), (1.0, 0.04), (2.5, 0.06)]
        region = np.zeros(shape, dtype=np.int64)
        for _ in range(2):
            radii_d = size * rng.uniform(0.08, 0.12, size=3)
            region[(_blob(shape, _inside_point(shape, size * 0.25, rng), radii_d, rng) < 1.0) & body] = 1
        radii = size * rng.uniform(0.16, 0.22, size=3)
        atrium = (_blob(shape, _inside_point(shape, radii * 1.2 + size * 0.08, rng), radii, rng) < 1.0) & body
        region[atrium] = 2
        label[atrium] = 1
        scale = 300.0
    else:
        # Hounsfield-like: soft tissue, two lungs (air-filled), a tumour inside one lung.
        # The tumour is denser than the soft tissue (contrast uptake) and mottled, so that it differs from
        # the chest wall it may touch by more than its surroundings.
        means = np.array([[30.0], [-850.0], [110.0]], dtype=np.float32)
        textures = [(1.5, 10.0), (1.0, 40.0), (0.8, 30.0)]
        region = np.zeros(shape, dtype=np.int64)
        lungs = []
        for side in (0.3, 0.7):
            centre = np.array([size[0] * side, size[1] * 0.5, size[2] * 0.5]) + rng.uniform(-1.0, 1.0, 3)
            radii_l = size * np.array([0.16, 0.3, 0.36]) * rng.uniform(0.95, 1.05, 3)
            lung = (_blob(shape, centre, radii_l, rng, wobble=0.05) < 1.0) & body
            region[lung] = 1
            lungs.append((centre, radii_l))
        centre_l, radii_l = lungs[int(rng.integers(2))]
        radii = size * rng.uniform(0.11, 0.15, size=3)
        centre = centre_l + rng.uniform(-0.35, 0.35, 3) * np.maximum(radii_l - radii, 0.0)
        tumour = (_blob(shape, centre.astype(np.float32), radii, rng) < 1.0) & (region == 1)
        region[tumour] = 2
        label[tumour] = 1
        scale = 1.0

    channels = means.shape[1]
    image = np.zeros((channels, *shape), dtype=np.float32)
    for c in range(channels):
        channel = np.zeros(shape, dtype=np.float32)
        for k, (sigma, amplitude) in enumerate(textures):
            mask = region == k
            if not mask.any():
                continue
            texture = _smooth_noise(shape, sigma, rng)[mask]
            if task == "lung":  # additive texture in Hounsfield units
                channel[mask] = means[k, c] + amplitude * texture
            else:  # relative texture on an arbitrary MRI scale
                channel[mask] = means[k, c] * (1.0 + amplitude * texture)
        if task == "lung":
            noise = rng.normal(0.0, 20.0, size=shape).astype(np.float32)
            channel = channel + noise
            # Air around the body inside the scanner's round field of view; zero padding outside it.
            fov = _field_of_view(shape)
            channel = np.where(body, channel, np.where(fov, -1000.0 + noise, 0.0)).astype(np.float32)
        else:
            bias = 1.0 + 0.12 * _smooth_noise(shape, max(shape) / 3, rng)
            channel = (channel * bias + rng.normal(0.0, 0.06, size=shape)).astype(np.float32)
            channel = np.where(body, np.clip(channel, 0.02, None) * scale, 0.0).astype(np.float32)
        image[c] = channel
    label[~body] = 0
    return image, label


def _field_of_view(shape: tuple[int, ...]) -> np.ndarray:
    """A round field of view in the first two axes, over every slice."""
    x = (np.arange(shape[0]) - (shape[0] - 1) / 2) / (shape[0] / 2)
    y = (np.arange(shape[1]) - (shape[1] - 1) / 2) / (shape[1] / 2)
    disc = (x[:, None] ** 2 + y[None, :] ** 2) <= 0.85
    return np.broadcast_to(disc[:, :, None], shape)
