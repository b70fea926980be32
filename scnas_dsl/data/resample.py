"""Resampling of images, label maps and masks to a new grid, as nnU-Net v2 does it, separably and in slabs.

Every resampling here keeps voxel edges aligned (``scipy.ndimage.zoom(grid_mode=True)``: output voxel ``o``
of an axis of ``n`` voxels reads input coordinate ``(o + 0.5) * m / n - 0.5``; orders 0 and 1 clamp it to
``[0, m - 1]``, order 3 evaluates the spline of the edge-padded data there), so
the physical extent is unchanged. Each axis is interpolated on its own (a tensor-product spline is separable),
which is the same computation as scipy's 3D ``zoom`` (order 3: the edge-padded, prefiltered B-spline
coefficients; order 1: linear; order 0: nearest, rounding halves up) with 3 x 4 taps per output voxel instead
of 4^3, in float32, with torch: multi-threaded on the CPU, or on a GPU (``device``). The output is made
``slab`` planes (first axis) at a time, so the transient memory is a few slabs, not volumes.

Thick slices (nnU-Net's ``determine_do_sep_z_and_axis`` with its threshold 3): when the largest spacing of
the data, or else of the target, is more than 3 times the smallest and belongs to one axis only, that axis
(the out-of-plane axis) is resampled with nearest neighbour (order 0) for images and labels, while the two
in-plane axes get order 3 (images) or linear one-hot (labels): slices are not blended across 5 mm gaps.

``SCNAS_RESAMPLE_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, ...; default: ``cuda`` when torch sees one, else
``cpu``) chooses where preprocessing resamples.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    import torch

#: nnU-Net's ANISO_THRESHOLD: beyond this spacing ratio the out-of-plane axis is resampled on its own.
ANISOTROPY_THRESHOLD = 3.0
#: Output planes (first axis) made at a time.
SLAB = 16
#: scipy pads by this many edge voxels before its spline prefilter (``_prepad_for_spline_filter``).
_SPLINE_PAD = 12


def separate_axis(
    spacing: Sequence[float], target: Sequence[float], threshold: float = ANISOTROPY_THRESHOLD
) -> int | None:
    """The out-of-plane axis to resample with nearest neighbour, or None (nnU-Net v2's rule, automatic mode).

    The data's spacing decides first, then the target's: the axis whose spacing is the largest, when that is
    more than ``threshold`` times the smallest and no other axis shares it.
    """
    for grid in (spacing, target):
        values = np.asarray(grid, dtype=np.float64)
        if values.max() / values.min() > threshold:
            axes = np.flatnonzero(values == values.max())
            return int(axes[0]) if len(axes) == 1 else None
    return None


def resample_device() -> str:
    """Where preprocessing resamples: ``$SCNAS_RESAMPLE_DEVICE``, else CUDA when available, else the CPU."""
    chosen = os.environ.get("SCNAS_RESAMPLE_DEVICE", "").strip()
    if chosen:
        return chosen
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _taps(m: int, n: int, order: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices (T, n) and weights (T, n) of one axis of ``m`` voxels resampled to ``n``."""
    unclamped = (np.arange(n) + 0.5) * (m / n) - 0.5
    x = np.clip(unclamped, 0, m - 1)
    if order == 0:
        return np.minimum(np.floor(x + 0.5), m - 1).astype(np.int64)[None], np.ones((1, n))
    if order == 1:
        low = np.minimum(np.floor(x), m - 1)
        t = x - low
        return np.stack([low, np.minimum(low + 1, m - 1)]).astype(np.int64), np.stack([1 - t, t])
    if order != 3:
        raise ValueError(f"spline order {order} is not supported (0, 1 or 3)")
    # as scipy: the spline of the edge-padded data is evaluated at the unclamped coordinate (within half a
    # voxel of the edge, well inside the padding)
    x = unclamped
    first = np.floor(x) - 1
    idx = first[None] + np.arange(4)[:, None]
    d = np.abs(x[None] - idx)
    # cubic B-spline: (4 - 6 d^2 + 3 d^3) / 6 for d < 1, (2 - d)^3 / 6 for 1 <= d < 2
    w = np.where(d < 1, (4 - 6 * d**2 + 3 * d**3) / 6, np.where(d < 2, (2 - d) ** 3 / 6, 0.0))
    return (idx + pad).astype(np.int64), w


class _Plan:
    """Per-axis taps for resampling a (D, H, W) array to ``shape`` with one spline order per axis; axes whose
    size does not change are left alone (no taps, no padding)."""

    def __init__(self, in_shape: Sequence[int], shape: Sequence[int], orders: Sequence[int], device: str):
        import torch

        self.device = torch.device(device)
        self.pads = [
            _SPLINE_PAD if o == 3 and m != n else 0 for m, n, o in zip(in_shape, shape, orders, strict=True)
        ]
        self.taps: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for m, n, order, pad in zip(in_shape, shape, orders, self.pads, strict=True):
            if m == n:
                self.taps.append(None)
                continue
            idx, w = _taps(int(m), int(n), order, pad)
            self.taps.append(
                (torch.from_numpy(idx).to(self.device), torch.from_numpy(w.astype(np.float32)).to(self.device))
            )

    def slab(self, source: torch.Tensor, start: int, stop: int, value: int | None = None) -> torch.Tensor:
        """Output planes ``start:stop`` (first axis) from ``source``: padded coefficients or plain values, or
        a label map of which the 0/1 mask of class ``value`` is interpolated. float32 on the plan's device."""
        import torch

        def onehot(x: torch.Tensor) -> torch.Tensor:
            return (x == value).to(torch.float32) if value is not None else x.to(torch.float32)

        first = self.taps[0]
        if first is None:
            out = onehot(source[start:stop])
        else:
            out = _combine(source, 0, first[0][:, start:stop], first[1][:, start:stop], onehot)
        for axis in (1, 2):
            taps = self.taps[axis]
            if taps is not None:
                out = _combine(out, axis, taps[0], taps[1], None)
        return out


def _combine(x: torch.Tensor, axis: int, idx: torch.Tensor, w: torch.Tensor, convert) -> torch.Tensor:
    """sum over taps t of ``convert(x.index_select(axis, idx[t])) * w[t]`` (weights along ``axis``)."""
    view = [1, 1, 1]
    view[axis] = -1
    acc = None
    for t in range(idx.shape[0]):
        picked = x.index_select(axis, idx[t])
        if convert is not None:
            picked = convert(picked)
        term = picked * w[t].view(view)
        acc = term if acc is None else acc.add_(term)
    assert acc is not None
    return acc


def _slabs(n: int, slab: int) -> list[tuple[int, int]]:
    step = max(1, int(slab))
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _orders(order: int, axis: int | None, out_of_plane: int = 0) -> list[int]:
    return [out_of_plane if a == axis else order for a in range(3)]


def resample_image(
    image: np.ndarray,
    shape: Sequence[int],
    *,
    axis: int | None = None,
    order: int = 3,
    device: str | None = None,
    slab: int = SLAB,
) -> np.ndarray:
    """Resample channels (C, D, H, W) to (C, *shape), float32: splines of ``order`` (nnU-Net's 3), and
    nearest neighbour along ``axis`` (the out-of-plane axis of thick slices, see :func:`separate_axis`).

    Equal to ``scipy.ndimage.zoom(order=order, mode="nearest", grid_mode=True)`` per channel (and per slice in
    the plane when ``axis`` is given, as nnU-Net) up to float32 rounding; see docs/data.md for the tolerance.
    """
    import torch

    shape = tuple(int(n) for n in shape)
    in_shape = tuple(int(n) for n in image.shape[1:])
    out = np.empty((image.shape[0], *shape), dtype=np.float32)
    if in_shape == shape:
        out[...] = image
        return out
    plan = _Plan(in_shape, shape, _orders(order, axis), device or resample_device())
    for c in range(image.shape[0]):
        coef = np.pad(
            np.asarray(image[c], dtype=np.float32), [(p, p) for p in plan.pads], mode="edge"
        )
        if order > 1:
            for a, p in enumerate(plan.pads):
                if p:
                    ndimage.spline_filter1d(coef, order, axis=a, output=coef, mode="nearest")
        source = torch.from_numpy(coef).to(plan.device)
        del coef
        for start, stop in _slabs(shape[0], slab):
            out[c, start:stop] = plan.slab(source, start, stop).cpu().numpy()
        del source
    return out


def present_classes(label: np.ndarray, chunk: int = 1 << 22) -> dict[int, int]:
    """Voxel count of every value present in a non-negative integer label map, counted with ``bincount`` in
    chunks (a label map of ``n`` voxels costs ``chunk`` x 8 bytes, not ``n`` x 8)."""
    flat = np.asarray(label).reshape(-1)
    counts = np.zeros(0, dtype=np.int64)
    for start in range(0, flat.size, chunk):
        part = np.bincount(flat[start:start + chunk].astype(np.intp))
        if len(part) > len(counts):
            counts = np.concatenate([counts, np.zeros(len(part) - len(counts), dtype=np.int64)])
        counts[: len(part)] += part
    return {int(v): int(n) for v, n in enumerate(counts) if n}


def resample_label(
    label: np.ndarray,
    shape: Sequence[int],
    *,
    axis: int | None = None,
    device: str | None = None,
    slab: int = SLAB,
) -> np.ndarray:
    """Resample a label map (D, H, W) of non-negative integers to ``shape`` as nnU-Net does: the 0/1 mask of
    each class is interpolated linearly and thresholded at 0.5 (later classes win ties), with nearest
    neighbour along ``axis`` (thick slices). Same dtype; classes one after another, slab by slab."""
    import torch

    shape = tuple(int(n) for n in shape)
    if tuple(label.shape) == shape:
        return np.array(label)
    if label.size and label.min() < 0:
        raise ValueError("resample_label needs non-negative labels")
    classes = [v for v in present_classes(label) if v != 0]
    plan = _Plan(label.shape, shape, _orders(1, axis), device or resample_device())
    source = torch.from_numpy(np.ascontiguousarray(label)).to(plan.device)
    out = np.zeros(shape, dtype=label.dtype)
    for start, stop in _slabs(shape[0], slab):
        part = out[start:stop]
        for value in classes:
            part[(plan.slab(source, start, stop, value) >= 0.5).cpu().numpy()] = value
    return out


def resample_nearest(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of a (D, H, W) array (a mask), equal to ``zoom(order=0, grid_mode=True,
    mode="nearest")``; the only memory is the output."""
    idx = [_taps(m, int(n), 0, 0)[0][0] for m, n in zip(volume.shape, shape, strict=True)]
    return np.asarray(volume)[np.ix_(*idx)]


def foreground_locations(
    label: np.ndarray, counts: dict[int, int], samples: int, rng: np.random.Generator, chunk: int = 1 << 22
) -> dict[int, np.ndarray]:
    """Voxel coordinates (N, 3) int32 of each foreground class in ``counts``, at most ``samples`` of them,
    drawn uniformly without replacement, in C order. The same draws as taking ``np.argwhere(label == value)``
    and ``rng.choice(len(coords), samples, replace=False)`` (sorted) for each class with more voxels, without
    ever listing every voxel: the label map is scanned in chunks."""
    flat = np.asarray(label).reshape(-1)
    out: dict[int, np.ndarray] = {}
    for value, n in sorted(counts.items()):
        if value == 0 or n == 0:
            continue
        wanted = np.sort(rng.choice(n, samples, replace=False)) if n > samples else None
        found: list[np.ndarray] = []
        seen = 0
        for start in range(0, flat.size, chunk):
            hits = np.flatnonzero(flat[start:start + chunk] == value) + start
            if wanted is None:
                found.append(hits)
            else:
                lo, hi = np.searchsorted(wanted, [seen, seen + len(hits)])
                found.append(hits[wanted[lo:hi] - seen])
            seen += len(hits)
        flat_idx = np.concatenate(found) if found else np.zeros(0, dtype=np.intp)
        out[value] = np.stack(np.unravel_index(flat_idx, label.shape), axis=1).astype(np.int32)
    return out


def voxel_factor(spacing: Sequence[float], target: Sequence[float]) -> float:
    """How many times more voxels ``target`` spacing makes than ``spacing``."""
    return math.prod(s / t for s, t in zip(spacing, target, strict=True))


#: A target finer than the data's median spacing by more than this along an axis gets a note.
FINER_NOTE_FACTOR = 2.0


def spacing_note(median: Sequence[float], target: Sequence[float], factor: float = FINER_NOTE_FACTOR) -> str | None:
    """A note (not an error) when ``target`` spacing is finer than the data's ``median`` spacing by more than
    ``factor`` along an axis: how many times more voxels it makes, and ``--median-spacing`` as the way out.
    None when it is not."""
    finer = [a for a, (m, t) in enumerate(zip(median, target, strict=True)) if m / t > factor]
    if not finer:
        return None
    mm = lambda values: " x ".join(f"{v:.3g}" for v in values)  # noqa: E731
    names = ", ".join("DHW"[a] for a in finer)
    return (
        f"note: the target spacing {mm(target)} mm is finer than the data's median spacing {mm(median)} mm "
        f"by more than {factor:g}x along {names}: every case gets {voxel_factor(median, target):.1f} times as "
        "many voxels as at the median spacing, and every training step and sliding window grows with them. "
        "`--median-spacing` resamples to the data's own median spacing instead (nnU-Net's choice)"
    )


def preprocessed_note(pre) -> str | None:  # type: ignore[no-untyped-def]
    """:func:`spacing_note` for preprocessed data (``Preprocessed``): its target against the median of its
    cases' original spacings."""
    if not pre.case_ids:
        return None
    median = np.median([pre.meta(c).original_spacing for c in pre.case_ids], axis=0)
    return spacing_note([float(m) for m in median], pre.spacing)
