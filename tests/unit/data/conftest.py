"""Small generated data sets shared by the data tests (read-only: tests that break one copy it first)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from scnas_dsl.data.synth import synthesize

SHAPE = (24, 24, 20)


@pytest.fixture(scope="session")
def brain_msd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(
        tmp_path_factory.mktemp("synth") / "brain_msd",
        task="brain",
        cases=4,
        shape=SHAPE,
        seed=3,
        test_cases=1,
    )


@pytest.fixture(scope="session")
def brain_nnunet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(
        tmp_path_factory.mktemp("synth") / "brain_nnunet",
        task="brain",
        cases=4,
        shape=SHAPE,
        seed=3,
        layout="nnunet",
        test_cases=1,
    )


@pytest.fixture(scope="session")
def lung_msd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(
        tmp_path_factory.mktemp("synth") / "lung_msd", task="lung", cases=3, shape=SHAPE, seed=4
    )


@pytest.fixture(params=["msd", "nnunet"])
def brain(request: pytest.FixtureRequest, brain_msd: Path, brain_nnunet: Path) -> Path:
    """Both layouts of the same generated brain data set."""
    return brain_msd if request.param == "msd" else brain_nnunet


@pytest.fixture
def copy_of(tmp_path: Path):
    """Copy a shared data set into this test's tmp_path, to break it there."""

    def copy(source: Path) -> Path:
        return Path(shutil.copytree(source, tmp_path / source.name))

    return copy


def tree_digest(folder: Path) -> str:
    """Hash of every file's path, content and mtime under ``folder`` (to prove nothing was written)."""
    digest = hashlib.sha1()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
            digest.update(str(path.stat().st_mtime_ns).encode())
    return digest.hexdigest()
