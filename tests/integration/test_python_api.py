"""The public API: ``import scnas_dsl`` stays torch-free and exposes the entry points, and the example of
docs/python-api.md runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_exports_its_entry_points_without_importing_torch() -> None:
    code = ("import sys, scnas_dsl; assert 'torch' not in sys.modules; "
            "missing = [n for n in scnas_dsl.__all__ if n != '__version__' and not hasattr(scnas_dsl, n)]; "
            "assert not missing, missing; print(len(scnas_dsl.__all__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    import scnas_dsl

    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        scnas_dsl.nothing  # noqa: B018
    assert "create_model" in dir(scnas_dsl)


def test_create_model_gives_a_network_for_a_genotype_and_a_supernet_for_a_space() -> None:
    import scnas_dsl
    from scnas_dsl.nn import FixedNetwork, Supernet

    net = scnas_dsl.create_model(ROOT / "specs" / "genotypes" / "example.scn", in_channels=4, num_classes=3)
    assert isinstance(net, FixedNetwork) and net.in_channels == 4 and net.num_classes == 3
    supernet = scnas_dsl.create_model(ROOT / "specs" / "unet4cell.scn", stem_width=8, sampling="single", seed=3)
    assert isinstance(supernet, Supernet) and supernet.sampling == "single"
    # the space of a genotype file, by name
    space = scnas_dsl.create_model(ROOT / "specs" / "baselines" / "unet3d.scn", space="unet3d")
    assert isinstance(space, Supernet)


@pytest.mark.slow
def test_the_documented_example_runs_as_written(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "python-api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    (tmp_path / "example.py").write_text(blocks[0], encoding="utf-8")
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Supernet" in done.stdout and "self-check: the chosen genotype ranks" in done.stdout
    assert re.search(r"mean foreground Dice \d\.\d{3} over 6 cases", done.stdout)
    assert (tmp_path / "search" / "genotype_sampled.scn").is_file()


def test_the_old_trainer_paths_still_import_the_moved_modules() -> None:
    import subprocess
    import sys

    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "try:\n    import scnas_dsl.train.search\nexcept DeprecationWarning as w: print('warned', w)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "warned" in out and "scnas_dsl.training" in out
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from scnas_dsl.train.config import TrainConfig as Old
        from scnas_dsl.train.predict import predict_run as old_predict
    from scnas_dsl.prediction.predict import predict_run
    from scnas_dsl.training.config import TrainConfig

    assert Old is TrainConfig and old_predict is predict_run
    assert importlib.import_module("scnas_dsl.train.metrics") is importlib.import_module("scnas_dsl.evaluation.metrics")
