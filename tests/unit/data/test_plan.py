"""Planning: fingerprint, the patch/batch rule, a plugged-in estimator, a too small budget."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from scnas_dsl.data.dataset import open_dataset
from scnas_dsl.data.plan import BYTES_PER_VOXEL, plan
from scnas_dsl.data.preprocess import preprocess_dataset
from scnas_dsl.errors import DataError


def test_plan_of_preprocessed_data(brain_msd: Path, tmp_path: Path) -> None:
    pre = preprocess_dataset(brain_msd, out=tmp_path / "pre", spacing=None, progress=False)
    result = plan(pre, memory_gb=16)
    assert result.num_cases == 4 and result.modalities == ["FLAIR", "T1w", "t1gd", "T2w"]
    # small volumes: the patch is the median shape rounded up to a multiple of 8, not the paper's 128
    assert all(
        p % 8 == 0 and m <= p < m + 8 for p, m in zip(result.patch_size, result.median_shape, strict=True)
    )
    assert result.batch_size == 2  # at least 2; a larger batch would cover more than 5% of the data
    assert result.median_spacing == pytest.approx((1.0, 1.0, 1.5))
    assert sum(result.class_frequencies.values()) == pytest.approx(1.0)
    assert 0 < result.class_frequencies[2] < result.class_frequencies[1] < result.class_frequencies[0]
    assert len(result.intensity) == 4 and all(s["p00_5"] < s["mean"] < s["p99_5"] for s in result.intensity)


def test_memory_budget_shrinks_the_largest_relative_axis(brain_msd: Path) -> None:
    dataset = open_dataset(brain_msd)
    big = plan(dataset, memory_gb=100)
    assert big.patch_size == (24, 24, 24) and big.median_shape == (24, 24, 20)
    budget = BYTES_PER_VOXEL * 24 * 24 * 16 / 1e9
    small = plan(dataset, memory_gb=budget)
    assert small.patch_size == (24, 24, 16) and small.batch_size == 1
    assert small.estimate_bytes <= budget * 1e9


def test_a_spec_estimator_is_used(brain_msd: Path) -> None:
    calls: list[tuple[tuple[int, ...], int]] = []

    def estimator(patch: tuple[int, ...], batch: int) -> float:
        calls.append((patch, batch))
        return math.prod(patch) * batch * 1000.0

    result = plan(open_dataset(brain_msd), memory_gb=24**3 * 1000 * 2 / 1e9, spec_estimator=estimator)
    assert calls and result.rule == "spec estimate"
    assert result.patch_size == (24, 24, 24) and result.batch_size == 2
    result = plan(open_dataset(brain_msd), memory_gb=24**3 * 1000 * 1.5 / 1e9, spec_estimator=estimator)
    assert result.patch_size == (24, 24, 24) and result.batch_size == 1


def test_paper_patch_caps_large_volumes(brain_msd: Path) -> None:
    result = plan(open_dataset(brain_msd), memory_gb=100, max_patch=(16, 16, 16))
    assert result.patch_size == (16, 16, 16)


def test_too_small_budget_is_a_clear_error(brain_msd: Path) -> None:
    with pytest.raises(DataError, match="too small even for a \\(16, 16, 16\\) patch"):
        plan(open_dataset(brain_msd), memory_gb=0.001)
    with pytest.raises(DataError, match="must be positive"):
        plan(open_dataset(brain_msd), memory_gb=0)


def test_training_defaults_to_the_patch_data_plan_recommends(brain_msd: Path, tmp_path: Path) -> None:
    """One patch rule: with memory to spare, `scnas data plan` and `scnas train`'s default agree (training takes
    the median over the fold's training cases; here both take every case)."""
    from scnas_dsl.data.plan import default_patch
    from scnas_dsl.training.data_context import default_patch as training_default

    pre = preprocess_dataset(brain_msd, out=tmp_path / "pre", spacing=None, progress=False)
    recommended = plan(pre, memory_gb=1e6).patch_size
    assert training_default(pre, pre.case_ids, levels=3) == recommended
    assert plan(pre, memory_gb=1e6, divisor=16).patch_size == training_default(pre, pre.case_ids, levels=4)
    assert default_patch((5.0, 300.0, 40.0), 8) == (16, 128, 40)  # at least 16, at most 128, multiples of 8
    assert default_patch((5.0, 300.0, 40.0), 32) == (32, 128, 64)
