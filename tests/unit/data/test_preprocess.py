"""Preprocessing: geometry round trips, normalisation, the cache (reuse and invalidation), safety."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scnas_dsl.data import preprocess
from scnas_dsl.data.dataset import open_dataset
from scnas_dsl.data.preprocess import (
    Preprocessed,
    cache_root,
    default_cache_dir,
    find_preprocessed,
    preprocess_dataset,
    preprocess_image,
    restore_prediction,
    restore_probabilities,
)
from scnas_dsl.errors import DataError

from .conftest import tree_digest


@pytest.fixture(scope="module")
def pre_msd(brain_msd: Path, tmp_path_factory: pytest.TempPathFactory) -> Preprocessed:
    return preprocess_dataset(
        brain_msd, out=tmp_path_factory.mktemp("pre") / "msd", spacing=None, progress=False
    )


def _original_label(root: Path, case_id: str) -> nib.Nifti1Image:
    return nib.load(open_dataset(root).case(case_id).label)


def test_exact_round_trip_at_the_original_spacing(brain, tmp_path: Path) -> None:
    pre = preprocess_dataset(brain, out=tmp_path / "pre", spacing=None, progress=False)
    for case_id in pre.case_ids:
        image, label = pre.load(case_id)
        meta = pre.meta(case_id)
        original = _original_label(brain, case_id)
        assert image.dtype == np.float32 and image.shape == (4, *label.shape) and label.shape == meta.shape
        # cropped to the non-zero region: smaller than the original
        assert np.prod(meta.shape) < np.prod(original.shape)
        restored = restore_prediction(np.asarray(label), meta)
        assert restored.shape == original.shape
        np.testing.assert_allclose(restored.affine, original.affine, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(restored.dataobj), np.asarray(original.dataobj))
        assert restored.header.get_zooms() == pytest.approx(original.header.get_zooms())


def test_round_trip_with_real_resampling(brain_msd: Path, tmp_path: Path) -> None:
    pre = preprocess_dataset(brain_msd, out=tmp_path / "pre", spacing=(0.8, 1.2, 1.1), progress=False)
    case_id = pre.case_ids[0]
    meta = pre.meta(case_id)
    _, label = pre.load(case_id)
    assert meta.spacing == pytest.approx((0.8, 1.2, 1.1), rel=0.05)
    assert meta.shape != meta.cropped_shape
    original = np.asarray(_original_label(brain_msd, case_id).dataobj)
    restored = np.asarray(restore_prediction(np.asarray(label), meta).dataobj)
    assert restored.shape == original.shape
    assert (restored == original).mean() > 0.97
    for k in (1, 2, 3):
        a, b = restored == k, original == k
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.8


def test_probabilities_come_back_as_4d(pre_msd: Preprocessed, brain_msd: Path) -> None:
    case_id = pre_msd.case_ids[1]
    _, label = pre_msd.load(case_id)
    probs = np.stack([np.asarray(label) == k for k in range(4)]).astype(np.float32)
    img = restore_probabilities(probs, pre_msd.meta(case_id))
    original = _original_label(brain_msd, case_id)
    assert img.shape == (*original.shape, 4) and img.get_data_dtype() == np.float32
    data = img.get_fdata()
    np.testing.assert_allclose(data.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(data.argmax(-1), np.asarray(original.dataobj))


def test_restore_refuses_a_wrong_shape(pre_msd: Preprocessed) -> None:
    meta = pre_msd.meta(pre_msd.case_ids[0])
    with pytest.raises(DataError, match="prediction has shape"):
        restore_prediction(np.zeros((3, 3, 3), np.uint8), meta)


def test_preprocess_image_matches_the_training_pipeline(pre_msd: Preprocessed, brain_msd: Path) -> None:
    case = open_dataset(brain_msd).cases[2]
    image, meta = preprocess_image(case.images, pre_msd)
    stored, _ = pre_msd.load(case.id)
    np.testing.assert_allclose(image, stored, atol=1e-6)
    assert meta == pre_msd.meta(case.id)
    test_case = open_dataset(brain_msd).test_images[0]
    image, meta = preprocess_image(test_case.images, pre_msd)
    assert image.shape[0] == 4 and meta.case_id == test_case.id


def test_preprocess_image_checks_channel_count(pre_msd: Preprocessed, brain_nnunet: Path) -> None:
    case = open_dataset(brain_nnunet).cases[0]
    with pytest.raises(DataError, match="1 channel"):
        preprocess_image(case.images[:1], pre_msd)


def test_mri_normalisation_is_zscore_inside_the_body(pre_msd: Preprocessed) -> None:
    image, _ = pre_msd.load(pre_msd.case_ids[0], mmap=False)
    inside = (image != 0).any(0)
    assert pre_msd.normalization.scheme == "zscore_nonzero"
    for channel in image:
        assert abs(channel[inside].mean()) < 1e-3 and channel[inside].std() == pytest.approx(1.0, abs=1e-3)


def test_ct_normalisation_uses_foreground_statistics(lung_msd: Path, tmp_path: Path) -> None:
    pre = preprocess_dataset(lung_msd, out=tmp_path / "pre", spacing=None, progress=False)
    norm = pre.normalization
    assert norm.scheme == "ct" and norm.lower[0] < norm.mean[0] < norm.upper[0]
    low = (norm.lower[0] - norm.mean[0]) / norm.std[0]
    high = (norm.upper[0] - norm.mean[0]) / norm.std[0]
    image, label = pre.load(pre.case_ids[0])
    assert image.min() >= low - 1e-5 and image.max() <= high + 1e-5
    assert np.isclose(image, low, atol=1e-5).mean() > 0.2  # lung air is clipped to the lower bound
    assert abs(float(image[0][np.asarray(label) > 0].mean())) < 1.0


def test_foreground_locations_point_at_their_class(pre_msd: Preprocessed) -> None:
    case_id = pre_msd.case_ids[0]
    _, label = pre_msd.load(case_id)
    locations = pre_msd.foreground_locations(case_id)
    assert sorted(locations) == sorted(int(v) for v in np.unique(label) if v > 0)
    for value, coords in locations.items():
        assert coords.shape[1] == 3 and (np.asarray(label)[tuple(coords.T)] == value).all()


def test_second_run_reuses_and_a_change_redoes_only_that(
    brain_msd: Path, copy_of, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = copy_of(brain_msd)
    out = tmp_path / "pre"
    first = preprocess_dataset(root, out=out, spacing=None, progress=False)
    assert sorted(first.redone) == first.case_ids
    files = {p.name: p.stat().st_mtime_ns for p in (out / "cases").iterdir()}
    second = preprocess_dataset(root, out=out, spacing=None, progress=False)
    assert second.redone == []
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cases").iterdir()} == files
    # a changed file (new modification time) redoes its case only
    label = open_dataset(root).case("brain_002").label
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    assert preprocess_dataset(root, out=out, spacing=None, progress=False).redone == ["brain_002"]
    # a changed pipeline redoes everything, in place
    monkeypatch.setattr(preprocess, "PIPELINE_VERSION", preprocess.PIPELINE_VERSION + 1)
    assert len(preprocess_dataset(root, out=out, spacing=None, progress=False).redone) == 4
    # a deleted output is made again
    (out / "cases" / "brain_001.image.npy").unlink()
    assert preprocess_dataset(root, out=out, spacing=None, progress=False).redone == ["brain_001"]
    # another spacing never goes into a folder made for one: refused, nothing touched
    files = {p.name: p.stat().st_mtime_ns for p in (out / "cases").iterdir()}
    with pytest.raises(DataError, match=r"median spacing .*not at spacing 1 x 1 x 1 mm.*Leave out --out"):
        preprocess_dataset(root, out=out, spacing=(1.0, 1.0, 1.0), progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cases").iterdir()} == files


def test_a_case_leaving_the_data_set_leaves_the_cache(brain_nnunet: Path, copy_of, tmp_path: Path) -> None:
    root = copy_of(brain_nnunet)
    out = tmp_path / "pre"
    preprocess_dataset(root, out=out, spacing=None, progress=False)
    for path in (root / "imagesTr").glob("brain_003_*"):
        path.unlink()
    (root / "labelsTr" / "brain_003.nii.gz").unlink()
    pre = preprocess_dataset(root, out=out, spacing=None, progress=False)
    assert pre.redone == [] and "brain_003" not in pre.case_ids
    assert not list((out / "cases").glob("brain_003*"))


def test_the_data_set_folder_is_never_written(brain, copy_of, tmp_path: Path, monkeypatch) -> None:
    root = copy_of(brain)
    before = tree_digest(root)
    monkeypatch.setenv("SCNAS_CACHE", str(tmp_path / "cache"))
    pre = preprocess_dataset(root, spacing=None, progress=False)
    assert pre.root == default_cache_dir(open_dataset(root), None) and pre.root.name == "median-spacing"
    assert pre.root.parent == cache_root(open_dataset(root)) and pre.root.parent.parent == tmp_path / "cache"
    other = preprocess_dataset(root, spacing=(1.5, 1.5, 1.5), progress=False)
    assert other.root == pre.root.parent / "spacing-1.5x1.5x1.5"
    assert find_preprocessed(open_dataset(root)) == [pre.root, other.root]
    assert tree_digest(root) == before
    with pytest.raises(DataError, match="inside the data set folder"):
        preprocess_dataset(root, out=root / "preprocessed", progress=False)
    assert tree_digest(root) == before


def test_refuses_a_foreign_non_empty_output_folder(brain_msd: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not made by scnas"):
        preprocess_dataset(brain_msd, out=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_bad_case_is_named(brain_msd: Path, copy_of, tmp_path: Path) -> None:
    root = copy_of(brain_msd)
    label = open_dataset(root).case("brain_001").label
    label.write_bytes(label.read_bytes()[:200])
    with pytest.raises(DataError, match="brain_001.nii.gz.*gzip"):
        preprocess_dataset(root, out=tmp_path / "pre", spacing=None, progress=False)


@pytest.mark.slow
def test_two_workers_give_the_same_result(brain_msd: Path, tmp_path: Path) -> None:
    one = preprocess_dataset(
        brain_msd, out=tmp_path / "one", spacing=(1.2, 1.2, 1.2), workers=1, progress=False
    )
    two = preprocess_dataset(
        brain_msd, out=tmp_path / "two", spacing=(1.2, 1.2, 1.2), workers=2, progress=False
    )
    assert one.case_ids == two.case_ids
    for case_id in one.case_ids:
        np.testing.assert_array_equal(one.load(case_id)[0], two.load(case_id)[0])
        assert one.meta(case_id) == two.meta(case_id)


def test_damaged_cache_records_are_remade_and_a_damaged_manifest_is_named(
    brain_msd: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pre"
    preprocess_dataset(brain_msd, out=out, spacing=None, progress=False)
    (out / "cases" / "brain_002.json").write_text("{ half written")
    (out / "fingerprint" / "cases.json").write_text("[")
    assert preprocess_dataset(brain_msd, out=out, spacing=None, progress=False).redone == ["brain_002"]
    (out / "preprocessed.json").write_text('{"dataset": {}}')
    with pytest.raises(DataError, match="preprocessed.json: not a preprocessed data set"):
        Preprocessed(out)
    assert preprocess_dataset(brain_msd, out=out, spacing=None, progress=False).redone == []
    assert Preprocessed(out).case_ids == ["brain_000", "brain_001", "brain_002", "brain_003"]
