"""The patch loader: shapes, padding, foreground forcing, and repeatable seeded streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scnas_dsl.data.augment import AugmentConfig
from scnas_dsl.data.loader import choose_lower_corner, extract_patch, make_loader
from scnas_dsl.data.preprocess import Preprocessed, preprocess_dataset
from scnas_dsl.errors import DataError


@pytest.fixture(scope="module")
def pre(brain_nnunet: Path, tmp_path_factory: pytest.TempPathFactory) -> Preprocessed:
    return preprocess_dataset(
        brain_nnunet, out=tmp_path_factory.mktemp("pre") / "p", spacing=None, progress=False
    )


def _batches(pre: Preprocessed, **kwargs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    settings = dict(patch_size=(16, 16, 16), batch_size=2, seed=0, num_batches=4)
    settings.update(kwargs)
    return list(make_loader(pre, pre.case_ids, **settings))  # type: ignore[arg-type]


def _same(a: list, b: list) -> bool:
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))


def test_shapes_and_types(pre: Preprocessed) -> None:
    batches = _batches(pre, patch_size=(16, 12, 8), batch_size=3)
    assert len(batches) == 4
    for image, label in batches:
        assert image.shape == (3, 4, 16, 12, 8) and image.dtype == torch.float32
        # the preprocessed labels' own small type (4 classes: uint8), not int64: 8x less to copy to a GPU
        assert label.shape == (3, 16, 12, 8) and label.dtype == torch.uint8


def test_same_seed_same_batches_with_and_without_workers(pre: Preprocessed) -> None:
    augment = AugmentConfig(p_rotation=0.5)
    serial = _batches(pre, augment=augment, num_batches=5)
    assert _same(serial, _batches(pre, augment=augment, num_batches=5))
    assert _same(serial, _batches(pre, augment=augment, num_batches=5, workers=2))
    assert not _same(serial, _batches(pre, augment=augment, num_batches=5, seed=1))


def test_ranks_and_epochs_draw_different_batches(pre: Preprocessed) -> None:
    rank0 = _batches(pre, world_size=2, rank=0)
    rank1 = _batches(pre, world_size=2, rank=1)
    assert not _same(rank0, rank1)
    loader = make_loader(pre, pre.case_ids, patch_size=(16, 16, 16), batch_size=2, seed=0, num_batches=4)
    epoch0, epoch1 = list(loader), list(loader)
    assert _same(epoch0, rank0) and not _same(epoch0, epoch1)
    loader.set_epoch(1)
    assert _same(list(loader), epoch1)


def test_forced_patches_contain_foreground(pre: Preprocessed) -> None:
    for _, label in _batches(pre, foreground_fraction=1.0, patch_size=(8, 8, 8), num_batches=6):
        assert all((sample > 0).any() for sample in label)


def test_foreground_share_is_about_a_third(pre: Preprocessed) -> None:
    # with small patches, random ones often miss the tumour; forced ones never do
    forced = _batches(pre, foreground_fraction=1.0, patch_size=(4, 4, 4), batch_size=1, num_batches=60)
    random = _batches(pre, foreground_fraction=0.0, patch_size=(4, 4, 4), batch_size=1, num_batches=60)
    share = lambda batches: np.mean([(label > 0).any().item() for _, label in batches])  # noqa: E731
    assert share(forced) == 1.0 and share(random) < 0.7


def test_patches_larger_than_the_volume_are_padded(pre: Preprocessed) -> None:
    big = tuple(max(pre.load(c)[1].shape[a] for c in pre.case_ids) + 6 for a in range(3))
    for image, label in _batches(pre, patch_size=big, batch_size=1, num_batches=3):
        assert image.shape[2:] == big
        # the whole volume lies inside the patch: nothing of it is lost, the rest is zero padding
        sums = {
            c: (int(np.asarray(pre.load(c)[1]).sum()), float(np.asarray(pre.load(c)[0]).sum()))
            for c in pre.case_ids
        }
        assert any(int(label.sum()) == s[0] and abs(float(image.sum()) - s[1]) < 1e-2 for s in sums.values())


def test_patch_helpers() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        corner = choose_lower_corner((10, 5, 8), (4, 8, 8), rng)
        assert 0 <= corner[0] <= 6 and -3 <= corner[1] <= 0 and corner[2] == 0
    assert choose_lower_corner((10, 10, 10), (4, 4, 4), rng, centre=(9, 0, 5)) == [6, 0, 3]
    volume = np.arange(27).reshape(3, 3, 3)
    patch = extract_patch(volume, (-1, 1, 0), (3, 3, 3))
    assert (patch[0] == 0).all() and (patch[1:, 2] == 0).all()
    np.testing.assert_array_equal(patch[1:, :2], volume[:2, 1:3])


def test_bad_arguments_are_clear(pre: Preprocessed) -> None:
    with pytest.raises(DataError, match="unknown case"):
        make_loader(pre, ["nobody"], patch_size=(8, 8, 8), batch_size=1, seed=0, num_batches=1)
    with pytest.raises(DataError, match="three positive sizes"):
        make_loader(pre, pre.case_ids, patch_size=(8, 8), batch_size=1, seed=0, num_batches=1)
    with pytest.raises(DataError, match="rank 2 is outside"):
        make_loader(
            pre, pre.case_ids, patch_size=(8, 8, 8), batch_size=1, seed=0, num_batches=1, rank=2, world_size=2
        )


def test_augmentation_after_the_loader_is_the_same_augmentation(pre: Preprocessed) -> None:
    # augment_in_loader=False: the workers only crop, the batch is augmented after its move to the device
    # (the CPU standing in here) with the same seeded random numbers: the same batches as in the workers
    augment = AugmentConfig(p_rotation=0.5, p_scaling=0.5, p_noise=0.5, p_blur=0.5, p_gamma=0.5)
    raw = _batches(pre, augment=None, num_batches=6)
    in_loader = _batches(pre, augment=augment, num_batches=6)
    after = _batches(pre, augment=augment, augment_in_loader=False, num_batches=6)
    assert _same(in_loader, after) and not _same(raw, after)
    assert _same(in_loader, _batches(pre, augment=augment, augment_in_loader=False, num_batches=6, workers=2,
                                     device="cpu"))
    assert all(label.dtype == torch.uint8 for _, label in after)


def test_open_memory_maps_are_bounded(pre: Preprocessed, monkeypatch) -> None:
    import scnas_dsl.data.loader as loader_module

    monkeypatch.setattr(loader_module, "OPEN_CASES", 2)
    loader = make_loader(pre, pre.case_ids, patch_size=(8, 8, 8), batch_size=4, seed=0, num_batches=5)
    batches = list(loader)
    assert len(loader.dataset._open) == 2
    assert _same(batches, _batches(pre, patch_size=(8, 8, 8), batch_size=4, num_batches=5))


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(*[st.integers(1, 9)] * 3),
    patch=st.tuples(*[st.integers(1, 9)] * 3),
    seed=st.integers(0, 2**16),
    centre=st.booleans(),
)
def test_patches_match_a_padded_volume(shape, patch, seed, centre) -> None:
    """Any patch is the matching window of the volume zero-padded by the patch size on every side."""
    rng = np.random.default_rng(seed)
    volume = rng.integers(1, 100, size=(2, *shape))
    point = tuple(int(rng.integers(n)) for n in shape) if centre else None
    corner = choose_lower_corner(shape, patch, rng, point)
    for n, p, c in zip(shape, patch, corner, strict=True):
        # inside the volume where it is larger than the patch, containing it where it is smaller
        assert (0 <= c <= n - p) if n >= p else (n - p <= c <= 0)
    padded = np.pad(volume, [(0, 0)] + [(p, p) for p in patch])
    window = padded[(slice(None), *[slice(c + p, c + 2 * p) for c, p in zip(corner, patch, strict=True)])]
    np.testing.assert_array_equal(extract_patch(volume, corner, patch), window)
    if point is not None:
        for n, p, c, x in zip(shape, patch, corner, point, strict=True):
            if n >= p:
                assert c <= x < c + p  # a forced patch contains its foreground voxel


def test_sampled_foreground_locations_still_force_foreground(
    brain_nnunet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Large classes keep a bounded random subset of their locations (FOREGROUND_SAMPLES, nnU-Net's ~10k);
    # made small here so that every class of the small cases is sampled.
    import scnas_dsl.data.preprocess as preprocess

    monkeypatch.setattr(preprocess, "FOREGROUND_SAMPLES", 25)
    pre = preprocess_dataset(brain_nnunet, out=tmp_path / "p", spacing=None, progress=False)
    for case_id in pre.case_ids:
        _, label = pre.load(case_id)
        assert label is not None
        locations = pre.foreground_locations(case_id)
        counts = pre.summary(case_id)["class_voxels"]
        assert locations and sum(int(n) for n in counts.values()) == label.size
        for value, coords in locations.items():
            assert len(coords) == min(25, counts[str(value)]) and counts[str(value)] > 0
            assert (label[tuple(coords.T)] == value).all()
    assert any(len(c) == 25 for c in pre.foreground_locations(pre.case_ids[0]).values())
    # a batch of 4 with a fraction of 1/2: its last two samples are forced, and each holds foreground
    batches = _batches(pre, foreground_fraction=0.5, patch_size=(4, 4, 4), batch_size=4, num_batches=30)
    hits = np.array([[(sample > 0).any().item() for sample in label] for _, label in batches])
    assert hits[:, 2:].all() and hits.mean() >= 0.5
