"""Helpers the tests share (one copy each): running ``scnas`` in this process or in a new one, and the small
generated data sets and search space the tests train on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

#: ``scnas search`` / ``train`` options of the integration tests' tiny runs (width 4, patch 16^3, two steps)
TINY = ["--stem-width", "4", "--patch", "16", "16", "16", "--batch-size", "2", "--batches-per-epoch", "2",
        "--device", "cpu", "--quiet", "--no-augment"]


def invoke(*args: object) -> tuple[int, str]:
    """Run ``scnas ARGS`` in this process: (exit status, output). An exception other than the command's exit (a
    traceback a user would see) fails the test with that exception."""
    from scnas_dsl.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200", "NO_COLOR": "1"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def scnas_process(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None,
                  timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m scnas_dsl ARGS`` in a new process (as a user's shell would), with ``env`` added to this
    process's environment: the completed process, output captured as text."""
    return subprocess.run([sys.executable, "-m", "scnas_dsl", *(str(a) for a in args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


def generated_set(root: Path, task: str = "heart", *, cases: int = 5, size: int = 24, seed: int = 0,
                  spacing: tuple[float, float, float] | None = None, **synth: object) -> tuple[Path, Path]:
    """A generated data set of ``cases`` cases of ``size``^3 voxels in ``root/data`` (MSD layout unless
    ``layout=...``), preprocessed into ``root/pre`` at ``spacing`` (None: its own voxel size): (the data set
    folder, the preprocessed folder)."""
    from scnas_dsl.data.preprocess import preprocess_dataset
    from scnas_dsl.data.synth import synthesize

    raw = synthesize(root / "data", task, cases=cases, shape=(size,) * 3, seed=seed, **synth)  # type: ignore[arg-type]
    return raw, preprocess_dataset(raw, out=root / "pre", spacing=spacing, progress=False).root


def heart_cases(root: Path, spacing: tuple[float, float, float] | None = None) -> tuple[Path, Path]:
    """Five generated heart-like cases of 24^3 voxels (seed 0): the set most integration tests train on."""
    return generated_set(root, "heart", spacing=spacing)


def tiny_space(folder: Path) -> Path:
    """``folder/tiny.scn``: a one-level search space of five operations, stem width 4, for fast searches."""
    from scnas_dsl.studies.demo import small_space

    spec = folder / "tiny.scn"
    spec.write_text(small_space("tiny", levels=1, ops=("conv3", "dil2", "maxpool", "skip", "none"), stem_width=4))
    return spec
