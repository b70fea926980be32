"""The preprocessed data's cache: its folders and keys, the lock, the manifest and the reader (:class:`Preprocessed`).

Results are ``.npy`` files (memory-mappable) in a cache folder, never inside the data set folder: by default
``$SCNAS_CACHE/<name>-<hash of the data set's absolute path>/<setting>`` (one folder per spacing request) with
``SCNAS_CACHE`` defaulting to ``~/.cache/scnas``; a folder given as ``out`` is bound to the spacing of its
first run. A case is redone when the size, modification time or path of one of its files changes or when a
setting changes (normalisation statistics, labels, pipeline version); otherwise it is reused. A run holds the
folder's file lock while it writes; every file is written to a temporary name and renamed into place; on load
every case is checked against the manifest. ``scnas_dsl/data/preprocess.py`` runs a data set into the cache.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import nibabel as nib
import numpy as np
from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field

from scnas_dsl.data.dataset import Case, Dataset, missing_file_message
from scnas_dsl.data.files import read_json_or_none, write_json
from scnas_dsl.errors import DataError

#: The paper's target spacing (mm), the default setting.
PAPER_SPACING = (0.7, 0.7, 0.7)
MANIFEST = "preprocessed.json"

#: the files of a cache folder: the cache owns their names (``case_file``, ``fingerprint_file``)
CASES, FINGERPRINTS = "cases", "fingerprint"
#: one preprocessed case's files in ``cases/``: the image and label arrays, the sampled foreground locations,
#: and its record (written last: the case's commit marker)
CASE_PARTS = {"image": ".image.npy", "label": ".label.npy", "locations": ".locations.npz", "record": ".json"}


def case_file(root: Path, case_id: str, part: str) -> Path:
    """The file of ``part`` (a key of :data:`CASE_PARTS`) of case ``case_id`` in the cache folder ``root``."""
    return root / CASES / f"{case_id}{CASE_PARTS[part]}"


def fingerprint_file(root: Path, case_id: str | None = None) -> Path:
    """The fingerprints' file: ``cases.json`` (every case's, ``case_id`` None), or ``<case>.samples.npy`` (a CT
    case's sampled intensities)."""
    return root / FINGERPRINTS / ("cases.json" if case_id is None else f"{case_id}.samples.npy")
#: Marks a folder made by scnas; holds the settings request the folder is bound to (see claim_folder).
_MARKER = ".scnas-cache"
#: Held (filelock) while a cache folder is written.
_LOCK = ".scnas-lock"


class CaseMeta(BaseModel):
    """Everything needed to bring a prediction on the preprocessed grid back to the original image."""

    model_config = ConfigDict(frozen=True)
    case_id: str
    original_shape: tuple[int, int, int]
    original_affine: list[list[float]]
    header_b64: str
    orientation: list[list[float]]
    canonical_shape: tuple[int, int, int]
    crop_box: list[tuple[int, int]]
    original_spacing: tuple[float, float, float]
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]

    def affine(self) -> np.ndarray:
        """The original image's 4x4 affine."""
        return np.asarray(self.original_affine, dtype=np.float64)

    def header(self) -> nib.Nifti1Header:
        """A copy of the original image's NIfTI header."""
        return nib.Nifti1Header(base64.b64decode(self.header_b64))

    @property
    def cropped_shape(self) -> tuple[int, int, int]:
        """Shape of the crop box (canonical orientation, original spacing)."""
        return tuple(b - a for a, b in self.crop_box)  # type: ignore[return-value]


class Normalization(BaseModel):
    """How intensities are normalised: per-case z-score over the non-zero region (MRI) or CT statistics."""

    model_config = ConfigDict(frozen=True)
    scheme: Literal["zscore_nonzero", "ct"]
    #: CT only, one entry per channel: foreground mean, std, 0.5 and 99.5 percentiles of the training cases.
    mean: list[float] = []
    std: list[float] = []
    lower: list[float] = []
    upper: list[float] = []


class DatasetInfo(BaseModel):
    """What the preprocessed data keeps of its data set."""

    model_config = ConfigDict(frozen=True)
    name: str
    layout: Literal["msd", "nnunet"]
    modalities: list[str]
    labels: dict[int, str]
    is_ct: bool
    source_root: str

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1


Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Manifest(BaseModel):
    """``preprocessed.json`` as :class:`Preprocessed` reads it (one typed reader; a bad field is named)."""

    model_config = ConfigDict(extra="allow")
    dataset: DatasetInfo
    normalization: Normalization
    spacing: tuple[Positive, Positive, Positive]
    case_ids: list[str]
    settings_key: str
    cases: dict[str, dict[str, Any]]


class Preprocessed:
    """A preprocessed data set on disk (made by :func:`scnas_dsl.data.preprocess.preprocess_dataset`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        manifest_path = self.root / MANIFEST
        try:
            manifest = _Manifest.model_validate(json.loads(manifest_path.read_text()))
            if set(manifest.case_ids) - set(manifest.cases):
                raise ValueError(f"case_ids without a record: {sorted(set(manifest.case_ids) - set(manifest.cases))[:3]}")
            self.dataset = manifest.dataset
            self.normalization = manifest.normalization
            self.spacing: tuple[float, float, float] = manifest.spacing
            self.case_ids: list[str] = list(manifest.case_ids)
            self.settings_key: str = manifest.settings_key
            self._summaries: dict[str, dict[str, Any]] = manifest.cases
        except (
            OSError,
            ValueError,
            KeyError,
            TypeError,
        ) as err:  # ValueError covers JSON and pydantic errors
            raise DataError(
                f"{manifest_path}: not a preprocessed data set ({type(err).__name__}: {err}); "
                "run `scnas data preprocess` (again) to make it"
            ) from err
        #: Case ids (re)computed by the preprocess_dataset call that returned this object.
        self.redone: list[str] = []

    def _path(self, case_id: str, suffix: str) -> Path:
        if case_id not in self._summaries:
            raise DataError(f"{self.root}: no preprocessed case {case_id!r}")
        return self.root / CASES / f"{case_id}{suffix}"

    def _mismatch(self, case_id: str, what: str) -> DataError:
        return DataError(
            f"{self.root}: case {case_id} does not match this cache's manifest {MANIFEST} ({what}). The "
            "cache was changed after the manifest was read (`scnas data preprocess` ran again after the data "
            "set's files or scnas changed) or a file is damaged. Run `scnas data preprocess "
            f"{self.dataset.source_root}` again with the same settings (and --out, if you gave one) "
            "and restart this job"
        )

    def _record(self, case_id: str) -> bytes | None:
        try:
            return self._path(case_id, CASE_PARTS["record"]).read_bytes()
        except OSError:
            return None

    def _verify(self, case_id: str) -> bytes:
        """The case's record, checked against the manifest (settings key, input files, shape)."""
        raw = self._record(case_id)
        if raw is None:
            raise self._mismatch(case_id, f"its record cases/{case_id}.json is missing")
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        expected = self._summaries[case_id]
        key = record.get("key") if isinstance(record, dict) else None
        if not isinstance(record, dict) or not isinstance(key, dict):
            raise self._mismatch(case_id, f"its record cases/{case_id}.json is not readable")
        if key.get("settings") != self.settings_key:
            raise self._mismatch(
                case_id,
                f"written with settings key {str(key.get('settings'))[:12]}, the manifest's is "
                f"{self.settings_key[:12]}",
            )
        if key != expected.get("key"):
            raise self._mismatch(case_id, "made from other versions of the case's files")
        if record.get("shape") != expected.get("shape"):
            raise self._mismatch(case_id, f"shape {record.get('shape')}, the manifest's is {expected.get('shape')}")
        return raw

    def load(self, case_id: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Image float32 (C, D, H, W) and label int (D, H, W) or None; memory-mapped read-only by default.

        The case's record must match the manifest (settings key, input files, shape) and the arrays its shape,
        before and after they are read; otherwise a DataError says what to do.
        """
        mode: Literal["r"] | None = "r" if mmap else None
        raw = self._verify(case_id)
        shape = tuple(self._summaries[case_id]["shape"])
        labelled = bool(self._summaries[case_id].get("class_voxels"))
        try:
            image = np.load(self._path(case_id, CASE_PARTS["image"]), mmap_mode=mode)
            label_path = self._path(case_id, CASE_PARTS["label"])
            label = np.load(label_path, mmap_mode=mode) if labelled or label_path.exists() else None
        except (OSError, ValueError, EOFError) as err:
            raise self._mismatch(case_id, f"{type(err).__name__}: {err}") from err
        channels = len(self.dataset.modalities)
        if image.shape != (channels, *shape):
            raise self._mismatch(case_id, f"image of shape {list(image.shape)}, expected {[channels, *shape]}")
        if label is not None and label.shape != shape:
            raise self._mismatch(case_id, f"label of shape {list(label.shape)}, expected {list(shape)}")
        if self._record(case_id) != raw:
            raise self._mismatch(case_id, "rewritten while it was being read")
        return image, label

    def meta(self, case_id: str) -> CaseMeta:
        """The case's geometry record (:class:`CaseMeta`)."""
        return CaseMeta.model_validate(self._summaries[case_id]["meta"])

    def summary(self, case_id: str) -> dict[str, Any]:
        """The case's fingerprint: shape, spacing, class voxel counts, foreground intensity statistics."""
        self._path(case_id, "")
        return dict(self._summaries[case_id])

    def foreground_locations(self, case_id: str) -> dict[int, np.ndarray]:
        """Sampled voxel coordinates (N, 3) int of every foreground class present in the case."""
        self._verify(case_id)
        with np.load(self._path(case_id, ".locations.npz")) as data:
            return {int(k): data[k] for k in data.files}



# ------------------------------------------------------------------------------- folders and keys


def cache_root(dataset: Dataset) -> Path:
    """``$SCNAS_CACHE/<name>-<8 hex digits of the data set's absolute path>`` (``~/.cache/scnas`` by default):
    the data set's folder in the cache, holding one folder per settings (:func:`default_cache_dir`)."""
    base = Path(os.environ.get("SCNAS_CACHE") or Path.home() / ".cache" / "scnas").expanduser()
    digest = hashlib.sha1(str(dataset.root.absolute()).encode()).hexdigest()[:8]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in dataset.name)
    return base / f"{safe}-{digest}"


def settings_name(spacing: Sequence[float] | None) -> str:
    """The cache folder's name for a spacing request: ``spacing-0.7x0.7x0.7`` or ``median-spacing``."""
    if spacing is None:
        return "median-spacing"
    return "spacing-" + "x".join(repr(float(s)) for s in spacing)


def default_cache_dir(dataset: Dataset, spacing: Sequence[float] | None = PAPER_SPACING) -> Path:
    """``cache_root(dataset) / settings_name(spacing)``: different settings never share a folder."""
    return cache_root(dataset) / settings_name(spacing)


def find_preprocessed(dataset: Dataset) -> list[Path]:
    """The folders of the default cache that hold preprocessed data of ``dataset`` (one per settings)."""
    root = cache_root(dataset)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / MANIFEST).is_file())


def input_key(dataset: Dataset, case: Case) -> list[list[Any]]:
    """Path (relative to the data set), size and modification time of every file of a case."""
    key = []
    for path in [*case.images, *([case.label] if case.label else [])]:
        missing = missing_file_message(path)
        try:
            st = path.stat()
        except OSError as err:
            missing = missing or f"file is unreadable ({err})"
        if missing is not None:
            raise DataError(f"{path}: case {case.id}: {missing}; run `scnas data check` to list every problem")
        key.append([str(path.relative_to(dataset.root)), st.st_size, st.st_mtime_ns])
    return key


def prepare_out(dataset: Dataset, out: Path | None, spacing: Sequence[float] | None) -> Path:
    """The folder to write (``out``, or :func:`default_cache_dir`), made; refused inside the data set folder and
    where it holds something scnas did not make."""
    out = Path(out).expanduser().absolute() if out is not None else default_cache_dir(dataset, spacing)
    root = dataset.root.absolute()
    if out == root or root in out.parents:
        raise DataError(
            f"{out}: inside the data set folder {root}; scnas never writes there. Choose another --out"
        )
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another --out")
    if out.exists() and any(p.name != _LOCK for p in out.iterdir()) and not (out / _MARKER).exists():
        raise DataError(f"{out}: exists, is not empty and was not made by scnas; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _describe(request: Any) -> str:
    spacing = request.get("spacing") if isinstance(request, dict) else None
    if spacing == "median":
        return "at the data set's median spacing (--median-spacing)"
    if isinstance(spacing, list):
        return f"at spacing {' x '.join(f'{s:g}' for s in spacing)} mm"
    return "with settings this scnas does not know"


def claim_folder(out: Path, spacing: Sequence[float] | None) -> None:
    """Bind ``out`` (under its lock) to one spacing request; refuse a folder bound to another.

    Everything else that can change (the data set's files, its labels, the CT statistics, the pipeline
    version) redoes the affected cases in place; a job reading them then refuses them on load.
    """
    request = {"spacing": list(spacing) if spacing is not None else "median"}
    previous = read_json_or_none(out / _MARKER)
    if isinstance(previous, dict) and previous and previous != request:
        raise DataError(
            f"{out}: holds data preprocessed {_describe(previous)}, not {_describe(request)}; a folder keeps "
            "one setting so that no job reading it gets cases of another. Leave out --out (the default cache "
            "has a folder per setting) or choose another --out; delete this folder only if no job uses it"
        )
    if previous != request:  # new, or made by an older scnas (empty marker)
        write_json(out / _MARKER, request)
    (out / CASES).mkdir(exist_ok=True)
    (out / FINGERPRINTS).mkdir(exist_ok=True)


def lock_folder(out: Path) -> FileLock:
    """The folder's lock, acquired: waits (saying so on stderr) while another run writes the folder."""
    from scnas_dsl.stopping import RunInterrupted, requested_signal, stop_requested

    lock = FileLock(out / _LOCK)
    try:
        lock.acquire(timeout=0.5)
    except Timeout:
        print(f"{out}: another `scnas data preprocess` is writing this folder; waiting for it", file=sys.stderr)
        while True:  # a stop signal ends the wait (within a second)
            try:
                lock.acquire(timeout=1.0)
                break
            except Timeout:
                if stop_requested():
                    raise RunInterrupted(f"{requested_signal()}: stopped while waiting for {out}; nothing "
                                         "was written") from None
    return lock
