"""The small generated data set the integration tests train on."""

from __future__ import annotations

from pathlib import Path

from scnas_dsl.data.preprocess import preprocess_dataset
from scnas_dsl.data.synth import synthesize
from scnas_dsl.studies.demo import small_space


def heart_cases(root: Path, spacing: tuple[float, float, float] | None = None) -> tuple[Path, Path]:
    """Five generated heart-like cases of 24^3 voxels in ``root/data`` (MSD layout), preprocessed into
    ``root/pre`` at ``spacing`` (None: their own): (the data set folder, the preprocessed folder)."""
    raw = synthesize(root / "data", "heart", cases=5, shape=(24, 24, 24), seed=0)
    return raw, preprocess_dataset(raw, out=root / "pre", spacing=spacing, progress=False).root


def tiny_space(folder: Path) -> Path:
    """``folder/tiny.scn``: a one-level search space of five operations, stem width 4, for fast searches."""
    spec = folder / "tiny.scn"
    spec.write_text(small_space("tiny", levels=1, ops=("conv3", "dil2", "maxpool", "skip", "none"), stem_width=4))
    return spec
