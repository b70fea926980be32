"""Predictions back on the original grid as nnU-Net does it: class probabilities resampled linearly, the argmax
taken there; exact geometry (flipped, permuted and oblique axes), slab by slab, better on small lesions."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from scnas_dsl.data.dataset import open_dataset
from scnas_dsl.data.pipeline import run_pipeline
from scnas_dsl.data.preprocess import (
    Normalization,
    Preprocessed,
    preprocess_dataset,
    restore_prediction,
    restore_probabilities,
    restore_segmentation,
)
from scnas_dsl.errors import DataError

ZSCORE = Normalization(scheme="zscore_nonzero")


@pytest.fixture(scope="module")
def pre_resampled(brain_msd: Path, tmp_path_factory: pytest.TempPathFactory) -> Preprocessed:
    return preprocess_dataset(brain_msd, out=tmp_path_factory.mktemp("pre") / "resampled",
                              spacing=(0.8, 1.2, 1.1), progress=False)


def _onehot(label: np.ndarray, classes: int) -> np.ndarray:
    return np.stack([label == k for k in range(classes)]).astype(np.float32)


def _same_geometry(restored: nib.Nifti1Image, original: nib.Nifti1Image) -> None:
    assert restored.shape == original.shape
    np.testing.assert_allclose(restored.affine, original.affine, atol=1e-6)
    assert nib.aff2axcodes(restored.affine) == nib.aff2axcodes(original.affine)
    assert restored.header.get_zooms() == pytest.approx(original.header.get_zooms())
    assert restored.get_data_dtype() == np.uint8


def test_exact_at_the_original_spacing(brain_msd: Path, tmp_path: Path) -> None:
    """No resampling: the one-hot of the preprocessed label comes back as the original label map, voxel for
    voxel (the synthetic affines have flipped x and y and a rotation)."""
    pre = preprocess_dataset(brain_msd, out=tmp_path / "pre", spacing=None, progress=False)
    for case_id in pre.case_ids:
        _, label = pre.load(case_id)
        original = nib.load(open_dataset(brain_msd).case(case_id).label)
        restored = restore_segmentation(_onehot(np.asarray(label), 4), pre.meta(case_id))
        _same_geometry(restored, original)
        np.testing.assert_array_equal(np.asarray(restored.dataobj), np.asarray(original.dataobj))


def test_geometry_and_labels_after_resampling(pre_resampled: Preprocessed, brain_msd: Path) -> None:
    for case_id in pre_resampled.case_ids[:2]:
        meta = pre_resampled.meta(case_id)
        assert meta.shape != meta.cropped_shape
        _, label = pre_resampled.load(case_id)
        original = nib.load(open_dataset(brain_msd).case(case_id).label)
        restored = restore_segmentation(_onehot(np.asarray(label), 4), meta)
        _same_geometry(restored, original)
        got, want = np.asarray(restored.dataobj), np.asarray(original.dataobj)
        for k in (1, 2, 3):
            a, b = got == k, want == k
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.85


def _oblique_permuted_case(shape: tuple[int, int, int] = (18, 22, 15)):
    """A label volume whose voxel axes are permuted and flipped against RAS, with an oblique affine and
    anisotropic voxels; a non-zero body that does not fill the volume (so the crop matters)."""
    rng = np.random.default_rng(3)
    rotation = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # i -> -A, j -> S, k -> -R
    tilt = np.deg2rad(7)
    tilt_z = np.array([[np.cos(tilt), -np.sin(tilt), 0], [np.sin(tilt), np.cos(tilt), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = tilt_z @ rotation @ np.diag([1.3, 0.9, 2.1])
    affine[:3, 3] = [12.0, -40.0, 7.5]
    image = np.zeros(shape, np.float32)
    image[2:-3, 1:-2, 2:-1] = 1 + rng.random((shape[0] - 5, shape[1] - 3, shape[2] - 3))
    grid = np.indices(shape)
    label = np.zeros(shape, np.uint8)
    label[((grid[0] - 7) ** 2 / 16 + (grid[1] - 12) ** 2 / 30 + (grid[2] - 6) ** 2 / 6) <= 1] = 1
    label[((grid[0] - 12) ** 2 / 5 + (grid[1] - 6) ** 2 / 4 + (grid[2] - 9) ** 2 / 4) <= 1] = 2
    return image, label, nib.Nifti1Image(label, affine)


@pytest.mark.parametrize("target", [None, (0.7, 0.8, 1.0)])
def test_permuted_flipped_oblique_axes_come_back(target: tuple[float, ...] | None) -> None:
    image, label, ref = _oblique_permuted_case()
    assert nib.aff2axcodes(ref.affine) not in (("R", "A", "S"), ("L", "P", "S"))
    _, label_pre, meta, _ = run_pipeline("oblique", image[None], label, ref, target, ZSCORE)
    assert meta.crop_box != [(0, n) for n in meta.canonical_shape]  # cropped
    restored = restore_segmentation(_onehot(label_pre, 3), meta)
    _same_geometry(restored, ref)
    got = np.asarray(restored.dataobj)
    if target is None:
        np.testing.assert_array_equal(got, label)
    else:
        assert meta.shape != meta.cropped_shape
        for k in (1, 2):
            a, b = got == k, label == k
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.85


@pytest.mark.parametrize("slab", [1, 5, 16, 10_000])
def test_slab_by_slab_equals_the_whole_volume_at_once(pre_resampled: Preprocessed, slab: int) -> None:
    """Any slab size gives the argmax of the whole volume's linearly resampled probabilities (computed here
    with ``restore_probabilities``, which zooms each class in one piece)."""
    meta = pre_resampled.meta(pre_resampled.case_ids[0])
    rng = np.random.default_rng(0)
    logits = ndimage.gaussian_filter(rng.normal(size=(4, *meta.shape)), sigma=(0, 1.5, 1.5, 1.5)) * 10
    probs = np.exp(logits - logits.max(0))
    probs = (probs / probs.sum(0)).astype(np.float32)
    whole = restore_probabilities(probs, meta).get_fdata()
    # outside the crop box both give background; inside, the argmax of the same resampled probabilities
    expected = whole.argmax(-1)
    got = np.asarray(restore_segmentation(probs, meta, slab=slab).dataobj)
    assert (got != expected).sum() <= 2  # float32 rounding may split an exact tie
    assert len(np.unique(got)) == 4


def _spheres_on_a_coarse_grid(seed: int, radius: float, target: float = 0.7):
    """Four spheres of ``radius`` voxels on a 32^3 grid of 2 mm (the reference: voxel centres inside), and
    on the preprocessed ``target`` grid a good network's probabilities of the true (continuous) spheres."""
    shape = (32, 32, 32)
    rng = np.random.default_rng(seed)
    centres = [rng.uniform(radius + 2, 32 - radius - 3, size=3) for _ in range(4)]
    image = np.ones((1, *shape), np.float32)
    ref = nib.Nifti1Image(image[0], np.diag([2.0, 2.0, 2.0, 1.0]))
    meta = run_pipeline("spheres", image, None, ref, (target,) * 3, ZSCORE)[2]

    def distance(axes: list[np.ndarray]) -> np.ndarray:
        grids = np.meshgrid(*axes, indexing="ij", sparse=True)
        return np.min([np.sqrt(sum((g - c[a]) ** 2 for a, g in enumerate(grids))) for c in centres], axis=0)

    reference = distance([np.arange(n, dtype=float) for n in shape]) <= radius
    fine = [(np.arange(n) + 0.5) * o / n - 0.5 for n, o in zip(meta.shape, meta.cropped_shape, strict=True)]
    p1 = 1 / (1 + np.exp(-(radius - distance(fine)) / (target / 2 / 4)))
    return reference, np.stack([1 - p1, p1]).astype(np.float32), meta


@pytest.mark.parametrize("radius", [2, 3, 4])
def test_small_lesions_score_higher_than_with_nearest_neighbour(radius: int) -> None:
    """The argmax on the fine preprocessed grid, resampled with nearest neighbour, shifts lesion borders by
    up to half a fine voxel; the probabilities resampled linearly keep them (docs/benchmarks.md has the
    figures for more seeds)."""
    def dice(a: np.ndarray, b: np.ndarray) -> float:
        return float(2 * (a & b).sum() / (a.sum() + b.sum()))

    for seed in (0, 1):
        reference, probs, meta = _spheres_on_a_coarse_grid(seed, radius)
        nearest = np.asarray(restore_prediction(probs.argmax(0), meta).dataobj) == 1
        linear = np.asarray(restore_segmentation(probs, meta).dataobj) == 1
        assert dice(linear, reference) > 0.97
        assert dice(linear, reference) > dice(nearest, reference) + 0.01


def test_wrong_shapes_are_clear_errors(pre_resampled: Preprocessed) -> None:
    meta = pre_resampled.meta(pre_resampled.case_ids[0])
    with pytest.raises(DataError, match="probabilities have shape"):
        restore_segmentation(np.zeros((2, 3, 3, 3), np.float32), meta)
    with pytest.raises(DataError, match="probabilities have shape"):
        restore_segmentation(np.zeros(meta.shape, np.float32), meta)
