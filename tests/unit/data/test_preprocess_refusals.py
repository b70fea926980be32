"""Bad labels and images are refused by preprocess, before anything is cached, with a message naming the file."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scnas_dsl.data.dataset import open_dataset
from scnas_dsl.data.preprocess import label_dtype, preprocess_dataset
from scnas_dsl.data.synth import synthesize
from scnas_dsl.errors import DataError


@pytest.fixture(scope="module")
def heart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth") / "heart", task="heart", cases=2, shape=(16, 16, 16), seed=5)


@pytest.fixture(scope="module")
def lung(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth") / "lung", task="lung", cases=2, shape=(16, 16, 16), seed=6)


def _rewrite(path: Path, change: Callable[[np.ndarray], np.ndarray], affine: np.ndarray | None = None) -> None:
    img = nib.load(path)
    data = change(np.asarray(img.dataobj))
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine, img.header), path)


def _set(values: dict[tuple[int, int, int], int]) -> Callable[[np.ndarray], np.ndarray]:
    def change(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        for where, value in values.items():
            a[where] = value
        return a

    return change


def _preprocess(root: Path, tmp_path: Path) -> None:
    preprocess_dataset(root, out=tmp_path / "pre", spacing=None, progress=False)


@pytest.mark.parametrize("source", ["heart", "lung"])  # MRI reads labels in the pipeline, CT already for statistics
def test_undeclared_label_values_are_refused_naming_case_and_values(
    source: str, request: pytest.FixtureRequest, copy_of, tmp_path: Path
) -> None:
    root = copy_of(request.getfixturevalue(source))
    label = open_dataset(root).cases[1].label
    _rewrite(label, _set({(8, 8, 8): 255, (8, 8, 9): 5}))  # 255 would be -1 in an int8 cache, 5 kept as is
    with pytest.raises(DataError) as err:
        _preprocess(root, tmp_path)
    message = str(err.value)
    case_id = open_dataset(root).cases[1].id
    assert str(label) in message and f"case {case_id}" in message
    assert "label values 5, 255 are not declared in dataset.json (declared: 0 to 1)" in message
    assert not list((tmp_path / "pre" / "cases").glob(f"{case_id}.*"))  # nothing of it was cached


def test_the_label_type_follows_the_declared_maximum(heart: Path, tmp_path: Path) -> None:
    assert label_dtype(2) is np.uint8 and label_dtype(256) is np.uint8
    assert label_dtype(257) is np.int16 and label_dtype(40000) is np.int32
    pre = preprocess_dataset(heart, out=tmp_path / "pre", spacing=None, progress=False)
    _, label = pre.load(pre.case_ids[0])
    assert label is not None and label.dtype == np.uint8


def test_non_integer_labels_are_refused(heart: Path, copy_of, tmp_path: Path) -> None:
    root = copy_of(heart)
    label = open_dataset(root).cases[0].label
    _rewrite(label, lambda a: a.astype(np.float32) * 0.5)
    with pytest.raises(DataError, match=rf"{label}: case heart_000: non-integer label values"):
        _preprocess(root, tmp_path)


@pytest.mark.parametrize("source", ["heart", "lung"])
def test_a_2d_image_is_named(source: str, request: pytest.FixtureRequest, copy_of, tmp_path: Path) -> None:
    root = copy_of(request.getfixturevalue(source))
    image = open_dataset(root).cases[1].images[0]
    _rewrite(image, lambda a: a[:, :, 0])
    with pytest.raises(DataError, match=rf"{image}: (case \w+: )?image has shape \(16, 16\); expected 3D or 4D"):
        _preprocess(root, tmp_path)


@pytest.mark.parametrize("source", ["heart", "lung"])
def test_a_4d_label_is_named(source: str, request: pytest.FixtureRequest, copy_of, tmp_path: Path) -> None:
    root = copy_of(request.getfixturevalue(source))
    label = open_dataset(root).cases[0].label
    _rewrite(label, lambda a: np.stack([a, a], axis=-1))
    with pytest.raises(DataError, match=rf"{label}: case \w+: label has shape \(16, 16, 16, 2\); expected a 3D"):
        _preprocess(root, tmp_path)


def test_a_4d_label_of_one_volume_is_accepted(heart: Path, copy_of, tmp_path: Path) -> None:
    root = copy_of(heart)
    label = open_dataset(root).cases[0].label
    _rewrite(label, lambda a: a[..., None])
    pre = preprocess_dataset(root, out=tmp_path / "pre", spacing=None, progress=False)
    assert pre.load("heart_000")[1] is not None


def test_a_label_off_its_image_is_refused(heart: Path, copy_of, tmp_path: Path) -> None:
    root = copy_of(heart)
    case = open_dataset(root).cases[1]
    assert case.label is not None
    affine = nib.load(case.label).affine.copy()
    affine[:3, 3] += 2.0  # moved by 2 mm
    _rewrite(case.label, lambda a: a, affine)
    with pytest.raises(DataError) as err:
        _preprocess(root, tmp_path)
    message = str(err.value)
    assert message.startswith(f"{case.label}: case heart_001: affine differs from that of {case.images[0]}")
    assert "save the label with the image's affine" in message


def test_an_image_without_orientation_is_refused(heart: Path, copy_of, tmp_path: Path) -> None:
    root = copy_of(heart)
    image = open_dataset(root).cases[0].images[0]
    img = nib.load(image)
    header = img.header.copy()
    header.set_qform(None, code=0)
    header.set_sform(None, code=0)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, header), image)
    with pytest.raises(DataError, match=rf"{image}: no orientation \(qform_code and sform_code are both 0\)"):
        _preprocess(root, tmp_path)


def test_a_dangling_symlink_is_named_as_such(heart: Path, copy_of, tmp_path: Path) -> None:
    root = copy_of(heart)
    image = open_dataset(root).cases[1].images[0]
    image.unlink()
    image.symlink_to(tmp_path / "gone.nii.gz")
    with pytest.raises(DataError, match=rf"{image}: case heart_001: dangling symbolic link .*gone.nii.gz"):
        _preprocess(root, tmp_path)


def test_extreme_intensities_are_normalised_in_float64_or_refused_by_one_rule(heart: Path, tmp_path: Path) -> None:
    """x1e18 and x3e35 in float32 poisoned the cache (zeros, NaN: the float32 std overflowed) while check said ok;
    float64 x1e300 (infinite in float32) was refused by preprocess and passed check. Now statistics are float64
    and check and preprocess share one rule."""
    import shutil

    from scnas_dsl.data.dataset import check_dataset
    from scnas_dsl.data.preprocess import Preprocessed

    def copy_of(source: Path, name: str) -> Path:
        return Path(shutil.copytree(source, tmp_path / name))

    reference = preprocess_dataset(heart, out=tmp_path / "ref", spacing=None, progress=False)
    for factor in (1e18, 3e35):
        root = copy_of(heart, f"x{factor:g}")
        image = sorted((root / "imagesTr").glob("*.nii.gz"))[0]
        _rewrite(image, lambda a, f=factor: (a.astype(np.float32) * np.float32(f)).astype(np.float32))
        assert not [p for p in check_dataset(root) if "intensit" in p.message]
        pre: Preprocessed = preprocess_dataset(root, out=tmp_path / f"pre{factor:g}", spacing=None, progress=False)
        case = pre.case_ids[0]
        got, want = pre.load(case)[0], reference.load(case)[0]
        assert np.isfinite(got).all() and np.abs(got).max() > 0.5  # not zeros, not NaN
        np.testing.assert_allclose(got, want, atol=1e-3)  # the same standardised image as unscaled
    root = copy_of(heart, "x1e300")
    image = sorted((root / "imagesTr").glob("*.nii.gz"))[0]
    img = nib.load(image)
    stored = nib.Nifti1Image(np.asarray(img.dataobj).astype(np.float64) * 1e300, img.affine)  # stored as float64
    stored.header.set_data_dtype(np.float64)
    nib.save(stored, image)
    problems = [p for p in check_dataset(root) if "NaN or infinite intensities in float32" in p.message]
    assert len(problems) == 1 and "e+30" in problems[0].message  # the value range is named
    with pytest.raises(DataError, match=r"NaN or infinite intensities in float32.*scnas data check"):
        preprocess_dataset(root, out=tmp_path / "pre_inf", spacing=None, progress=False)


def _zero_pixdim(path: Path, axis: int) -> None:
    """Set pixdim[axis] of a .nii.gz file to 0 in its stored NIfTI-1 header (pixdim: 8 float32 at byte 76)."""
    import gzip
    import struct

    raw = bytearray(gzip.decompress(path.read_bytes()))
    endian = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    raw[76 + 4 * axis:80 + 4 * axis] = struct.pack(f"{endian}f", 0.0)
    path.write_bytes(gzip.compress(bytes(raw)))


def test_a_singular_affine_is_a_defect_check_and_preprocess_both_name(heart: Path, tmp_path: Path) -> None:
    """A zero-length axis ended in nibabel's "Unable to find out axis" traceback in preprocess after check said
    ok; a zero voxel size in the header (pixdim, where the qform gives the geometry) silently became 1 mm."""
    import shutil

    from scnas_dsl.data.dataset import check_dataset

    for name, change in (("singular", "affine"), ("pixdim", "pixdim")):
        root = Path(shutil.copytree(heart, tmp_path / name))
        image = sorted((root / "imagesTr").glob("*.nii.gz"))[0]
        img = nib.load(image)
        data = np.asarray(img.dataobj)
        if change == "affine":  # the sform's third row zero: a zero-length axis, no qform
            header = img.header.copy()
            header["qform_code"], header["sform_code"] = 0, 1
            header["srow_z"] = [0.0, 0.0, 0.0, 0.0]
            out = nib.Nifti1Image(data, None, header)  # no affine given: the header's sform is kept as it is
        else:  # the geometry is the qform's, and its voxel size along x is 0 in the file
            out = nib.Nifti1Image(data, img.affine)
            out.set_qform(img.affine, code=1)
            out.set_sform(None, code=0)
        nib.save(out, image)
        if change == "pixdim":  # nibabel replaces a zero pixdim by 1 on every write: patch the stored bytes
            _zero_pixdim(image, axis=1)
            assert nib.load(image).header.get_zooms()[0] == 1.0  # what a reader that trusts nibabel sees
        problems = [p.message for p in check_dataset(root) if p.file == image]
        expected = "singular affine" if change == "affine" else "voxel size [0.0, 1.25, 2.0] mm in the header (pixdim)"
        assert any(expected in m for m in problems), problems
        with pytest.raises(DataError, match=re.escape(expected)):
            preprocess_dataset(root, out=tmp_path / f"pre_{name}", spacing=None, progress=False)
