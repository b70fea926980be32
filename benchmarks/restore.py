"""Back to the original grid: the label map of nearest-neighbour resampling vs. nnU-Net's way (probabilities
resampled linearly, argmax on the original grid), on small spherical lesions; the time of both.

Run by hand: ``.venv/bin/python benchmarks/restore.py [--seeds 5] [--radii 2 3 4] [--spacing 0.7]``.

Each volume is 48^3 voxels of 2 mm with 8 spheres of one radius (in original voxels) at random sub-voxel
centres; the reference is the original voxels whose centre lies inside a sphere. It is preprocessed to a finer
(or, with ``--spacing 3``, coarser) isotropic grid by the real pipeline, and the "prediction" on that grid is
one of two:

* ``smooth``: what a good network gives, probabilities of the true (continuous) spheres with a soft edge,
  ``sigmoid((r - d) / w)`` at each preprocessed voxel centre, ``w`` = a quarter of a preprocessed voxel;
* ``reference``: the reference's one-hot classes resampled linearly to the preprocessed grid.

Both are brought back with ``restore_prediction`` (argmax on the preprocessed grid, then nearest neighbour)
and ``restore_segmentation`` (probabilities resampled linearly, argmax on the original grid) and scored
against the reference (Dice pooled over the 8 lesions of a volume). Prints Markdown tables for
docs/benchmarks.md; the timing is the best of 3 on a 3-class volume of 160 x 160 x 80 voxels of 1.5 mm
preprocessed to 0.7 mm.
"""

from __future__ import annotations

import argparse
import time

import nibabel as nib
import numpy as np

from scnas_dsl.data.pipeline import run_pipeline
from scnas_dsl.data.preprocess import (
    CaseMeta,
    Normalization,
    restore_prediction,
    restore_segmentation,
)

SHAPE = (48, 48, 48)
SPACING = 2.0
LESIONS = 8


def _meta(shape: tuple[int, ...], spacing: float, target: float) -> CaseMeta:
    """The geometry record of a RAS volume of ``shape`` voxels of ``spacing`` mm preprocessed to ``target``."""
    image = np.ones((1, *shape), np.float32)
    ref = nib.Nifti1Image(image[0], np.diag([spacing, spacing, spacing, 1.0]))
    return run_pipeline("bench", image, None, ref, (target,) * 3, Normalization(scheme="zscore_nonzero"))[2]


def _centres(meta: CaseMeta) -> list[np.ndarray]:
    """Coordinates (in original voxels) of the preprocessed voxel centres, one array per axis (zoom's
    grid_mode: edges aligned)."""
    return [(np.arange(n) + 0.5) * o / n - 0.5 for n, o in zip(meta.shape, meta.cropped_shape, strict=True)]


def _lesions(rng: np.random.Generator, radius: float) -> list[np.ndarray]:
    centres: list[np.ndarray] = []
    while len(centres) < LESIONS:
        c = rng.uniform(radius + 2, np.array(SHAPE) - radius - 3)
        if all(np.linalg.norm(c - o) > 2 * radius + 2 for o in centres):
            centres.append(c)
    return centres


def _distance(axes: list[np.ndarray], centres: list[np.ndarray]) -> np.ndarray:
    """Distance (original voxels) from each grid point to the nearest lesion centre."""
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    return np.min([np.sqrt(sum((g - c[a]) ** 2 for a, g in enumerate(grids))) for c in centres], axis=0)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def dice_study(radii: list[float], seeds: int, target: float) -> dict[tuple[str, float], list[tuple[float, float]]]:
    from scipy import ndimage

    meta = _meta(SHAPE, SPACING, target)
    fine = _centres(meta)
    width = target / SPACING / 4  # a quarter of a preprocessed voxel, in original voxels
    out: dict[tuple[str, float], list[tuple[float, float]]] = {}
    for radius in radii:
        for seed in range(seeds):
            centres = _lesions(np.random.default_rng(seed), radius)
            reference = _distance([np.arange(n, dtype=float) for n in SHAPE], centres) <= radius
            smooth = 1 / (1 + np.exp(-(radius - _distance(fine, centres)) / width))
            onehot = ndimage.zoom(reference.astype(np.float32), [n / o for n, o in zip(meta.shape, SHAPE, strict=True)],
                                  order=1, mode="nearest", grid_mode=True)
            for name, p1 in (("smooth", smooth), ("reference", onehot)):
                probs = np.stack([1 - p1, p1]).astype(np.float32)
                nearest = np.asarray(restore_prediction(probs.argmax(0), meta).dataobj) == 1
                linear = np.asarray(restore_segmentation(probs, meta).dataobj) == 1
                out.setdefault((name, radius), []).append((_dice(nearest, reference), _dice(linear, reference)))
    return out


def timing(repeat: int = 3) -> tuple[float, float]:
    meta = _meta((160, 160, 80), 1.5, 0.7)
    rng = np.random.default_rng(0)
    probs = rng.random((3, *meta.shape), dtype=np.float32)
    probs /= probs.sum(0)
    best = [np.inf, np.inf]
    for _ in range(repeat):
        t = time.perf_counter()
        restore_prediction(probs.argmax(0), meta)
        best[0] = min(best[0], time.perf_counter() - t)
        t = time.perf_counter()
        restore_segmentation(probs, meta)
        best[1] = min(best[1], time.perf_counter() - t)
    return best[0], best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--radii", type=float, nargs="+", default=[2, 3, 4])
    parser.add_argument("--spacing", type=float, default=0.7, help="preprocessed spacing (mm), isotropic")
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args()
    results = dice_study(args.radii, args.seeds, args.spacing)
    print(f"2 mm -> {args.spacing:g} mm, {args.seeds} seeds x {LESIONS} lesions")
    print("| prediction | radius (voxels of 2 mm) | Dice nearest neighbour | Dice probabilities | gain (min / max) |")
    print("| --- | --- | --- | --- | --- |")
    for (name, radius), pairs in results.items():
        a = np.array(pairs)
        gain = a[:, 1] - a[:, 0]
        print(f"| {name} | {radius:g} | {a[:, 0].mean():.3f} ± {a[:, 0].std():.3f} | "
              f"{a[:, 1].mean():.3f} ± {a[:, 1].std():.3f} | {gain.mean():+.3f} ({gain.min():+.3f} / {gain.max():+.3f}) |")
    if not args.no_timing:
        nearest, linear = timing()
        print(f"time, 3 classes, 160x160x80 at 1.5 mm from 0.7 mm: nearest {nearest:.2f} s, "
              f"probabilities {linear:.2f} s, ratio {linear / nearest:.1f}")


if __name__ == "__main__":
    main()
