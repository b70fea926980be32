"""Generated data sets: valid in both layouts, repeatable, and shaped like the Decathlon's tasks."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scnas_dsl.data.dataset import check_dataset, open_dataset
from scnas_dsl.data.synth import SYNTH_SPACING, synthesize
from scnas_dsl.errors import DataError

from .conftest import SHAPE


def test_both_layouts_are_valid_and_agree(brain_msd: Path, brain_nnunet: Path) -> None:
    msd, nnunet = open_dataset(brain_msd), open_dataset(brain_nnunet)
    assert (msd.layout, nnunet.layout) == ("msd", "nnunet")
    assert msd.modalities == nnunet.modalities == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert msd.labels == nnunet.labels and sorted(msd.labels) == [0, 1, 2, 3]
    assert [c.id for c in msd.cases] == [c.id for c in nnunet.cases]
    assert len(msd.test_images) == len(nnunet.test_images) == 1
    assert check_dataset(brain_msd) == [] and check_dataset(brain_nnunet) == []
    four_d = nib.load(msd.cases[0].images[0]).get_fdata()
    channel2 = nib.load(nnunet.cases[0].images[2]).get_fdata()
    assert four_d.shape == (*SHAPE, 4)
    np.testing.assert_allclose(four_d[..., 2], channel2)


def test_geometry_is_anisotropic_and_not_identity(brain_msd: Path) -> None:
    img = nib.load(open_dataset(brain_msd).cases[0].images[0])
    assert np.allclose(img.header.get_zooms()[:3], SYNTH_SPACING["brain"])
    assert not np.allclose(img.affine[:3, :3], np.diag(np.diag(img.affine[:3, :3])))  # rotated
    assert np.linalg.det(img.affine[:3, :3]) > 0 and img.affine[0, 0] < 0  # flipped x (and y)


def test_body_has_zero_background_and_labels_inside(brain_msd: Path) -> None:
    case = open_dataset(brain_msd).cases[1]
    image = nib.load(case.images[0]).get_fdata()
    label = nib.load(case.label).get_fdata()
    body = (image != 0).any(-1)
    assert 0.2 < body.mean() < 0.9
    assert not body[0].any() and not body[-1].any()
    assert (label[~body] == 0).all()
    assert set(np.unique(label).astype(int)) == {0, 1, 2, 3}
    # the classes differ in mean intensity in at least one channel by a clear margin
    means = np.array([[image[..., c][label == k].mean() for c in range(4)] for k in range(4)])
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.abs(means[a] - means[b]).max() > 20


def test_same_seed_same_data_other_seed_other_data(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a", task="heart", cases=2, shape=(16, 16, 16), seed=7)
    b = synthesize(tmp_path / "b", task="heart", cases=2, shape=(16, 16, 16), seed=7)
    c = synthesize(tmp_path / "c", task="heart", cases=2, shape=(16, 16, 16), seed=8)
    read = lambda root: nib.load(root / "imagesTr" / "heart_001.nii.gz").get_fdata()  # noqa: E731
    assert np.array_equal(read(a), read(b))
    assert not np.array_equal(read(a), read(c))


def test_lung_is_ct_like(lung_msd: Path) -> None:
    dataset = open_dataset(lung_msd)
    assert dataset.is_ct and dataset.modalities == ["CT"]
    img = nib.load(dataset.cases[0].images[0])
    data = img.get_fdata()
    assert img.get_data_dtype() == np.int16
    assert data.min() < -900 and (data == 0).any()
    assert data[nib.load(dataset.cases[0].label).get_fdata() > 0].mean() > 50
    assert check_dataset(lung_msd) == []


def test_nnunet_json_uses_names_as_label_keys(brain_nnunet: Path) -> None:
    meta = json.loads((brain_nnunet / "dataset.json").read_text())
    assert meta["labels"]["background"] == 0 and meta["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (brain_nnunet / "imagesTs").iterdir())[0].endswith("_0000.nii.gz")


def test_refuses_non_empty_folder_and_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not an empty folder"):
        synthesize(tmp_path, task="heart", cases=1, shape=(16, 16, 16))
    assert (tmp_path / "keep.txt").read_text() == "mine"
    with pytest.raises(DataError, match="unknown synthetic task"):
        synthesize(tmp_path / "x", task="liver", cases=1)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="at least 16"):
        synthesize(tmp_path / "y", task="heart", cases=1, shape=(8, 16, 16))
