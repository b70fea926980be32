"""Running a script under ``torchrun`` (gloo on the CPU) for the distributed tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def run_ranks(args: list[str], cwd: Path, script: str | None = None, processes: int = 2,
              timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run ``torchrun`` with ``args`` (after ``script``, written into ``cwd``, when given; else e.g.
    ``-m scnas_dsl ...``) on ``processes`` ranks; skip the test when torchrun is missing, fail it with the
    ranks' error output when they fail; their output when they succeed."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    if script is not None:
        (cwd / "rank_script.py").write_text(script)
        args = [str(cwd / "rank_script.py"), *args]
    done = subprocess.run(
        [torchrun, "--nproc_per_node", str(processes), "--standalone", *args],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=cwd, timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done
