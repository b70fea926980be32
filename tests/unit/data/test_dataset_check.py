"""Reading dataset.json in both layouts and `check_dataset` on every kind of broken data set."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scnas_dsl.data.dataset import check_dataset, open_dataset
from scnas_dsl.errors import DataError

from .conftest import tree_digest


def _rewrite(
    path: Path, change: Callable[[np.ndarray], np.ndarray], affine: np.ndarray | None = None
) -> None:
    img = nib.load(path)
    data = change(np.asarray(img.dataobj))
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), path)


def _case_files(root: Path, index: int = 0) -> tuple[list[Path], Path]:
    case = open_dataset(root).cases[index]
    assert case.label is not None
    return case.images, case.label


def _edit_json(root: Path, change: Callable[[dict], None]) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    change(meta)
    (root / "dataset.json").write_text(json.dumps(meta))


# ------------------------------------------------------------------------ dataset.json


def test_missing_dataset_json(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset.json: missing"):
        open_dataset(tmp_path)
    problems = check_dataset(tmp_path)
    assert len(problems) == 1 and "dataset.json: missing" in problems[0].message


def test_invalid_json_names_line_and_column(brain_msd: Path, copy_of) -> None:
    root = copy_of(brain_msd)
    (root / "dataset.json").write_text('{\n  "name": "x",\n  "modality": {"0": "CT"\n}')
    with pytest.raises(DataError, match=r"dataset.json:4:2: not valid JSON"):
        open_dataset(root)


def test_json_without_layout_keys(brain_msd: Path, copy_of) -> None:
    root = copy_of(brain_msd)
    _edit_json(root, lambda m: m.pop("modality"))
    with pytest.raises(DataError, match="neither 'modality'.*nor 'channel_names'"):
        open_dataset(root)


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_paths_escaping_the_folder_are_refused(brain_msd: Path, copy_of, tmp_path: Path, where: str) -> None:
    root = copy_of(brain_msd)
    outside = "/etc/passwd" if where == "absolute" else "../../elsewhere/case.nii.gz"
    _edit_json(root, lambda m: m["training"][1].update(label=outside))
    with pytest.raises(DataError, match=r"1 path\(s\) point outside the data set folder.*refused"):
        open_dataset(root)
    [problem] = check_dataset(root)
    assert "outside the data set folder" in problem.message and outside in problem.message


def test_region_labels_of_nnunet_are_refused(brain_nnunet: Path, copy_of) -> None:
    root = copy_of(brain_nnunet)
    _edit_json(root, lambda m: m["labels"].update({"whole tumour": [1, 2, 3]}))
    with pytest.raises(DataError, match="region-based training is not supported"):
        open_dataset(root)


def test_labels_must_start_at_background(brain_msd: Path, copy_of) -> None:
    root = copy_of(brain_msd)
    _edit_json(root, lambda m: m["labels"].pop("0"))
    with pytest.raises(DataError, match=r"must declare 0 \(background\)"):
        open_dataset(root)


# ----------------------------------------------------------------------- every kind of bad case


def _only(problems: list, needle: str):
    matching = [p for p in problems if needle in p.message]
    assert len(matching) == 1, problems
    return matching[0]


def test_missing_label_file(brain, copy_of) -> None:
    root = copy_of(brain)
    _, label = _case_files(root, 1)
    label.unlink()
    problem = _only(check_dataset(root), "file is missing")
    assert problem.file == label and problem.case == "brain_001"


def test_missing_channel_file_of_nnunet(brain_nnunet: Path, copy_of) -> None:
    root = copy_of(brain_nnunet)
    images, _ = _case_files(root, 2)
    images[3].unlink()
    problem = _only(check_dataset(root), "file is missing")
    assert problem.file == images[3] and problem.case == "brain_002"


def test_truncated_gzip(brain, copy_of) -> None:
    root = copy_of(brain)
    images, _ = _case_files(root)
    data = images[0].read_bytes()
    images[0].write_bytes(data[: len(data) // 2])
    problem = _only(check_dataset(root), "gzip")
    assert problem.file == images[0] and problem.case == "brain_000"


def test_corrupt_gzip(brain_msd: Path, copy_of) -> None:
    root = copy_of(brain_msd)
    _, label = _case_files(root)
    raw = bytearray(label.read_bytes())
    raw[40:80] = bytes(range(40))  # damage the deflate stream after the gzip header
    label.write_bytes(bytes(raw))
    problem = _only(check_dataset(root), "")
    assert problem.file == label and ("gzip" in problem.message or "cannot be read" in problem.message)


def test_not_nifti_at_all(brain_msd: Path, copy_of) -> None:
    root = copy_of(brain_msd)
    _, label = _case_files(root)
    label.write_bytes(gzip.compress(b"hello, not an image"))
    problem = _only(check_dataset(root), "cannot be read as NIfTI")
    assert problem.file == label


def test_shape_mismatch(brain, copy_of) -> None:
    root = copy_of(brain)
    _, label = _case_files(root)
    _rewrite(label, lambda a: a[:-2])
    problem = _only(check_dataset(root), "shape")
    assert problem.file == label and "differs from" in problem.message


def test_affine_mismatch_beyond_tolerance(brain, copy_of) -> None:
    root = copy_of(brain)
    _, label = _case_files(root)
    affine = nib.load(label).affine.copy()
    affine[:3, 2] *= 1.2  # slice thickness 1.5 -> 1.8 mm
    _rewrite(label, lambda a: a, affine)
    problem = _only(check_dataset(root), "affine differs")
    assert problem.file == label and "1.8" in problem.message
    # the image is named by its path, not by a bare file name that is the same for the label
    assert f"affine differs from that of {_case_files(root)[0][0]} " in problem.message


def test_affine_within_tolerance_is_fine(brain_msd: Path, copy_of) -> None:
    root = copy_of(brain_msd)
    _, label = _case_files(root)
    affine = nib.load(label).affine.copy()
    affine[0, 3] += 1e-5
    _rewrite(label, lambda a: a, affine)
    assert check_dataset(root) == []


def test_undeclared_label_value(brain, copy_of) -> None:
    root = copy_of(brain)
    _, label = _case_files(root)

    def add_seven(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[5, 5, 5] = 7
        return a

    _rewrite(label, add_seven)
    problem = _only(check_dataset(root), "not declared")
    assert problem.file == label and "[7]" in problem.message


def test_non_integer_label(brain, copy_of) -> None:
    root = copy_of(brain)
    _, label = _case_files(root)
    _rewrite(label, lambda a: a.astype(np.float32) * 0.5)
    problem = _only(check_dataset(root), "non-integer")
    assert problem.file == label


def test_nan_and_inf_intensities(brain, copy_of) -> None:
    root = copy_of(brain)
    images, _ = _case_files(root, 3)

    def poison(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32).copy()
        extra = (0,) * (a.ndim - 3)  # first channel of a 4D image
        a[(1, 2, 3, *extra)] = np.nan
        a[(3, 2, 1, *extra)] = np.inf
        return a

    _rewrite(images[-1], poison)
    problem = _only(check_dataset(root), "NaN or infinite")
    assert problem.file == images[-1] and problem.message.startswith("2 ")


def test_empty_dimension(brain_nnunet: Path, copy_of) -> None:
    root = copy_of(brain_nnunet)
    images, _ = _case_files(root)
    nib.save(nib.Nifti1Image(np.zeros((24, 0, 20), np.float32), np.eye(4)), images[1])
    problem = _only(check_dataset(root), "empty dimension")
    assert problem.file == images[1]


def test_channel_count_disagrees_with_modalities(brain_msd: Path, copy_of) -> None:
    root = copy_of(brain_msd)
    images, _ = _case_files(root, 2)
    _rewrite(images[0], lambda a: a[..., :3])
    problem = _only(check_dataset(root), "channel(s) but dataset.json declares 4")
    assert problem.file == images[0] and problem.case == "brain_002"


def test_every_problem_is_reported_at_once(brain_msd: Path, copy_of) -> None:
    root = copy_of(brain_msd)
    before = check_dataset(root)
    images0, label0 = _case_files(root, 0)
    images1, label1 = _case_files(root, 1)
    label0.unlink()
    _rewrite(label1, lambda a: a.astype(np.float32) + 0.25)
    _rewrite(images1[0], lambda a: a[..., :2])
    test_image = open_dataset(root).test_images[0].images[0]
    test_image.write_bytes(test_image.read_bytes()[:100])
    problems = check_dataset(root)
    assert check_dataset(root, workers=2) == problems
    assert before == [] and len(problems) == 4
    assert {p.case for p in problems} == {"brain_000", "brain_001", "brain_004"}
    assert all(str(p.file) in str(p) for p in problems)


def test_checking_writes_nothing(brain, copy_of) -> None:
    root = copy_of(brain)
    before = tree_digest(root)
    check_dataset(root)
    open_dataset(root)
    assert tree_digest(root) == before


def test_nnunet_explicit_case_list(brain_nnunet: Path, copy_of) -> None:
    root = copy_of(brain_nnunet)

    def listing(meta: dict) -> None:
        meta["dataset"] = {
            "brain_001": {
                "images": [f"./imagesTr/brain_001_{c:04d}.nii.gz" for c in range(4)],
                "label": "./labelsTr/brain_001.nii.gz",
            }
        }

    _edit_json(root, listing)
    dataset = open_dataset(root)
    assert [c.id for c in dataset.cases] == ["brain_001"] and check_dataset(root) == []
    _edit_json(root, lambda m: m.update(dataset={"brain_001": {"images": "x"}}))
    with pytest.raises(DataError, match=r"dataset\['brain_001'\] needs a list 'images'"):
        open_dataset(root)


def test_every_defect_of_a_label_is_reported(brain, copy_of) -> None:
    root = copy_of(brain)
    _, label = _case_files(root)

    def spoil(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32)
        a[1, 1, 1] = 0.5  # not a whole number
        a[2, 2, 2] = 9  # not declared
        return a

    _rewrite(label, spoil)
    problems = [p for p in check_dataset(root) if p.file == label]
    assert len(problems) == 2, problems
    assert "non-integer" in problems[0].message and "[0.5]" in problems[0].message
    assert "label values [9] are not declared" in problems[1].message


def test_a_dangling_symlink_is_named_as_such(brain_msd: Path, copy_of, tmp_path: Path) -> None:
    root = copy_of(brain_msd)
    _, label = _case_files(root, 2)
    label.unlink()
    label.symlink_to(tmp_path / "elsewhere.nii.gz")
    problem = _only(check_dataset(root), "dangling symbolic link")
    assert problem.file == label and "elsewhere.nii.gz" in problem.message and "missing" not in problem.message


def test_a_file_without_orientation_is_reported(brain_msd: Path, copy_of) -> None:
    root = copy_of(brain_msd)
    images, label = _case_files(root, 1)
    for path in (images[0], label):
        img = nib.load(path)
        header = img.header.copy()
        header.set_qform(None, code=0)
        header.set_sform(None, code=0)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, header), path)
    problems = [p for p in check_dataset(root) if "no orientation" in p.message]
    assert [p.file for p in problems] == [images[0], label]
