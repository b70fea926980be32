"""Every field of a NIfTI header that geometry and data depend on, mutated at random in the stored bytes
(hypothesis): ``scnas data check`` and preprocessing either accept the image or name the file with a message,
never a traceback, and the cache never holds a non-finite voxel (issue 21, section 6)."""

from __future__ import annotations

import gzip
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scnas_dsl.data.dataset import check_dataset, open_dataset
from scnas_dsl.data.preprocess import preprocess_dataset
from scnas_dsl.data.synth import synthesize
from scnas_dsl.errors import ScnasError

#: NIfTI-1 header fields: (byte offset, struct format, count)
FIELDS = {
    "dim": (40, "h", 8), "datatype": (70, "h", 1), "bitpix": (72, "h", 1), "pixdim": (76, "f", 8),
    "vox_offset": (108, "f", 1), "scl_slope": (112, "f", 1), "scl_inter": (116, "f", 1),
    "qform_code": (252, "h", 1), "sform_code": (254, "h", 1), "quatern": (256, "f", 6), "srow": (280, "f", 12),
}
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.sampled_from([0.0, -1.0, 1e-30, 1e30])
SHORTS = st.integers(-32768, 32767) | st.sampled_from([0, 1, 2, 3, 4, -1, 16, 20])


@pytest.fixture(scope="module")
def heart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("hdr") / "heart", "heart", cases=3, shape=(16, 16, 16), seed=4)


def _mutate(path: Path, field: str, index: int, value: float) -> None:
    offset, fmt, count = FIELDS[field]
    raw = bytearray(gzip.decompress(path.read_bytes()))
    endian = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    at = offset + struct.calcsize(fmt) * (index % count)
    raw[at:at + struct.calcsize(fmt)] = struct.pack(endian + fmt, value)
    path.write_bytes(gzip.compress(bytes(raw)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(sorted(FIELDS)), index=st.integers(0, 11), which=st.sampled_from(["image", "label"]),
       data=st.data())
def test_a_mutated_header_field_is_accepted_or_named(heart: Path, field: str, index: int, which: str,
                                                     data: st.DataObject) -> None:
    value = data.draw(SHORTS if FIELDS[field][1] == "h" else FLOATS)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(shutil.copytree(heart, Path(folder) / "heart"))
        case = open_dataset(root).cases[0]
        target = case.images[0] if which == "image" else case.label
        assert target is not None
        _mutate(target, field, index, value)
        problems = [p for p in check_dataset(root) if p.file == target or p.case == case.id]
        for problem in problems:
            assert problem.file is not None and problem.message, problem
        try:
            pre = preprocess_dataset(root, out=Path(folder) / "pre", spacing=None, progress=False)
        except ScnasError as err:
            assert target.name in str(err) or case.id in str(err), str(err)
        else:
            image, label = pre.load(case.id, mmap=False)
            assert np.isfinite(np.asarray(image)).all()
            assert set(np.unique(np.asarray(label)).tolist()) <= set(open_dataset(root).labels)
