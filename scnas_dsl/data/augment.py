"""Data augmentation on batched torch tensors (CPU in loader workers, or GPU in the trainer).

The kinds, order and probabilities are nnU-Net's (v2 ``get_training_transforms``) and every transform can be
switched off. Order: rotation / scaling / elastic deformation (one sampling grid, ``grid_sample``), Gaussian
noise, Gaussian blur, multiplicative brightness, contrast, simulated low resolution, gamma on the inverted
image, gamma, mirroring. Labels follow every spatial step on the same grid: by default as nnU-Net v2
(batchgeneratorsv2's ``SpatialTransform``, ``mode_seg="bilinear"``), each class's one-hot mask is interpolated
linearly and the argmax taken (outside the patch background wins), so label borders rotate and scale as
smoothly as the image; ``label_interpolation="nearest"`` samples the label map itself with nearest neighbour
(nnU-Net v1's order 0, and nnU-Net v2's ``nnUNetTrainerDA5``).

Differences from nnU-Net, on purpose: the spatial transform is applied to the patch itself (nnU-Net samples a
larger region first), so rotated corners are filled with zeros (label background).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

Range = tuple[float, float]


class AugmentConfig(BaseModel):
    """Which transforms run and how strongly; defaults follow nnU-Net. Probabilities are per sample."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = True
    rotation: bool = True
    p_rotation: float = Field(default=0.2, ge=0, le=1)
    rotation_degrees: Range = (-30.0, 30.0)
    scaling: bool = True
    p_scaling: float = Field(default=0.2, ge=0, le=1)
    scale_range: Range = (0.7, 1.4)
    elastic: bool = False
    p_elastic: float = Field(default=0.2, ge=0, le=1)
    #: displacement amplitude in voxels, and the spacing of its random control points in voxels
    elastic_magnitude: Range = (0.0, 4.0)
    elastic_grid: Range = (9.0, 13.0)
    #: "onehot": linear interpolation of one-hot labels, then argmax (nnU-Net v2); "nearest": nearest neighbour
    label_interpolation: str = Field(default="onehot", pattern="^(nearest|onehot)$")
    noise: bool = True
    p_noise: float = Field(default=0.1, ge=0, le=1)
    noise_variance: Range = (0.0, 0.1)
    blur: bool = True
    p_blur: float = Field(default=0.2, ge=0, le=1)
    p_blur_per_channel: float = Field(default=0.5, ge=0, le=1)
    blur_sigma: Range = (0.5, 1.0)
    brightness: bool = True
    p_brightness: float = Field(default=0.15, ge=0, le=1)
    brightness_range: Range = (0.75, 1.25)
    contrast: bool = True
    p_contrast: float = Field(default=0.15, ge=0, le=1)
    contrast_range: Range = (0.75, 1.25)
    low_resolution: bool = True
    p_low_resolution: float = Field(default=0.25, ge=0, le=1)
    p_low_resolution_per_channel: float = Field(default=0.5, ge=0, le=1)
    low_resolution_zoom: Range = (0.5, 1.0)
    gamma_inverted: bool = True
    p_gamma_inverted: float = Field(default=0.1, ge=0, le=1)
    gamma: bool = True
    p_gamma: float = Field(default=0.3, ge=0, le=1)
    gamma_range: Range = (0.7, 1.5)
    mirror: bool = True
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    p_mirror: float = Field(default=0.5, ge=0, le=1)

    @classmethod
    def none(cls) -> AugmentConfig:
        """A configuration that changes nothing."""
        return cls(enabled=False)

    @classmethod
    def spatial_only(cls) -> AugmentConfig:
        """Only rotation, scaling and mirroring (the intensity transforms off)."""
        return cls(
            noise=False,
            blur=False,
            brightness=False,
            contrast=False,
            low_resolution=False,
            gamma_inverted=False,
            gamma=False,
        )


def _uniform(generator: torch.Generator, low: float, high: float, n: int = 1) -> list[float]:
    values = torch.rand(n, generator=generator, device=generator.device).tolist()
    return [low + (high - low) * v for v in values]


def _chance(generator: torch.Generator, p: float) -> bool:
    return bool(torch.rand(1, generator=generator, device=generator.device).item() < p)


def _rotation(angles: list[float]) -> torch.Tensor:
    ax, ay, az = (math.radians(a) for a in angles)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = torch.tensor([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = torch.tensor([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return (rx @ ry @ rz).to(torch.float32)


def _spatial(
    image: torch.Tensor, label: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = image.shape[0]
    size = image.shape[2:]
    # grid_sample's normalised coordinates run over (W, H, D): half-sizes turn them into voxel units, so that
    # a rotation stays a rotation on non-cubic patches.
    half = torch.tensor([size[2] / 2, size[1] / 2, size[0] / 2])
    chosen: list[int] = []
    thetas: list[torch.Tensor] = []
    elastic: list[torch.Tensor | None] = []
    for b in range(batch):
        matrix = torch.eye(3)
        changed = False
        if cfg.rotation and _chance(generator, cfg.p_rotation):
            matrix = _rotation(_uniform(generator, *cfg.rotation_degrees, n=3)) @ matrix
            changed = True
        if cfg.scaling and _chance(generator, cfg.p_scaling):
            matrix = matrix * _uniform(generator, *cfg.scale_range)[0]
            changed = True
        field = None
        if cfg.elastic and _chance(generator, cfg.p_elastic):
            magnitude = _uniform(generator, *cfg.elastic_magnitude)[0]
            spacing = _uniform(generator, *cfg.elastic_grid)[0]
            coarse = [max(2, math.ceil(n / spacing) + 1) for n in size]
            noise = torch.rand((1, 3, *coarse), generator=generator, device=generator.device) * 2 - 1
            # the coarse noise (a few hundred numbers) goes to the batch's device; the dense field is made there
            field = F.interpolate(
                noise.to(image.device) * magnitude, size=tuple(size), mode="trilinear", align_corners=True
            )
            field = field[0].permute(1, 2, 3, 0) / half.to(image.device)  # (D, H, W, 3) in normalised units
            changed = True
        if changed:
            chosen.append(b)
            thetas.append(torch.cat([torch.diag(1 / half) @ matrix @ torch.diag(half), torch.zeros(3, 1)], 1))
            elastic.append(field)
    if not chosen:
        return image, label
    device = image.device
    theta = torch.stack(thetas).to(device=device, dtype=image.dtype)
    grid = F.affine_grid(theta, [len(chosen), 1, *size], align_corners=False)
    for i, field in enumerate(elastic):
        if field is not None:
            grid[i] = grid[i] + field.to(device=device, dtype=grid.dtype)
    index = torch.tensor(chosen, device=device)
    image = image.clone()
    label = label.clone()
    image[index] = F.grid_sample(
        image[index], grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    if cfg.label_interpolation == "onehot":
        # the data set's class count when known: reading the label's maximum waits for the GPU
        classes = num_classes if num_classes is not None else int(label.max().item()) + 1
        onehot = F.one_hot(label[index].long(), classes).movedim(-1, 1).to(image.dtype)
        moved = F.grid_sample(onehot, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # outside the patch every class weight is 0: background wins there
        moved[:, 0] += 1e-6
        label[index] = moved.argmax(1).to(label.dtype)
    else:
        moved = F.grid_sample(
            label[index].unsqueeze(1).to(image.dtype),
            grid,
            mode="nearest",
            padding_mode="zeros",
            align_corners=False,
        )
        label[index] = moved[:, 0].round().to(label.dtype)
    return image, label


def _gaussian_blur(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of one volume (D, H, W)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, device=volume.device, dtype=volume.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = volume[None, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(shape))
    return out[0, 0]


def _gamma(volume: torch.Tensor, gamma: float, invert: bool) -> torch.Tensor:
    """nnU-Net's gamma transform with retained mean and standard deviation."""
    x = -volume if invert else volume
    mean, std = x.mean(), x.std()
    low = x.min()
    span = x.max() - low
    x = ((x - low) / (span + 1e-7)) ** gamma * span + low
    x = (x - x.mean()) / (x.std() + 1e-8) * std + mean
    return -x if invert else x


def _pick_gamma(generator: torch.Generator, low: float, high: float) -> float:
    if low < 1 and _chance(generator, 0.5):
        return _uniform(generator, low, 1.0)[0]
    return _uniform(generator, max(low, 1.0), high)[0]


def on_device(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """``generator`` itself when it lives on ``device``'s kind of device; else a generator on ``device`` seeded
    with ``generator``'s next number, so that dense noise is drawn where the batch is (no copy of a volume of
    random numbers from pageable host memory). The rule that results: a seed gives the same augmentation on the
    same kind of device (in the loader's workers or on the CPU's device path alike); on a GPU the dense noise
    comes from CUDA's generator and differs from the CPU's, the transform choices and parameters do not."""
    if generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return torch.Generator(device=device).manual_seed(seed)


def _intensity(image: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    image = image.clone()
    batch, channels = image.shape[:2]
    for b in range(batch):
        if cfg.noise and _chance(generator, cfg.p_noise):
            std = math.sqrt(_uniform(generator, *cfg.noise_variance)[0])
            noise = torch.randn(image.shape[1:], generator=on_device(generator, image.device), device=image.device)
            image[b] += noise.to(image.dtype) * std
        if cfg.blur and _chance(generator, cfg.p_blur):
            for c in range(channels):
                if _chance(generator, cfg.p_blur_per_channel):
                    image[b, c] = _gaussian_blur(image[b, c], _uniform(generator, *cfg.blur_sigma)[0])
        if cfg.brightness and _chance(generator, cfg.p_brightness):
            for c in range(channels):
                image[b, c] *= _uniform(generator, *cfg.brightness_range)[0]
        if cfg.contrast and _chance(generator, cfg.p_contrast):
            for c in range(channels):
                v = image[b, c]
                low, high, mean = v.min(), v.max(), v.mean()
                image[b, c] = ((v - mean) * _uniform(generator, *cfg.contrast_range)[0] + mean).clamp(
                    low, high
                )
        if cfg.low_resolution and _chance(generator, cfg.p_low_resolution):
            for c in range(channels):
                if _chance(generator, cfg.p_low_resolution_per_channel):
                    zoom = _uniform(generator, *cfg.low_resolution_zoom)[0]
                    size = image.shape[2:]
                    small = [max(1, round(n * zoom)) for n in size]
                    v = F.interpolate(image[b, c][None, None], size=small, mode="nearest")
                    image[b, c] = F.interpolate(v, size=tuple(size), mode="trilinear", align_corners=False)[
                        0, 0
                    ]
        if cfg.gamma_inverted and _chance(generator, cfg.p_gamma_inverted):
            for c in range(channels):
                image[b, c] = _gamma(image[b, c], _pick_gamma(generator, *cfg.gamma_range), invert=True)
        if cfg.gamma and _chance(generator, cfg.p_gamma):
            for c in range(channels):
                image[b, c] = _gamma(image[b, c], _pick_gamma(generator, *cfg.gamma_range), invert=False)
    return image


def _mirror(
    image: torch.Tensor, label: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    image = image.clone()
    label = label.clone()
    for b in range(image.shape[0]):
        axes = [a for a in cfg.mirror_axes if _chance(generator, cfg.p_mirror)]
        if axes:
            image[b] = image[b].flip([1 + a for a in axes])
            label[b] = label[b].flip(axes)
    return image, label


def augment_batch(
    image: torch.Tensor, label: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch: image float (B, C, D, H, W) and label int (B, D, H, W), on any device.

    Random numbers come from ``generator`` (on the CPU or on the tensors' device), so the same generator state
    gives the same result on the same kind of device (``on_device`` says what differs on a GPU). Inputs are not
    modified. ``num_classes``: the data set's class count (read from the label when not given).
    """
    if (
        image.ndim != 5
        or label.ndim != 4
        or image.shape[0] != label.shape[0]
        or image.shape[2:] != label.shape[1:]
    ):
        raise ValueError(
            f"augment_batch needs image (B, C, D, H, W) and label (B, D, H, W); got "
            f"{tuple(image.shape)} and {tuple(label.shape)}"
        )
    if not cfg.enabled:
        return image, label
    if cfg.rotation or cfg.scaling or cfg.elastic:
        image, label = _spatial(image, label, cfg, generator, num_classes)
    image = _intensity(image, cfg, generator)
    if cfg.mirror:
        image, label = _mirror(image, label, cfg, generator)
    return image, label
