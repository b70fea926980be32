"""Sliding-window inference for any segmentation network (supernet in eval mode or fixed network).

Windows of the training patch size overlap by 50% (nnU-Net's step of half a patch); their softmax
probabilities are blended with a Gaussian importance map (sigma = patch / 8, as nnU-Net) or a constant one,
optionally averaged over mirrored inputs (test-time augmentation), and run in batches of windows. A volume
smaller than the patch is zero-padded (the value of a z-scored background) and cropped back.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Blend = Literal["gaussian", "constant"]


class InferenceStopped(Exception):  # noqa: N818 (a stop, not an error)
    """``should_stop`` said yes between two batches of windows: the inference was abandoned."""


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start offsets along one axis: evenly spaced, first at 0, last at ``size - patch``, step at most
    ``patch * (1 - overlap)``."""
    if size <= patch:
        return [0]
    step = patch * (1.0 - overlap)
    count = math.ceil((size - patch) / step) + 1
    span = size - patch
    return [int(round(i * span / (count - 1))) for i in range(count)]


def importance_map(patch: Sequence[int], blend: Blend) -> torch.Tensor:
    """``(*patch)`` float32 weights: a Gaussian with sigma = patch / 8 scaled to max 1 (no zeros), or ones."""
    if blend == "constant":
        return torch.ones(tuple(patch))
    if blend != "gaussian":
        raise ValueError(f"unknown blending '{blend}': use gaussian or constant")
    grids = []
    for n in patch:
        x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        grids.append(torch.exp(-0.5 * (x / (n / 8)) ** 2))
    weight = grids[0]
    for g in grids[1:]:
        weight = weight[..., None] * g
    weight = weight / weight.max()
    # nnU-Net's guard: the borders must not weigh zero, or voxels covered only by borders divide by ~0
    smallest = weight[weight > 0].min()
    return weight.clamp_min(smallest).float()


def _mirror_sets(dims: int, mirror: bool, axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    if not mirror:
        return [()]
    axes = list(range(dims)) if axes is None else list(axes)
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


@torch.no_grad()
def sliding_window_inference(model: nn.Module, image: torch.Tensor, patch_size: Sequence[int], *,
                             overlap: float = 0.5, blend: Blend = "gaussian", mirror: bool = False,
                             mirror_axes: Sequence[int] | None = None, batch_size: int = 2,
                             device: torch.device | str | None = None,
                             autocast_dtype: torch.dtype | None = None,
                             should_stop: Callable[[], bool] | None = None,
                             fixed_batch: bool = False) -> torch.Tensor:
    """Class probabilities ``(K, *S)`` float32 on the CPU for one image ``(C, *S)`` (2D or 3D).

    ``model`` maps ``(N, C, *patch)`` to ``(N, K, *patch)`` logits and is run in eval mode on ``device``
    (default: where its parameters are). ``mirror`` averages over every flip of ``mirror_axes`` (default all
    spatial axes: 8 passes in 3D). ``overlap`` in [0, 1). ``should_stop`` is asked before every batch of
    windows; when it says yes, :class:`InferenceStopped` is raised (a stop signal during validation).
    ``fixed_batch``: the last, smaller batch of windows is padded to ``batch_size`` with copies of its first
    window (their outputs are dropped), so that every call has one shape: a compiled model is not compiled
    again for the last batch (minutes with inductor).

    The image and the blended probabilities are kept on ``device``; when that runs out of memory (a large
    case on a GPU: the probabilities are classes x voxels), the case is done again with them in CPU memory and
    only the windows on the device, as nnU-Net v2 falls back (:func:`on_device_or_cpu`). An out-of-memory
    error of the windows themselves is the caller's.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    dims = len(patch_size)
    if image.dim() != dims + 1:
        raise ValueError(f"image of shape {tuple(image.shape)}: expected (C, {', '.join('DHW'[3 - dims:])})")

    def run(store: torch.device) -> torch.Tensor:
        return _windows(model, image, tuple(patch_size), overlap=overlap, blend=blend,
                        flips=_mirror_sets(dims, mirror, mirror_axes), batch_size=batch_size, device=device,
                        store=store, autocast_dtype=autocast_dtype, should_stop=should_stop,
                        fixed_batch=fixed_batch)

    return on_device_or_cpu(run, device)


def on_device_or_cpu(run: Callable[[torch.device], torch.Tensor], device: torch.device) -> torch.Tensor:
    """``run(device)``; if that runs out of memory on a device other than the CPU, ``run(cpu)`` (the device's
    cache emptied first). Out of memory on the CPU, or again with CPU storage, is raised."""
    if device.type == "cpu":
        return run(device)
    try:
        return run(device)
    except torch.OutOfMemoryError:
        pass  # leave the except block first: its traceback holds the failed call's tensors
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return run(torch.device("cpu"))


def _windows(model: nn.Module, image: torch.Tensor, patch_size: tuple[int, ...], *, overlap: float, blend: Blend,
             flips: list[tuple[int, ...]], batch_size: int, device: torch.device, store: torch.device,
             autocast_dtype: torch.dtype | None, should_stop: Callable[[], bool] | None,
             fixed_batch: bool) -> torch.Tensor:
    """The sliding window of :func:`sliding_window_inference`, the model run on ``device``, the image and the
    blended probabilities kept on ``store``."""
    spatial = tuple(image.shape[1:])
    pads = [max(p - s, 0) for s, p in zip(spatial, patch_size, strict=True)]
    if any(pads):
        # pad symmetrically; F.pad takes the last axis first
        spec: list[int] = []
        for pad in reversed(pads):
            spec += [pad // 2, pad - pad // 2]
        image = F.pad(image, spec)
    padded = tuple(image.shape[1:])
    starts = [window_starts(s, p, overlap) for s, p in zip(padded, patch_size, strict=True)]
    corners = list(itertools.product(*starts))
    weight = importance_map(patch_size, blend).to(store)
    was_training = model.training
    model.eval()
    probs: torch.Tensor | None = None
    counts = torch.zeros(padded, device=store)
    image = image.to(store)
    try:
        for first in range(0, len(corners), batch_size):
            if should_stop is not None and should_stop():
                raise InferenceStopped(f"stopped after {first} of {len(corners)} windows")
            chunk = corners[first:first + batch_size]
            slices = [tuple(slice(c, c + p) for c, p in zip(corner, patch_size, strict=True)) for corner in chunk]
            batch = torch.stack([image[(slice(None), *s)] for s in slices]).to(device)
            if fixed_batch and len(slices) < batch_size:
                batch = torch.cat([batch, batch[:1].expand(batch_size - len(slices), *batch.shape[1:])])
            out: torch.Tensor | None = None
            for flip in flips:
                axes = [a + 2 for a in flip]
                x = batch.flip(axes) if axes else batch
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    logits = model(x)
                p = torch.softmax(logits[:len(slices)].float(), dim=1)
                p = p.flip(axes) if axes else p
                out = p if out is None else out + p
            assert out is not None  # flips is never empty
            out = (out / len(flips)).to(store)
            if probs is None:
                probs = torch.zeros((out.shape[1], *padded), device=store)
            for s, p in zip(slices, out, strict=True):
                probs[(slice(None), *s)] += p * weight
                counts[s] += weight
    finally:
        model.train(was_training)
    assert probs is not None  # there is at least one window
    probs = probs / counts
    if any(pads):
        crop = tuple(slice(pad // 2, pad // 2 + s) for pad, s in zip(pads, spatial, strict=True))
        probs = probs[(slice(None), *crop)]
    return probs.cpu()
