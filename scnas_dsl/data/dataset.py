"""Reading and checking a data set in the Medical Segmentation Decathlon layout or nnU-Net v2's.

A data set is a folder with ``dataset.json``, ``imagesTr/``, ``labelsTr/`` and optionally ``imagesTs/``.

* MSD layout: ``modality`` ({"0": "FLAIR", ...}), ``labels`` ({"0": "background", ...}), ``training`` (a list
  of {"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}), ``test`` (a list of paths);
  multi-channel images are one 4D NIfTI with the channels on the last axis.
* nnU-Net v2 layout: ``channel_names`` ({"0": "T2", ...}), ``labels`` ({"background": 0, ...}),
  ``file_ending``; one file per channel, ``imagesTr/<case>_0000<file_ending>``, label ``labelsTr/<case><ending>``.

Nothing here writes anything.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import nibabel as nib
import numpy as np

from scnas_dsl.data.names import NIFTI_ENDINGS, strip_channel_suffix, strip_nifti_ending
from scnas_dsl.errors import DataError

#: Two affines (or spacings) agree when every entry differs by less than this (mm), as in nnU-Net's checks.
AFFINE_TOLERANCE = 1e-3

Layout = Literal["msd", "nnunet"]


@dataclass(frozen=True)
class Case:
    """One case: ``images`` is one 4D file (MSD) or one 3D file per channel (nnU-Net); ``label`` may be None."""

    id: str
    images: list[Path]
    label: Path | None = None


@dataclass(frozen=True)
class Problem:
    """One problem found by :func:`check_dataset`: which case (None for the data set), which file, what."""

    case: str | None
    file: Path | None
    message: str

    def __str__(self) -> str:
        where = str(self.file) if self.file is not None else "dataset"
        case = f" [case {self.case}]" if self.case else ""
        return f"{where}{case}: {self.message}"


@dataclass(frozen=True)
class Dataset:
    """A data set as declared by its ``dataset.json``."""

    root: Path
    name: str
    layout: Layout
    modalities: list[str]
    labels: dict[int, str]
    cases: list[Case]
    test_images: list[Case] = field(default_factory=list)
    file_ending: str = ".nii.gz"

    @property
    def is_ct(self) -> bool:
        """True when the (single or any) channel is declared as CT: then CT normalisation is used."""
        return any(m.strip().upper() == "CT" for m in self.modalities)

    @property
    def num_classes(self) -> int:
        """Number of classes including background (labels are 0..K-1)."""
        return max(self.labels) + 1

    def case(self, case_id: str) -> Case:
        """The training case named ``case_id`` (DataError if there is none)."""
        for case in self.cases:
            if case.id == case_id:
                return case
        raise DataError(f"{self.root}: no training case {case_id!r}")



def intensity_problem(data: np.ndarray) -> str | None:
    """The one rule for image intensities, applied by ``scnas data check`` and by preprocessing alike: scnas
    computes in float32, so every value must be finite there (a float64 image beyond float32's range, about
    3.4e38, becomes infinite). None when the image is fine; else what is wrong, with the value range."""
    if not np.issubdtype(data.dtype, np.floating):
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        as32 = np.asarray(data, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(as32)))
    if not bad:
        return None
    finite = data[np.isfinite(data)]
    span = f"; the finite values run from {finite.min():.3g} to {finite.max():.3g}" if finite.size else ""
    return (f"{bad} NaN or infinite intensities in float32 (scnas computes in float32, whose largest value is "
            f"about 3.4e38){span}; fix or rescale the image")

def open_dataset(root: Path | str) -> Dataset:
    """Read ``root/dataset.json`` in either layout.

    Raises DataError naming the file when the folder or its ``dataset.json`` is missing or malformed, or when a
    path in it points outside the data set folder (refused: scnas reads only inside the folder it was given).
    Files are not opened here; :func:`check_dataset` does that.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DataError(f"{root}: no such data set folder")
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DataError(
            f"{meta_path}: missing; a data set folder needs dataset.json (MSD or nnU-Net v2 layout)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{meta_path}: cannot be read ({err})") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{meta_path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg})") from err
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object at the top level")
    if "channel_names" in meta:
        return _open_nnunet(root, meta_path, meta)
    if "modality" in meta:
        return _open_msd(root, meta_path, meta)
    raise DataError(
        f"{meta_path}: neither 'modality' (MSD layout) nor 'channel_names' (nnU-Net v2 layout) is declared; "
        "add the one that matches your files"
    )


def _channel_names(meta_path: Path, value: Any, key: str) -> list[str]:
    if not isinstance(value, dict) or not value:
        raise DataError(f'{meta_path}: \'{key}\' must be a non-empty object like {{"0": "T1"}}')
    try:
        indexed = sorted((int(k), str(v)) for k, v in value.items())
    except ValueError as err:
        raise DataError(f"{meta_path}: the keys of '{key}' must be channel numbers 0, 1, ...") from err
    if [i for i, _ in indexed] != list(range(len(indexed))):
        raise DataError(f"{meta_path}: the keys of '{key}' must be 0, 1, ... without gaps")
    return [name for _, name in indexed]


def _check_labels(meta_path: Path, labels: dict[int, str]) -> dict[int, str]:
    if 0 not in labels:
        raise DataError(f"{meta_path}: 'labels' must declare 0 (background)")
    if sorted(labels) != list(range(len(labels))):
        raise DataError(f"{meta_path}: label values must be 0, 1, ... without gaps (got {sorted(labels)})")
    return dict(sorted(labels.items()))


def _inside(root: Path, meta_path: Path, value: Any, what: str, escaping: list[str]) -> Path:
    """``value`` as a path inside ``root``; records it in ``escaping`` if it points elsewhere."""
    if not isinstance(value, str) or not value:
        raise DataError(f"{meta_path}: {what} must be a path string (got {value!r})")
    # Judged on the written path (no symlink resolution): an absolute path or '..' leaving the folder is
    # refused, while a symlink the user placed inside the folder is their choice.
    if os.path.isabs(value):
        escaping.append(value)
        return Path(value)
    joined = Path(os.path.normpath(root / value))
    if joined != root and root not in joined.parents:
        escaping.append(value)
    return joined


def _open_msd(root: Path, meta_path: Path, meta: dict[str, Any]) -> Dataset:
    modalities = _channel_names(meta_path, meta.get("modality"), "modality")
    raw_labels = meta.get("labels")
    if not isinstance(raw_labels, dict):
        raise DataError(
            f'{meta_path}: \'labels\' must be an object like {{"0": "background", "1": "tumour"}}'
        )
    try:
        labels = {int(k): str(v) for k, v in raw_labels.items()}
    except ValueError as err:
        raise DataError(
            f"{meta_path}: MSD 'labels' keys must be label values ('0', '1', ...); "
            "nnU-Net v2 files use names as keys and need 'channel_names' instead of 'modality'"
        ) from err
    labels = _check_labels(meta_path, labels)
    training = meta.get("training")
    if not isinstance(training, list):
        raise DataError(f'{meta_path}: \'training\' must be a list of {{"image": ..., "label": ...}}')
    escaping: list[str] = []
    cases: list[Case] = []
    seen: set[str] = set()
    for n, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry:
            raise DataError(f"{meta_path}: training entry {n} must be an object with 'image' and 'label'")
        image = _inside(root, meta_path, entry["image"], f"training[{n}].image", escaping)
        label = (
            _inside(root, meta_path, entry["label"], f"training[{n}].label", escaping)
            if entry.get("label")
            else None
        )
        case_id = _strip_ending(image.name)
        if case_id in seen:
            raise DataError(f"{meta_path}: case {case_id!r} is listed twice in 'training'")
        seen.add(case_id)
        cases.append(Case(case_id, [image], label))
    test: list[Case] = []
    for n, entry in enumerate(meta.get("test") or []):
        value = entry.get("image") if isinstance(entry, dict) else entry
        image = _inside(root, meta_path, value, f"test[{n}]", escaping)
        test.append(Case(_strip_ending(image.name), [image], None))
    _refuse_escaping(meta_path, escaping)
    name = str(meta.get("name") or root.name)
    return Dataset(root, name, "msd", modalities, labels, cases, test, ".nii.gz")


def _refuse_escaping(meta_path: Path, escaping: list[str]) -> None:
    if escaping:
        listed = ", ".join(repr(p) for p in escaping[:5]) + (" ..." if len(escaping) > 5 else "")
        raise DataError(
            f"{meta_path}: {len(escaping)} path(s) point outside the data set folder ({listed}); refused. "
            "Copy or link the files into the folder and use relative paths such as ./imagesTr/case.nii.gz"
        )


def _strip_ending(name: str) -> str:
    stem = strip_nifti_ending(name)
    return name.split(".", 1)[0] if stem is None else stem


def _open_nnunet(root: Path, meta_path: Path, meta: dict[str, Any]) -> Dataset:
    modalities = _channel_names(meta_path, meta.get("channel_names"), "channel_names")
    raw_labels = meta.get("labels")
    if not isinstance(raw_labels, dict):
        raise DataError(f'{meta_path}: \'labels\' must be an object like {{"background": 0, "tumour": 1}}')
    labels: dict[int, str] = {}
    for name, value in raw_labels.items():
        if isinstance(value, list | tuple):
            raise DataError(
                f"{meta_path}: label {name!r} is a region ({value}); region-based training is not supported, "
                "declare one value per label"
            )
        if not isinstance(value, int) or isinstance(value, bool):
            raise DataError(f"{meta_path}: label {name!r} must map to an integer value (got {value!r})")
        labels[value] = str(name)
    labels = _check_labels(meta_path, labels)
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in NIFTI_ENDINGS:
        raise DataError(f"{meta_path}: file_ending {ending!r} is not supported; use .nii.gz or .nii (NIfTI)")
    escaping: list[str] = []
    if "dataset" in meta:
        # nnU-Net v2 may list the cases explicitly instead of relying on the folder's file names.
        cases = []
        listed = meta["dataset"]
        if not isinstance(listed, dict):
            raise DataError(
                f'{meta_path}: \'dataset\' must be an object {{case: {{"images": [...], "label": ...}}}}'
            )
        for case_id, entry in sorted(listed.items()):
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("images"), list)
                or "label" not in entry
            ):
                raise DataError(f"{meta_path}: dataset[{case_id!r}] needs a list 'images' and a 'label'")
            images = [
                _inside(root, meta_path, p, f"dataset[{case_id}].images", escaping) for p in entry["images"]
            ]
            label = _inside(root, meta_path, entry["label"], f"dataset[{case_id}].label", escaping)
            cases.append(Case(case_id, images, label))
        _refuse_escaping(meta_path, escaping)
    else:
        cases = _cases_from_folder(root, "imagesTr", "labelsTr", ending, len(modalities))
    test = _cases_from_folder(root, "imagesTs", None, ending, len(modalities))
    name = str(meta.get("name") or root.name)
    return Dataset(root, name, "nnunet", modalities, labels, cases, test, ending)


def _cases_from_folder(
    root: Path, images_dir: str, labels_dir: str | None, ending: str, channels: int
) -> list[Case]:
    """Cases named by the files in ``images_dir`` (``<case>_XXXX<ending>``) and ``labels_dir``.

    Every case id found anywhere is kept with the paths it *should* have, so that missing files are reported
    by the checker rather than the case silently vanishing.
    """
    ids: set[str] = set()
    folder = root / images_dir
    if folder.is_dir():
        for path in folder.iterdir():
            name = path.name
            # '._x' files are macOS resource forks, found in the MSD archives.
            if name.startswith(".") or not name.endswith(ending):
                continue
            case_id = strip_channel_suffix(name[: -len(ending)])
            if case_id is not None:
                ids.add(case_id)
    if labels_dir is not None and (root / labels_dir).is_dir():
        for path in (root / labels_dir).iterdir():
            if not path.name.startswith(".") and path.name.endswith(ending):
                ids.add(path.name[: -len(ending)])
    return [
        Case(
            case_id,
            [folder / f"{case_id}_{c:04d}{ending}" for c in range(channels)],
            (root / labels_dir / f"{case_id}{ending}") if labels_dir else None,
        )
        for case_id in sorted(ids)
    ]


# ---------------------------------------------------------------------------------------------- checking


def load_header(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI file lazily (header now, data on access); DataError naming the file when its header cannot
    be read (nibabel raises many kinds for bad files: an unknown data type code, a broken dim, ...)."""
    try:
        return cast(nib.Nifti1Image, nib.load(str(path)))
    except Exception as err:  # noqa: BLE001 - ImageFileError, HeaderDataError, ValueError, OSError, ...
        raise DataError(f"{path}: {_unreadable(err)}; run `scnas data check`") from err


def _unreadable(err: BaseException) -> str:
    """Why nibabel could not read a file, in words (without the path)."""
    if isinstance(err, (EOFError, zlib.error, gzip.BadGzipFile)):
        return f"truncated or corrupt gzip stream ({err}); copy the file again"
    return f"cannot be read as NIfTI ({type(err).__name__}: {err})"


def missing_file_message(path: Path) -> str | None:
    """Why ``path`` is not a readable file (without the path), or None when it is one.

    A symbolic link whose target does not exist is named as such (with its target), not as a missing file.
    """
    if path.is_file():
        return None
    if path.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"dangling symbolic link (its target {target} does not exist); fix or replace the link"
    if path.exists():
        return "not a file"
    return "file is missing"


def orientation_problem(img: nib.Nifti1Image) -> str | None:
    """A message when a NIfTI image's geometry is unusable: no orientation (``qform_code`` and ``sform_code`` both
    0), a zero voxel size in the header where the qform gives the geometry (pixdim, which nibabel would read as
    1 mm), or a singular affine (a zero-length axis, two axes along one direction). ``scnas data check``,
    preprocessing, training and prediction all apply it (one rule)."""
    header = img.header
    if not isinstance(header, nib.Nifti1Header):  # Nifti2Header derives from it; other formats: no codes
        return None
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        return (
            "no orientation (qform_code and sform_code are both 0), so where the voxels lie is unknown; "
            "set the image's qform or sform (for example with nibabel: img.set_sform(affine, code=1))"
        )
    if int(header["sform_code"]) == 0:  # the geometry is the qform's, whose voxel size is pixdim
        stored = _stored_voxel_size(img)
        if stored is not None and (not np.isfinite(stored).all() or (stored == 0).any()):
            return (f"voxel size {stored.tolist()} mm in the header (pixdim), which nibabel silently reads as 1 mm "
                    "along a zero axis; set the voxel size (pixdim) or an sform with the real spacing")
    linear = np.asarray(img.affine, dtype=np.float64)[:3, :3]
    lengths = np.sqrt((linear**2).sum(0))
    if not np.isfinite(linear).all() or lengths.min() <= 1e-6 * max(lengths.max(), 1e-12) or \
            abs(np.linalg.det(linear)) <= 1e-9 * float(np.prod(lengths)):
        return (f"a singular affine (axis lengths {lengths.round(4).tolist()} mm, or two axes along one direction), "
                "so the voxel grid has no orientation; fix the image's qform or sform")
    return None


def _stored_voxel_size(img: nib.Nifti1Image) -> np.ndarray | None:
    """The voxel size (pixdim 1-3) as the file stores it: nibabel's loading replaces a zero by 1 (with only a log
    message), so the header is read again from the file, unchecked. None for an image not read from a file."""
    from nibabel.openers import ImageOpener

    path = img.get_filename()
    if not path:
        return None
    try:
        with ImageOpener(path) as f:
            raw = type(img.header).from_fileobj(f, check=False)
    except Exception:  # noqa: BLE001 - the header was read once already; the caller's rules still apply
        return None
    return np.asarray(raw["pixdim"][1:4], dtype=np.float64)


def affine_mismatch(affine: np.ndarray, ref_affine: np.ndarray, ref_path: Path) -> str | None:
    """A message when ``affine`` differs from ``ref_affine`` (of ``ref_path``) by more than the tolerance."""
    if np.allclose(affine, ref_affine, rtol=0.0, atol=AFFINE_TOLERANCE):
        return None
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(0)).round(4).tolist()
    ref_spacing = np.sqrt((ref_affine[:3, :3] ** 2).sum(0)).round(4).tolist()
    return (
        f"affine differs from that of {ref_path} by more than {AFFINE_TOLERANCE} mm "
        f"(spacing {spacing} vs {ref_spacing}, origin {affine[:3, 3].round(3).tolist()} vs "
        f"{ref_affine[:3, 3].round(3).tolist()})"
    )


def _read_nifti(path: Path) -> tuple[np.ndarray, nib.Nifti1Image] | str:
    """The data and image of ``path``, or a message (without the path) saying why it cannot be read."""
    missing = missing_file_message(path)
    if missing is not None:
        return missing
    try:
        img = cast(nib.Nifti1Image, nib.load(str(path)))
        if 0 in img.shape:
            return f"image has an empty dimension (shape {img.shape})"
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many kinds (ImageFileError, ValueError, OSError) for bad files
        return _unreadable(err)
    return data, img


def load_nifti(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Load a NIfTI file fully (data as stored); DataError naming the file on any read problem.

    Reading the whole array is what detects truncated or corrupt gzip streams.
    """
    result = _read_nifti(path)
    if isinstance(result, str):
        raise DataError(f"{path}: {result}")
    return result


def check_case(dataset: Dataset, case: Case, labelled: bool = True) -> list[Problem]:
    """Every problem of one case (see :func:`check_dataset`)."""
    problems: list[Problem] = []

    def add(path: Path | None, message: str) -> None:
        problems.append(Problem(case.id, path, message))

    channels = len(dataset.modalities)
    geometries: list[tuple[Path, tuple[int, ...], np.ndarray]] = []
    found_channels = 0
    for path in case.images:
        read = _read_nifti(path)
        if isinstance(read, str):
            add(path, read)
            continue
        data, img = read
        if data.ndim not in (3, 4) or (data.ndim == 4 and dataset.layout == "nnunet" and data.shape[3] != 1):
            add(
                path,
                f"image has {data.ndim} dimensions {data.shape}; expected a 3D volume per channel"
                if dataset.layout == "nnunet"
                else f"image has shape {data.shape}; expected 3D or 4D",
            )
            continue
        if 0 in data.shape:
            add(path, f"image has an empty dimension (shape {data.shape})")
            continue
        found_channels += data.shape[3] if data.ndim == 4 else 1
        if not np.issubdtype(data.dtype, np.number):
            add(path, f"image data type {data.dtype} is not numeric")
            continue
        problem = intensity_problem(data)
        if problem is not None:
            add(path, problem)
        unoriented = orientation_problem(img)
        if unoriented is not None:
            add(path, unoriented)
        geometries.append((path, tuple(data.shape[:3]), np.asarray(img.affine, dtype=np.float64)))
    if len(geometries) == len(case.images) and found_channels != channels:
        add(
            case.images[0],
            f"{found_channels} channel(s) but dataset.json declares {channels} "
            f"({', '.join(dataset.modalities)})",
        )

    if labelled:
        if case.label is None:
            add(None, "no label declared for this training case")
        else:
            read = _read_nifti(case.label)
            if isinstance(read, str):
                add(case.label, read)
            else:
                label, img = read
                if label.ndim == 4 and label.shape[3] == 1:
                    label = label[..., 0]
                # every defect of the label file is reported, not only the first one
                if label.ndim != 3:
                    add(case.label, f"label has shape {label.shape}; expected a 3D volume")
                elif 0 in label.shape:
                    add(case.label, f"label has an empty dimension (shape {label.shape})")
                if label.size:
                    problems.extend(_check_label_values(dataset, case, label))
                unoriented = orientation_problem(img)
                if unoriented is not None:
                    add(case.label, unoriented)
                if label.ndim == 3 and 0 not in label.shape:
                    geometries.append(
                        (case.label, tuple(label.shape), np.asarray(img.affine, dtype=np.float64))
                    )
    if geometries:
        ref_path, ref_shape, ref_affine = geometries[0]
        for path, shape, affine in geometries[1:]:
            if shape != ref_shape:
                add(path, f"shape {list(shape)} differs from {list(ref_shape)} of {ref_path}")
            else:
                mismatch = affine_mismatch(affine, ref_affine, ref_path)
                if mismatch is not None:
                    add(path, mismatch)
    return problems


def _check_label_values(dataset: Dataset, case: Case, label: np.ndarray) -> list[Problem]:
    problems = []
    if not np.issubdtype(label.dtype, np.number) or np.issubdtype(label.dtype, np.complexfloating):
        return [Problem(case.id, case.label, f"label data type {label.dtype} is not a real number type")]
    if np.issubdtype(label.dtype, np.floating):
        finite = np.isfinite(label)
        if not finite.all():
            problems.append(
                Problem(case.id, case.label, f"{int((~finite).sum())} NaN or infinite label values")
            )
            label = np.where(finite, label, 0)
        fractional = label != np.round(label)
        if fractional.any():
            examples = np.unique(label[fractional])[:3].tolist()
            problems.append(
                Problem(
                    case.id,
                    case.label,
                    f"non-integer label values (e.g. {examples}); labels must be whole numbers",
                )
            )
            label = label[~fractional]  # the whole values are still checked below
    values = [int(v) if abs(v) < 2**62 else v for v in np.unique(label).tolist()]  # 1e30 is named as 1e30
    undeclared = [v for v in values if v not in dataset.labels]
    if undeclared:
        problems.append(
            Problem(
                case.id,
                case.label,
                f"label values {undeclared} are not declared in "
                f"dataset.json (declared: {sorted(dataset.labels)})",
            )
        )
    return problems


def check_dataset(root: Path | str, workers: int = 1) -> list[Problem]:
    """Check every case of the data set at ``root``; return every problem found (empty: all is well).

    Reports, naming case and file: a bad ``dataset.json`` or paths escaping the folder; missing or unreadable
    files (dangling symbolic links named as such), truncated or corrupt gzip; empty dimensions; NaN/inf
    intensities; a channel count that disagrees with the declared modalities; image and label shapes that
    differ; affines differing by more than :data:`AFFINE_TOLERANCE` (the other file named by its path); files
    without orientation; undeclared and non-integer label values (every defect of a label). Reads only; ``workers > 1`` reads cases
    in that many spawned processes (problems come back in case order all the same).
    """
    try:
        dataset = open_dataset(root)
    except DataError as err:
        return [Problem(None, None, str(err))]
    problems: list[Problem] = []
    if not dataset.cases:
        problems.append(Problem(None, dataset.root / "dataset.json", "no training cases found"))
    jobs = [(case, True) for case in dataset.cases] + [(case, False) for case in dataset.test_images]
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            found = pool.map(check_case, [dataset] * len(jobs), *zip(*jobs, strict=True))
            for case_problems in found:
                problems.extend(case_problems)
    else:
        for case, labelled in jobs:
            problems.extend(check_case(dataset, case, labelled=labelled))
    return problems
