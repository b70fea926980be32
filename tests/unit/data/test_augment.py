"""Augmentation keeps image and label aligned (checked with a coordinate grid), is seeded and switchable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scnas_dsl.data.augment import AugmentConfig, augment_batch

SIZE = (20, 24, 28)  # not cubic on purpose: rotations must stay rotations in voxel units


def _coordinate_batch(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Image: the voxel's own (d, h, w) coordinates and a channel of ones; a blocky label map.

    After a spatial transform the coordinate channels say where each voxel was sampled from, and the ones
    channel is exactly 1 where that point lies fully inside the patch (zero padding lowers it elsewhere).
    """
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in SIZE], indexing="ij")
    image = torch.stack([*grids, torch.ones(SIZE)])[None].repeat(batch, 1, 1, 1, 1)
    d, h, w = (g.long() for g in grids)
    label = ((d // 4) + 2 * (h // 5) + 3 * (w // 3)) % 4
    return image, label[None].repeat(batch, 1, 1, 1)


def _spatial(**changes: object) -> AugmentConfig:
    settings = dict(p_rotation=1.0, p_scaling=1.0, p_elastic=1.0, p_mirror=0.5)
    settings.update(changes)
    return AugmentConfig.spatial_only().model_copy(update=settings)


def _check_label_follows_coordinates(
    image: torch.Tensor, label: torch.Tensor, original: torch.Tensor
) -> float:
    """Share of interior voxels whose label is the original label at the sampled coordinate."""
    values = image.permute(0, 2, 3, 4, 1).reshape(-1, 4).numpy()
    coords = values[:, :3]
    labels = label.reshape(-1).numpy()
    inside = np.abs(values[:, 3] - 1.0) < 1e-5
    fraction = coords - np.floor(coords)
    clear = (np.abs(fraction - 0.5) > 1e-3).all(1)  # no rounding ties
    keep = inside & clear
    nearest = np.rint(coords[keep]).astype(int)
    batch_index = np.repeat(np.arange(image.shape[0]), int(np.prod(SIZE)))[keep]
    expected = original.numpy()[batch_index, nearest[:, 0], nearest[:, 1], nearest[:, 2]]
    assert keep.sum() > 1000
    return float((labels[keep] == expected).mean())


@pytest.mark.parametrize("elastic", [False, True])
def test_rotation_scaling_mirroring_keep_label_aligned(elastic: bool) -> None:
    image, label = _coordinate_batch()
    cfg = _spatial(elastic=elastic, label_interpolation="nearest")  # exact: the label at the sampled point
    out_image, out_label = augment_batch(image, label, cfg, torch.Generator().manual_seed(3))
    assert (
        out_image.shape == image.shape and out_label.shape == label.shape and out_label.dtype == label.dtype
    )
    assert not torch.equal(out_image, image)  # something moved
    assert _check_label_follows_coordinates(out_image, out_label, label) > 0.999
    # inputs untouched
    assert torch.equal(image, _coordinate_batch()[0])


def test_rotation_preserves_distances_in_voxel_units() -> None:
    image, label = _coordinate_batch(1)
    cfg = _spatial(scaling=False, elastic=False, mirror=False)
    out, _ = augment_batch(image, label, cfg, torch.Generator().manual_seed(0))
    # neighbouring voxels one step apart along each axis sample points one voxel apart (rigid motion)
    centre = out[0, :3, 8:12, 10:14, 12:16]
    for axis in range(3):
        step = torch.diff(centre, dim=axis + 1).norm(dim=0)
        torch.testing.assert_close(step, torch.ones_like(step), atol=1e-4, rtol=0)


def test_onehot_label_interpolation_is_aligned_where_unambiguous() -> None:
    image, label = _coordinate_batch()
    cfg = _spatial(label_interpolation="onehot", elastic=False)
    out_image, out_label = augment_batch(image, label, cfg, torch.Generator().manual_seed(5))
    assert _check_label_follows_coordinates(out_image, out_label, label) > 0.9
    assert set(out_label.unique().tolist()) <= {0, 1, 2, 3}


@pytest.mark.parametrize("elastic", [False, True])
def test_default_labels_move_as_onehot_and_stay_valid_integers(elastic: bool) -> None:
    # nnU-Net v2's default: one-hot masks interpolated linearly, then argmax
    image, label = _coordinate_batch()
    label = label.to(torch.uint8)
    cfg = AugmentConfig.spatial_only().model_copy(
        update=dict(p_rotation=1.0, p_scaling=1.0, p_elastic=1.0, elastic=elastic)
    )
    assert cfg.label_interpolation == "onehot"
    out_image, out_label = augment_batch(image, label, cfg, torch.Generator().manual_seed(3))
    assert out_label.dtype == torch.uint8 and set(out_label.unique().tolist()) <= {0, 1, 2, 3}
    assert _check_label_follows_coordinates(out_image, out_label, label) > 0.97
    nearest = augment_batch(
        image, label, cfg.model_copy(update=dict(label_interpolation="nearest")), torch.Generator().manual_seed(3)
    )
    assert torch.equal(nearest[0], out_image) and not torch.equal(nearest[1], out_label)


def test_same_generator_state_same_result() -> None:
    image, label = _coordinate_batch()
    image = image + torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
    cfg = AugmentConfig(p_rotation=1.0, p_noise=1.0, p_gamma=1.0, p_blur=1.0)
    a = augment_batch(image, label, cfg, torch.Generator().manual_seed(11))
    b = augment_batch(image, label, cfg, torch.Generator().manual_seed(11))
    c = augment_batch(image, label, cfg, torch.Generator().manual_seed(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize(
    "name", ["noise", "blur", "brightness", "contrast", "low_resolution", "gamma_inverted", "gamma"]
)
def test_each_intensity_transform_changes_only_the_image(name: str) -> None:
    image = torch.rand((2, 2, *SIZE), generator=torch.Generator().manual_seed(0)) + 0.5
    label = (image[:, 0] > 1.0).long()
    off = dict.fromkeys(
        [
            "rotation",
            "scaling",
            "mirror",
            "noise",
            "blur",
            "brightness",
            "contrast",
            "low_resolution",
            "gamma_inverted",
            "gamma",
        ],
        False,
    )
    settings = {**off, name: True, f"p_{name}": 1.0}
    if name in ("blur", "low_resolution"):
        settings[f"p_{name}_per_channel"] = 1.0
    cfg = AugmentConfig(**settings)
    out_image, out_label = augment_batch(image, label, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(out_label, label) and torch.isfinite(out_image).all()
    assert not torch.allclose(out_image, image)


def test_everything_off_changes_nothing() -> None:
    image, label = _coordinate_batch()
    for cfg in (
        AugmentConfig.none(),
        AugmentConfig(
            rotation=False,
            scaling=False,
            mirror=False,
            noise=False,
            blur=False,
            brightness=False,
            contrast=False,
            low_resolution=False,
            gamma_inverted=False,
            gamma=False,
        ),
    ):
        out_image, out_label = augment_batch(image, label, cfg, torch.Generator().manual_seed(0))
        assert torch.equal(out_image, image) and torch.equal(out_label, label)


def test_defaults_follow_nnunet_and_bad_settings_are_refused() -> None:
    cfg = AugmentConfig()
    assert (cfg.p_rotation, cfg.p_scaling, cfg.scale_range, cfg.elastic) == (0.2, 0.2, (0.7, 1.4), False)
    assert cfg.label_interpolation == "onehot"  # nnU-Net v2 (batchgeneratorsv2's mode_seg="bilinear")
    assert (cfg.p_noise, cfg.p_blur, cfg.p_brightness, cfg.p_contrast, cfg.p_gamma, cfg.p_mirror) == (
        0.1,
        0.2,
        0.15,
        0.15,
        0.3,
        0.5,
    )
    with pytest.raises(ValueError):
        AugmentConfig(p_rotation=1.5)
    with pytest.raises(ValueError):
        AugmentConfig(label_interpolation="cubic")
    with pytest.raises(ValueError, match="augment_batch needs"):
        augment_batch(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), cfg, torch.Generator())


def test_the_data_sets_class_count_gives_the_labels_own_result() -> None:
    """``num_classes`` (the data set's) spares reading the label's maximum (a GPU sync); classes absent from the
    batch change nothing."""
    image, label = _coordinate_batch()
    label = label.to(torch.uint8)
    cfg = AugmentConfig.spatial_only().model_copy(update=dict(p_rotation=1.0, p_scaling=1.0, p_elastic=1.0))
    read = augment_batch(image, label, cfg, torch.Generator().manual_seed(5))
    given = augment_batch(image, label, cfg, torch.Generator().manual_seed(5), num_classes=7)
    assert torch.equal(read[0], given[0]) and torch.equal(read[1], given[1])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_the_gpu_dense_noise_is_drawn_there_and_a_seed_repeats() -> None:
    image, label = _coordinate_batch()
    cfg = AugmentConfig(p_rotation=1.0, p_elastic=1.0, p_noise=1.0)
    a = augment_batch(image.cuda(), label.cuda(), cfg, torch.Generator().manual_seed(2), num_classes=4)
    b = augment_batch(image.cuda(), label.cuda(), cfg, torch.Generator().manual_seed(2), num_classes=4)
    assert a[0].device.type == "cuda" and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # the transform choices and parameters are the CPU's: without noise the two devices agree
    quiet = cfg.model_copy(update=dict(noise=False))
    gpu = augment_batch(image.cuda(), label.cuda(), quiet, torch.Generator().manual_seed(2), num_classes=4)
    cpu = augment_batch(image, label, quiet, torch.Generator().manual_seed(2), num_classes=4)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-4, rtol=1e-4)
