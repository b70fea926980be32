"""A data set's fingerprint and the patch and batch size for training, from the median shape and a memory budget.

Rule (where no spec estimate is plugged in): start from the paper's 128^3 patch, capped per axis by the median
preprocessed shape rounded up to a multiple of 8 (three down-samplings by 2); while the estimate for batch 1 is
over the budget, shrink by 8 the axis whose patch is largest relative to the median shape (nnU-Net's rule), down
to 16 voxels. Then grow the batch while it fits, up to 8 (the paper's retraining batch), and while a batch covers
at most 5% of all the data set's voxels, but at least 2 (nnU-Net). Without a spec the estimate is
``batch * voxels * BYTES_PER_VOXEL``: a supernet of stem width 48 (the paper's search set-up) needs about 8 kB
of activations per voxel of a patch, so that 128^3 at batch 1 fits a 16 GB GPU as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scnas_dsl.data.dataset import Dataset, load_header
from scnas_dsl.data.preprocess import Preprocessed, canonical_geometry
from scnas_dsl.errors import DataError

#: The paper's default patch.
PAPER_PATCH = (128, 128, 128)
#: Rough activation memory of a width-48 SCNAS supernet per patch voxel (bytes), for the rule without a spec.
BYTES_PER_VOXEL = 8000
DIVISOR = 8
MIN_AXIS = 16
MAX_BATCH = 8
MAX_COVERAGE = 0.05

Estimator = Callable[[tuple[int, ...], int], float]


def default_patch(median_shape: Sequence[float], divisor: int = DIVISOR,
                  max_patch: Sequence[int] = PAPER_PATCH) -> tuple[int, ...]:
    """The one patch rule of ``scnas data plan`` and of training's default: the paper's 128^3 capped per axis by
    the median shape rounded up to a multiple of ``divisor`` (``2**`` the U-Net's down-samplings), at least
    ``max(MIN_AXIS, divisor)`` and at most ``max_patch`` rounded down to the divisor."""
    floor = max(MIN_AXIS, divisor)
    return tuple(int(min(max(m // divisor * divisor, floor), max(floor, divisor * math.ceil(s / divisor))))
                 for s, m in zip(median_shape, max_patch, strict=True))


@dataclass(frozen=True)
class Plan:
    """The chosen ``patch_size`` and ``batch_size`` and the data set fingerprint they come from."""

    patch_size: tuple[int, ...]
    batch_size: int
    estimate_bytes: float
    memory_gb: float
    num_cases: int
    modalities: list[str]
    median_shape: tuple[int, ...]
    median_spacing: tuple[float, ...]
    #: per channel: mean, std, 0.5 and 99.5 percentiles of the foreground (raw intensities after resampling)
    intensity: list[dict[str, float]] = field(default_factory=list)
    #: class value -> share of all labelled voxels
    class_frequencies: dict[int, float] = field(default_factory=dict)
    rule: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "patch_size": list(self.patch_size),
            "batch_size": self.batch_size,
            "estimate_gb": round(self.estimate_bytes / 1e9, 3),
            "memory_gb": self.memory_gb,
            "num_cases": self.num_cases,
            "modalities": self.modalities,
            "median_shape": list(self.median_shape),
            "median_spacing": [round(s, 4) for s in self.median_spacing],
            "intensity": self.intensity,
            "class_frequencies": {str(k): v for k, v in self.class_frequencies.items()},
            "rule": self.rule,
        }


def default_estimator(patch: tuple[int, ...], batch: int) -> float:
    """The documented rule: ``batch * voxels * BYTES_PER_VOXEL`` bytes."""
    return float(batch * math.prod(patch) * BYTES_PER_VOXEL)


def _fingerprint(
    source: Preprocessed | Dataset,
) -> tuple[list[list[int]], list[list[float]], list[dict], dict[int, float]]:
    if isinstance(source, Preprocessed):
        summaries = [source.summary(c) for c in source.case_ids]
        shapes = [s["shape"] for s in summaries]
        spacings = [s["spacing"] for s in summaries]
        intensity: list[dict] = []
        per_case = [s["foreground_intensity"] for s in summaries if s["foreground_intensity"]]
        if per_case:
            for c in range(len(per_case[0])):
                intensity.append(
                    {k: float(np.mean([case[c][k] for case in per_case])) for k in per_case[0][c]}
                )
        counts: dict[int, int] = {}
        for s in summaries:
            for k, n in s["class_voxels"].items():
                counts[int(k)] = counts.get(int(k), 0) + n
        total = sum(counts.values()) or 1
        return shapes, spacings, intensity, {k: n / total for k, n in sorted(counts.items())}
    shapes, spacings = [], []
    for case in source.cases:
        img = load_header(case.images[0])  # a DataError naming the file when it cannot be read
        spacing, shape = canonical_geometry(np.asarray(img.affine), img.shape[:3])
        shapes.append(shape)
        spacings.append(spacing)
    return shapes, spacings, [], {}


def plan(
    source: Preprocessed | Dataset,
    memory_gb: float = 16.0,
    spec_estimator: Estimator | None = None,
    max_patch: Sequence[int] = PAPER_PATCH,
    divisor: int = DIVISOR,
) -> Plan:
    """Fingerprint ``source`` and choose patch and batch size for ``memory_gb`` (see the module docstring).

    ``spec_estimator(patch, batch) -> bytes`` plugs in the compiler's memory estimate for a spec, ``divisor``
    (``2**`` its down-samplings, default 8) what every patch axis divides by. A raw
    :class:`Dataset` is planned at its own voxel size (no crop), a :class:`Preprocessed` one at its target.
    """
    if memory_gb <= 0:
        raise DataError(f"memory budget must be positive (got {memory_gb} GB)")
    shapes, spacings, intensity, frequencies = _fingerprint(source)
    if not shapes:
        raise DataError("no cases to plan for")
    median_shape = tuple(int(round(v)) for v in np.median(shapes, axis=0))
    median_spacing = tuple(float(v) for v in np.median(spacings, axis=0))
    estimate = spec_estimator or default_estimator
    budget = memory_gb * 1e9
    # the unrounded median, as training's default takes it: one rule, one result
    patch = list(default_patch([float(v) for v in np.median(shapes, axis=0)], divisor, max_patch))
    while estimate(tuple(patch), 1) > budget:
        shrinkable = [a for a in range(3) if patch[a] - divisor >= max(MIN_AXIS, divisor)]
        if not shrinkable:
            raise DataError(
                f"a memory budget of {memory_gb} GB is too small even for a {tuple(patch)} patch at batch 1 "
                f"(estimate {estimate(tuple(patch), 1) / 1e9:.2f} GB); raise --memory-gb or use a smaller network"
            )
        axis = max(shrinkable, key=lambda a: patch[a] / max(median_shape[a], 1))
        patch[axis] -= divisor
    total_voxels = float(sum(math.prod(s) for s in shapes))
    batch = 1
    while (
        batch < MAX_BATCH
        and estimate(tuple(patch), batch + 1) <= budget
        and (batch + 1 <= 2 or (batch + 1) * math.prod(patch) <= MAX_COVERAGE * total_voxels)
    ):
        batch += 1
    rule = "spec estimate" if spec_estimator is not None else f"{BYTES_PER_VOXEL} bytes per patch voxel"
    modalities = source.dataset.modalities if isinstance(source, Preprocessed) else source.modalities
    return Plan(
        patch_size=tuple(patch),
        batch_size=batch,
        estimate_bytes=estimate(tuple(patch), batch),
        memory_gb=memory_gb,
        num_cases=len(shapes),
        modalities=list(modalities),
        median_shape=median_shape,
        median_spacing=median_spacing,
        intensity=intensity,
        class_frequencies=frequencies,
        rule=rule,
    )
