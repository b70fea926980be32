"""Resampling (scnas_dsl/data/resample.py): scipy's results within the stated tolerance, nnU-Net's handling
of thick slices, and class counts and foreground locations without a coordinate list of every voxel."""

from __future__ import annotations

import tracemalloc
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from scnas_dsl.data import resample
from scnas_dsl.data.pipeline import run_pipeline
from scnas_dsl.data.preprocess import Normalization

#: The stated tolerance against scipy.ndimage.zoom (docs/data.md): float32 rounding, relative to the largest
#: magnitude of the volume.
TOLERANCE = 1e-5
SHAPES = [(43, 58, 33), (15, 20, 11), (30, 60, 23), (31, 40, 70), (30, 41, 9)]


def _zoom(volume: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """What preprocessing did before: scipy's 3D zoom, voxel edges aligned."""
    factors = [n / o for n, o in zip(shape, volume.shape, strict=True)]
    return ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)


def _volume(seed: int = 0, shape: Sequence[int] = (30, 41, 23)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (ndimage.gaussian_filter(rng.normal(size=shape), 2) * 3000 - 500).astype(np.float32)


def _labels(seed: int, shape: Sequence[int] = (30, 41, 23), classes: int = 4) -> np.ndarray:
    v = _volume(seed, shape)
    return ((v - v.min()) / np.ptp(v) * classes).clip(0, classes - 1).astype(np.uint8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("order", [1, 3])
def test_images_match_scipy_zoom_within_the_tolerance(shape: tuple[int, int, int], order: int) -> None:
    image = np.stack([_volume(0), _volume(1) * 0.01])
    got = resample.resample_image(image, shape, order=order, device="cpu", slab=7)
    assert got.shape == (2, *shape) and got.dtype == np.float32
    for c in range(2):
        expected = _zoom(image[c], shape, order)
        assert np.abs(got[c] - expected).max() <= TOLERANCE * np.abs(expected).max()


def _old_resample_label(label: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The earlier per-class scipy implementation."""
    out = np.zeros(tuple(shape), dtype=label.dtype)
    for value in np.unique(label):
        if value != 0:
            out[_zoom((label == value).astype(np.float32), shape, order=1) >= 0.5] = value
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_labels_and_masks_match_scipy_exactly(shape: tuple[int, int, int]) -> None:
    label = _labels(2)
    assert set(np.unique(label)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(resample.resample_label(label, shape, device="cpu", slab=5), _old_resample_label(label, shape))
    mask = label > 1
    np.testing.assert_array_equal(resample.resample_nearest(mask, shape), _zoom(mask, shape, 0))


def test_separate_axis_follows_nnunet() -> None:
    assert resample.separate_axis((0.8, 0.8, 2.5), (0.7, 0.7, 0.7)) == 2  # the data's ratio 3.1 > 3
    assert resample.separate_axis((5.0, 1.0, 1.0), (1.0, 1.0, 1.0)) == 0
    assert resample.separate_axis((0.8, 0.8, 2.4), (0.7, 0.7, 0.7)) is None  # 3.0 is not above 3
    assert resample.separate_axis((1.0, 1.0, 1.0), (1.0, 1.0, 4.0)) == 2  # else the target's
    assert resample.separate_axis((0.24, 1.25, 1.25), (1.0, 1.0, 1.0)) is None  # two coarse axes: not a slice axis


def _thick_case() -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image]:
    """A generated volume of 1 x 1 x 5 mm: a bright sphere of radius 12 mm (label 1) in a body, noise."""
    rng = np.random.default_rng(4)
    d, h, w = np.meshgrid(np.arange(32), np.arange(32), np.arange(8) * 5.0 + 2.5, indexing="ij")
    sphere = (d - 16) ** 2 + (h - 15) ** 2 + (w - 20) ** 2 < 12**2
    image = 100 + 50 * sphere + rng.normal(0, 5, sphere.shape)
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    return image[None].astype(np.float32), sphere.astype(np.uint8), nib.Nifti1Image(image, affine)


def test_thick_slices_are_resampled_nearest_out_of_plane() -> None:
    image, label, ref = _thick_case()
    norm = Normalization(scheme="zscore_nonzero")
    out, label_r, meta, _ = run_pipeline("thick", image, label, ref, (1.0, 1.0, 1.0), norm)
    assert meta.shape == (32, 32, 40)
    # every output slice is one input slice resampled in the plane (nothing blended across 5 mm)
    standardised = (image[0] - image[0].mean()) / image[0].std()  # no zero voxel: z-score over everything
    for z in range(40):
        source = int(np.floor((z + 0.5) * 8 / 40))
        np.testing.assert_array_equal(label_r[..., z], label[..., source])
        np.testing.assert_allclose(out[0, ..., z], standardised[..., source], rtol=0, atol=1e-4)
    assert len({out[0, ..., z].tobytes() for z in range(40)}) == 8
    # in the plane, cubic splines (images) and linear one-hot (labels), as nnU-Net's per-slice resize
    plane = resample.resample_image(image, (48, 48, 40), axis=2, device="cpu")[0]
    planes = resample.resample_label(label, (48, 48, 40), axis=2, device="cpu")
    for z in (0, 17, 39):
        source = int(np.floor((z + 0.5) * 8 / 40))
        expected = _zoom(image[0, ..., source, None], (48, 48, 1), 3)[..., 0]
        assert np.abs(plane[..., z] - expected).max() <= TOLERANCE * np.abs(expected).max()
        np.testing.assert_array_equal(
            planes[..., z], _old_resample_label(label[..., source, None], (48, 48, 1))[..., 0]
        )


def test_isotropic_data_is_not_resampled_slice_by_slice() -> None:
    image, label, _ = _thick_case()
    ref = nib.Nifti1Image(image[0], np.diag([1.0, 1.0, 2.5, 1.0]))  # ratio 2.5: one 3D resampling
    norm = Normalization(scheme="zscore_nonzero")
    out, _, _, _ = run_pipeline("iso", image, label, ref, (1.0, 1.0, 1.0), norm)
    zoomed = _zoom(image[0], (32, 32, 20), 3)
    np.testing.assert_allclose(out[0], (zoomed - zoomed.mean()) / zoomed.std(), rtol=0, atol=1e-4)
    assert len({out[0, ..., z].tobytes() for z in range(20)}) == 20


def _old_locations(label: np.ndarray, samples: int, seed: int) -> tuple[dict[int, int], dict[int, np.ndarray]]:
    """The earlier implementation: np.argwhere of every class."""
    rng = np.random.default_rng(seed)
    counts, locations = {}, {}
    for value in range(int(label.max()) + 1):
        coords = np.argwhere(label == value)
        counts[value] = len(coords)
        if value == 0 or len(coords) == 0:
            continue
        if len(coords) > samples:
            coords = coords[np.sort(rng.choice(len(coords), samples, replace=False))]
        locations[value] = coords.astype(np.int32)
    return counts, locations


def test_class_counts_and_sampled_locations_are_the_same_as_before() -> None:
    label = _labels(5, (40, 30, 20), classes=5)
    label[label == 3] = 0  # an absent class
    counts, expected = _old_locations(label, 300, seed=9)
    got_counts = resample.present_classes(label, chunk=1001)
    assert got_counts == {v: n for v, n in counts.items() if n}
    got = resample.foreground_locations(label, got_counts, 300, np.random.default_rng(9), chunk=777)
    assert sorted(got) == sorted(expected) == [1, 2, 4]
    assert len(got[1]) == 300 and len(got[4]) < 300  # sampled, and all of a small class
    for value in expected:
        np.testing.assert_array_equal(got[value], expected[value])


def test_class_counts_and_locations_do_not_list_every_voxel() -> None:
    # nnU-Net keeps at most ~10k locations per class; np.argwhere(label == 0) alone took 24 bytes per voxel
    label = np.zeros((256, 256, 128), dtype=np.uint8)
    label[100:180, 90:200, 30:100] = 1
    label[10:20, 10:20, 10:20] = 2
    tracemalloc.start()
    try:
        counts = resample.present_classes(label)
        locations = resample.foreground_locations(label, counts, 10_000, np.random.default_rng(0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counts == {0: label.size - 80 * 110 * 70 - 1000, 1: 80 * 110 * 70, 2: 1000}
    assert [len(locations[1]), len(locations[2])] == [10_000, 1000]
    assert (label[tuple(locations[1].T)] == 1).all() and (label[tuple(locations[2].T)] == 2).all()
    assert peak < 6 * label.size, f"{peak / label.size:.1f} bytes per voxel"
