"""Does the search find a planted operation? A study run by hand; results in docs/benchmarks.md.

The planted task: volumes of white Gaussian noise, and a label that marks the voxels which are the maximum
of their own 5x5x5 neighbourhood (and above the mean). Max pooling answers it directly: two chained 3x3x3
max poolings are a 5x5x5 one, and ``max5(x) - x`` is exactly zero at a peak and positive elsewhere, while
a convolution, an average or a dilated convolution can only approximate the 124 comparisons (the best
linear test, centre minus the window's mean, reaches Dice ~0.65). The stem is a 1x1x1 block, so every
spatial operation of the network is a searched one; volumes are as large as the patch, so a peak at a patch
border is a peak of the volume. The small space (a one-level U-Net of two-node cells) offers
``conv3, dil2, maxpool, avgpool, skip, none`` on every edge.

The second task (``--task context``; everything under ``OUT/context``): white noise, and in each volume
``--centres`` crosses whose six arm ends, ``--distance`` (6) voxels from the centre along the axes, are raised
by ``--amplitude`` (3 std); the label is the centre voxel alone, itself plain noise. As many decoy crosses of
half the distance are unlabelled. Only a receptive field that reaches 6 voxels at full resolution sees the
evidence: two chained ``dil3 = sep_conv(kernel=3, dilation=3)`` do, in one cell (and express the ideal filter,
the six arm ends summed, exactly), while two ``conv3`` reach 2 and even four (``enc`` and ``dec``) reach 4.
One ``dil3`` alone reaches 3, the decoys' distance: the operation pays only chained, in combination. The
space is the same with ``dil3`` in place of ``dil2``. "Where it pays": ``dil3`` chained in ``enc``
(``n1 = dil3(n0) + ...`` with ``dil3`` on an edge into ``n0``).

Phases (``--phases``, default all, in this order; a finished run is reused when its settings are unchanged,
so an interrupted study continues where it stopped):

1. ``data``: the generated data set (MSD layout, NIfTI) and its preprocessing, under ``OUT/data``.
2. ``check``: before any search, hand-written genotypes of one wiring that put ``maxpool`` or each other
   operation on the same edges of the ``enc`` cell, plus all-``conv3``, retrained with the one recipe and
   several seeds: the planted operation must win clearly, or the task does not test the search.
3. ``search``: pair sampling under the paper's weight-Adam betas (0.1, 0.001) and under (0.9, 0.999),
   several seeds each; single and full sampling (paper betas); ``run_search(SearchConfig(...))``.
   Reported: the share of live edges whose derived operation is ``maxpool`` against its share among random
   genotypes, ``maxpool`` in the ``enc`` cell, and the softmax(alpha) mass on ``maxpool``.
   With ``--arch-warmup N`` each search pauses after its warm-up and keeps a copy of its run folder
   (``RUN_warmup``, a supernet to score later; benchmarks/ranking.py does).
4. ``select``: from each pair search's run folder, the genotype of every method of ``--methods`` (alpha,
   projection, sampled; ``scnas_dsl.training.derive_run.derive``) with its self-check, and whether ``maxpool``
   lands in the ``enc`` cell.
5. ``retrain``: the searched genotypes (with ``select``: those of ``--retrain-method``, by default the method
   with the most searches with ``maxpool`` in ``enc``, chosen before any retraining), random genotypes matched
   in FLOPs to the searched genotypes' median (``scnas_dsl.nn.random_genotypes.sample_genotypes``), the
   all-``conv3`` baseline and (``--unet``) specs/baselines/unet3d.scn at the stem width whose MACs match the
   searched genotypes' median; every seed of ``--retrain-seeds``; one recipe (``--train-epochs``,
   ``--train-steps``, ``--train-lr``); score: the validation Dice of the run's last epoch (last weights, no model
   selection), a genotype's Dice the mean over its seeds.
6. ``report``: Dice mean and std per group, each searched genotype's rank among the random ones, one-sided
   permutation tests (searched > random, searched > U-Net; paper betas vs (0.9, 0.999)), the noise floor (mean
   per-genotype seed std against the std of the genotype means), ``results.json`` and ``search_validity.png``
   in the output folder; the tables are printed in Markdown.

    .venv/bin/python benchmarks/search_validity.py --jobs 2                  # the earlier run, ~20 min on 2 cores
    .venv/bin/python benchmarks/search_validity.py --jobs 2 --train-epochs 16 --arch-warmup 4 --search-epochs 12 \
        --pair-betas standard --single-seeds --full-seeds --retrain-seeds 0 1 2   # issue 18's second run
    .venv/bin/python benchmarks/search_validity.py --quick --out /tmp/sv-q   # smoke run, ~1 min
    .venv/bin/python benchmarks/search_validity.py --device cuda --shape 48 48 48 --patch 48 48 48 \\
        --stem-width 16 --search-epochs 30 --search-steps 50 --train-epochs 30 --pair-seeds 0 1 2 3 4 --random 16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ZERO = "none"
OP_DEFS = {"conv3": "conv(kernel=3)", "dil2": "sep_conv(kernel=3, dilation=2)",
           "dil3": "sep_conv(kernel=3, dilation=3)", "maxpool": "max_pool(kernel=3)",
           "avgpool": "avg_pool(kernel=3)", "skip": "identity", "none": "zero"}
# Each task: its planted operation, the operation set of its space (the same shape: six operations, the
# planted one among them), the other operations of the hand check, and the data set's folder name.
TASKS: dict[str, dict[str, Any]] = {
    "peaks": {"planted": "maxpool", "ops": ("conv3", "dil2", "maxpool", "avgpool", "skip", "none"),
              "check": ("maxpool", "conv3", "avgpool", "dil2", "skip"), "dataset": "Task_PlantedMax"},
    "context": {"planted": "dil3", "ops": ("conv3", "dil3", "maxpool", "avgpool", "skip", "none"),
                "check": ("dil3", "conv3", "maxpool", "avgpool", "skip"), "dataset": "Task_PlantedContext"},
}
TASK = "peaks"
PLANTED: str = TASKS[TASK]["planted"]
OPS: tuple[str, ...] = TASKS[TASK]["ops"]


def use_task(name: str) -> None:
    """Make ``name`` the task of this process (module-wide: its planted operation and operation set)."""
    global TASK, PLANTED, OPS
    TASK, PLANTED, OPS = name, TASKS[name]["planted"], TASKS[name]["ops"]


def space_text(width: int, stem_kernel: int) -> str:
    """The study's search space for the current task."""
    lines = "\n".join(f"    {op} = {OP_DEFS[op]}" for op in OPS)
    return SPACE_TEXT.format(width=width, stem_kernel=stem_kernel, op_lines=lines)
SPACE_NAME = "planted"
BETAS = {"paper": (0.1, 0.001), "standard": (0.9, 0.999)}

SPACE_TEXT = """\
# The search space of benchmarks/search_validity.py: a one-level U-Net of two-node cells whose edges
# choose among a small operation set that holds the planted operation.
space planted {{
  ops small {{
{op_lines}
  }}

  cell enc normal {{ nodes 2; inputs 2; ops small }}
  cell red reduction {{ nodes 2; inputs 2; ops small }}
  cell dec normal {{ nodes 2; inputs 2; ops small }}
  cell exp expansion {{ nodes 2; inputs 2; ops small }}

  unet {{
    dims 3
    stem conv_block(kernel={stem_kernel}) -> {width}
    encoder enc red
    bridge enc
    decoder exp dec
    head logits(kernel=1)
    width_factor 2
    share by_type
    node_width split
  }}
}}
"""

CELLS = ("enc", "red", "dec", "exp")
UNET = ROOT / "specs" / "baselines" / "unet3d.scn"
METHODS = ("alpha", "projection", "sampled")


# ------------------------------------------------------------------------------------------------ data


def planted_case(shape: Sequence[int], sigma: float, threshold: float, window: int, contrast: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One case: a noise image (positive everywhere, so no crop) and its label (D, H, W) uint8: 1 where
    the voxel is the maximum of its ``window``^3 neighbourhood (outside the volume counts as -inf, as in max
    pooling's padding) and its standardised value is above ``threshold``. The noise's amplitude varies
    smoothly over the volume by a factor ``contrast`` (log-uniformly), which leaves the peaks where they are
    but makes a fixed threshold on a linear filter wrong in the faint or the strong parts."""
    from scipy import ndimage

    field = rng.standard_normal(tuple(shape)).astype(np.float64)
    if sigma > 0:
        field = ndimage.gaussian_filter(field, sigma, mode="reflect")
    field = (field - field.mean()) / field.std()
    if contrast > 1:
        slow = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), max(shape) / 6, mode="wrap")
        slow = (slow - slow.min()) / max(slow.max() - slow.min(), 1e-12)
        amplitude = np.exp(np.log(contrast) * (slow - 1.0))
    else:
        amplitude = np.ones(tuple(shape))
    # the label is computed on the stored (float32) image, so that rounding cannot move a peak
    image = (1000.0 + 100.0 * amplitude * field).astype(np.float32)
    peak = ndimage.maximum_filter(image, size=window, mode="constant", cval=-np.inf)
    label = (image >= peak) & (field > threshold)
    return image, label.astype(np.uint8)


def context_case(shape: Sequence[int], distance: int, centres: int, amplitude: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One case of the context task: white noise (standardised), and ``centres`` marked voxels whose six
    neighbours at ``distance`` along the axes (a cross of arms ``distance`` long) are raised by ``amplitude``;
    the label is the centre voxel alone. As many decoys, crosses of half the distance, are unlabelled. The
    centre itself is noise: only the voxels at the arms' ends tell, so an answer needs a receptive field that
    reaches ``distance`` without blurring the half-distance decoys into it. Centres and decoys keep their
    arms inside the volume and do not share a voxel with another cross."""
    field = rng.standard_normal(tuple(shape))
    field = (field - field.mean()) / field.std()
    label = np.zeros(tuple(shape), dtype=np.uint8)
    taken = np.zeros(tuple(shape), dtype=bool)
    axes = np.eye(3, dtype=int)

    def place(arm: int, marked: bool) -> bool:
        for _ in range(200):
            c = np.array([rng.integers(arm, n - arm) for n in shape])
            points = [tuple(c)] + [tuple(c + sign * arm * axes[i]) for i in range(3) for sign in (-1, 1)]
            if any(taken[max(q[0] - 1, 0):q[0] + 2, max(q[1] - 1, 0):q[1] + 2, max(q[2] - 1, 0):q[2] + 2].any()
                   for q in points):
                continue
            for q in points:
                taken[q] = True
            for q in points[1:]:
                field[q] += amplitude
            if marked:
                label[tuple(c)] = 1
            return True
        return False

    for _ in range(centres):
        place(distance, True)
        place(max(distance // 2, 1), False)
    image = (1000.0 + 100.0 * field).astype(np.float32)
    return image, label


def make_dataset(out: Path, cases: int, shape: Sequence[int], sigma: float, threshold: float, window: int,
                 contrast: float, seed: int, task: str = "peaks", distance: int = 6, centres: int = 12,
                 amplitude: float = 3.0) -> Path:
    """Write the planted data set of ``task`` (Medical Segmentation Decathlon layout, 1 mm isotropic) into
    ``out``."""
    import nibabel as nib

    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    children = np.random.SeedSequence(seed).spawn(cases)
    training = []
    for index in range(cases):
        rng = np.random.default_rng(children[index])
        if task == "context":
            image, label = context_case(shape, distance, centres, amplitude, rng)
        else:
            image, label = planted_case(shape, sigma, threshold, window, contrast, rng)
        case = f"planted_{index:03d}"
        for folder, data in (("imagesTr", image), ("labelsTr", label)):
            img = nib.Nifti1Image(data, np.eye(4))
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, out / folder / f"{case}.nii.gz")
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    name, what, target = (("PlantedContext", "centres of crosses at a distance in noise", "centre") if task == "context"
                          else ("PlantedMax", "local maxima of noise", "peak"))
    meta = {"name": name, "description": f"{what} (benchmarks/search_validity.py)",
            "tensorImageSize": "3D", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": target},
            "numTraining": cases, "numTest": 0, "training": training, "test": []}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def linear_reference(pre_root: Path, cases: list[str], window: int = 3, distance: int | None = None) -> float:
    """Dice of the best single threshold on a linear filter: centre minus the window's mean (the peaks task),
    or with ``distance`` the sum of the six voxels at that distance along the axes (the context task's ideal
    filter, which the planted genotype, two chained ``dil3``, can express exactly)."""
    from scipy import ndimage

    from scnas_dsl.data.preprocess import Preprocessed

    pre = Preprocessed(pre_root)
    scores, labels = [], []
    for case in cases:
        image, label = pre.load(case, mmap=False)
        x = np.asarray(image[0], dtype=np.float64)
        if distance is None:
            scores.append((x - ndimage.uniform_filter(x, window, mode="constant")).ravel())
        else:
            kernel = np.zeros((2 * distance + 1,) * 3)
            for i in range(3):
                for end in (0, 2 * distance):
                    index = [distance] * 3
                    index[i] = end
                    kernel[tuple(index)] = 1.0
            scores.append(ndimage.correlate(x, kernel, mode="constant").ravel())
        labels.append(np.asarray(label).ravel() > 0)
    s, y = np.concatenate(scores), np.concatenate(labels)
    best = 0.0
    grid = np.linspace(0.80, 0.995, 80) if distance is None else np.linspace(0.99, 0.99999, 200)  # rarer labels
    for q in grid:
        p = s > np.quantile(s, q)
        best = max(best, 2.0 * float((p & y).sum()) / float(p.sum() + y.sum()))
    return best


# ------------------------------------------------------------------------------------------- genotypes


def genotype_text(name: str, cells: dict[str, dict[str, list[tuple[str, str]]]]) -> str:
    """``.scn`` text of a genotype of the planted space: cell -> node -> [(op, source)]."""
    lines = ['import "space.scn"', "", f"genotype {name} of {SPACE_NAME} {{"]
    for cell, nodes in cells.items():
        lines.append(f"  cell {cell} {{")
        for node, edges in nodes.items():
            lines.append(f"    {node} = " + " + ".join(f"{op}({src})" for op, src in edges))
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def hand_genotypes(window: int = 3) -> dict[str, str]:
    """The planted-op check: one wiring, with the task's planted operation or another operation P on the same
    edges of the ``enc`` cell (level 0, and the bridge), the same fixed cells elsewhere, and all-``conv3``.
    Window 5 (and always on the context task): ``n0 = P(in0)``, ``n1 = P(n0) + skip(in1)`` (two 3^3 max
    poolings are a 5^3 one, so with in1 = -x, n1 = max5(x) - x is zero exactly at the peaks; two chained
    ``dil3`` reach the context task's arms at distance 6, where two ``conv3`` reach 2); window 3:
    ``n0 = P(in0) + skip(in1)``, ``n1 = P(n0)``. The other cells: ``red`` and ``exp`` two chained ``conv3``,
    ``dec`` ``n0 = skip(in1)`` (the encoder's output, summed in), ``n1 = conv3(n0) + skip(in0)``."""
    fixed = {
        "red": {"n0": [("conv3", "in1")], "n1": [("conv3", "n0")]},
        "exp": {"n0": [("conv3", "in1")], "n1": [("conv3", "n0")]},
        "dec": {"n0": [("skip", "in1")], "n1": [("conv3", "n0"), ("skip", "in0")]},
    }
    out = {}
    for op in TASKS[TASK]["check"]:
        if window == 3 and TASK == "peaks":
            enc = {"n0": [(op, "in0"), ("skip", "in1")], "n1": [(op, "n0")]}
        else:
            enc = {"n0": [(op, "in0")], "n1": [(op, "n0"), ("skip", "in1")]}
        cells = {"enc": enc, **fixed}
        out[f"hand_{op}"] = genotype_text(f"hand_{op}", {c: cells[c] for c in CELLS})
    every = {"n0": [("conv3", "in0"), ("conv3", "in1")],
             "n1": [("conv3", "in0"), ("conv3", "in1"), ("conv3", "n0")]}
    out["all_conv3"] = genotype_text("all_conv3", {c: every for c in CELLS})
    return out


def op_counts(genotype: Any, cells: Sequence[Any] | None = None) -> dict[str, int]:
    """How many live (kept) edges of a genotype (or of some of its cells) choose each operation."""
    counts = {op: 0 for op in OPS if op != ZERO}
    for cell in genotype.cells if cells is None else cells:
        for node in cell.nodes:
            for edge in node.edges:
                if edge.op != ZERO:
                    counts[edge.op] = counts.get(edge.op, 0) + 1
    return counts


def enc_chain(genotype: Any) -> bool:
    """Whether the ``enc`` cell chains the planted operation: ``n1`` takes it from ``n0``, which has it on an
    edge of its own (the hand genotype's wiring; what the task pays for)."""
    cell = genotype.cell("enc")
    if cell is None:
        return False
    chosen = cell.chosen()
    return chosen.get(("n0", "n1")) == PLANTED and any(op == PLANTED for (_, dst), op in chosen.items() if dst == "n0")


def planted_share(genotype: Any) -> float:
    counts = op_counts(genotype)
    total = sum(counts.values())
    return counts.get(PLANTED, 0) / total if total else 0.0


# ------------------------------------------------------------------------------------------------ runs


def write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` atomically unless ``path`` holds it already (runs in parallel read the same files)."""
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Bench:
    """Settings, folders and the cache of finished runs."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        use_task(getattr(args, "task", "peaks"))
        # the context task keeps everything (data, runs, results) in its own subfolder: its runs have the same
        # names as the peaks task's
        self.out = Path(args.out).resolve() / ("context" if TASK == "context" else "")
        self.data = self.out / "data" / TASKS[TASK]["dataset"]
        self.pre = self.out / "data" / "preprocessed"
        self.runs = self.out / "runs"
        self.results = self.out / "results"
        self.genotypes = self.out / "genotypes"
        for folder in (self.runs, self.results, self.genotypes):
            folder.mkdir(parents=True, exist_ok=True)
        self.space_file = self.genotypes / "space.scn"
        write_if_changed(self.space_file, space_text(args.stem_width, args.stem_kernel))

    # --- data
    def prepare_data(self) -> None:
        from scnas_dsl.data.preprocess import preprocess_dataset

        a = self.args
        settings = self._data_key()
        stamp = self.out / "data" / "settings.json"
        if stamp.is_file() and json.loads(stamp.read_text()) == settings and (self.pre / "preprocessed.json").is_file():
            return
        if self.out.joinpath("data").exists():
            import shutil

            shutil.rmtree(self.out / "data")
        make_dataset(self.data, a.cases, a.shape, a.sigma, a.threshold, a.window, a.contrast, a.data_seed,
                     task=TASK, distance=a.distance, centres=a.centres, amplitude=a.amplitude)
        preprocess_dataset(self.data, out=self.pre, spacing=None, progress=False)
        stamp.write_text(json.dumps(settings))

    def fold(self) -> Any:
        from scnas_dsl.data.preprocess import Preprocessed
        from scnas_dsl.data.splits import get_fold

        return get_fold(Preprocessed(self.pre), 0)

    # --- cache
    def _cached(self, name: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        path = self.results / f"{name}.json"
        if path.is_file():
            record = json.loads(path.read_text())
            if record.get("settings") == settings:
                return record
        return None

    def _store(self, name: str, record: dict[str, Any]) -> dict[str, Any]:
        (self.results / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
        return record

    # --- retraining
    def train_settings(self, seed: int) -> dict[str, Any]:
        a = self.args
        return {"epochs": a.train_epochs, "steps": a.train_steps, "batch": a.batch_size, "patch": list(a.patch),
                "stem_width": a.stem_width, "stem_kernel": a.stem_kernel, "lr": a.train_lr, "seed": seed,
                "data": self._data_key()}

    def _data_key(self) -> dict[str, Any]:
        """The data's settings (the peaks task's as before the context task existed, so its runs stay cached)."""
        a = self.args
        if TASK == "context":
            return {"task": TASK, "cases": a.cases, "shape": list(a.shape), "distance": a.distance,
                    "centres": a.centres, "amplitude": a.amplitude, "seed": a.data_seed}
        return {"cases": a.cases, "shape": list(a.shape), "sigma": a.sigma, "threshold": a.threshold,
                "window": a.window, "contrast": a.contrast, "seed": a.data_seed}

    def recipe_tag(self) -> str:
        """'' for the first study's recipe (8 epochs x 25 steps, lr 3e-3), else a suffix naming the recipe,
        so that runs of several recipes are cached side by side."""
        a = self.args
        if (a.train_epochs, a.train_steps, a.train_lr) == (8, 25, 3e-3):
            return ""
        return f"_e{a.train_epochs}x{a.train_steps}_lr{a.train_lr:g}"

    def train_key(self, name: str, seed: int) -> str:
        return f"train_{name}_s{seed}{self.recipe_tag()}"

    def cached_train(self, name: str, genotype_text_: str, seed: int) -> dict[str, Any] | None:
        return self._cached(self.train_key(name, seed), {**self.train_settings(seed), "genotype": genotype_text_})

    def retrain(self, name: str, genotype_text_: str, seed: int | None = None,
                stem_width: int | None = None) -> dict[str, Any]:
        """Retrain a genotype from scratch with the one recipe; Dice of the last epoch's weights.
        ``stem_width`` (default ``--stem-width``): another width, for a baseline matched in MACs."""
        from scnas_dsl.loader import load
        from scnas_dsl.nn.cost import estimate
        from scnas_dsl.training.config import AdamConfig, PlateauConfig, TrainConfig
        from scnas_dsl.training.retrain import run_train

        a = self.args
        seed = a.train_seed if seed is None else seed
        settings = {**self.train_settings(seed), "genotype": genotype_text_}
        width = a.stem_width
        if stem_width is not None and stem_width != a.stem_width:
            settings["stem_width"] = width = stem_width
        key = self.train_key(name, seed)
        cached = self._cached(key, settings)
        if cached is not None:
            return cached
        file = self.genotypes / f"{name}.scn"
        write_if_changed(file, genotype_text_)
        space, genotype = load(file).genotype(name)
        cost = estimate(space, genotype=genotype, patch=tuple(a.patch), in_channels=1, num_classes=2,
                        stem_width=width)
        cfg = TrainConfig(data=str(self.pre), genotype=str(file), genotype_name=name, out=str(self.runs / key),
                          epochs=a.train_epochs, batches_per_epoch=a.train_steps, batch_size=a.batch_size,
                          patch=tuple(a.patch), stem_width=width, device=a.device, seed=seed,
                          spacing=None, augment=False, progress=False, val_every=a.train_epochs,
                          optimizer=AdamConfig(lr=a.train_lr, betas=(0.9, 0.999)),
                          plateau=PlateauConfig(factor=0.2, patience=max(30, a.train_epochs)))
        started = time.time()
        run_train(cfg, force=True)
        seconds = time.time() - started
        records = [json.loads(line) for line in (self.runs / key / "metrics.jsonl").read_text().splitlines()]
        last = records[-1]
        record = {"settings": settings, "name": name, "seed": seed, "dice": last["val_dice"], "train_loss": last["train_loss"],
                  "flops": cost.flops, "macs": cost.macs, "params": cost.params, "stem_width": width,
                  "seconds": round(seconds, 1),
                  "planted_share": planted_share(genotype), "op_counts": op_counts(genotype)}
        print(f"  retrained {name} (seed {seed}): Dice {record['dice']:.3f} ({seconds:.0f} s, {cost.flops / 1e6:.1f} MFLOPs)",
              flush=True)
        return self._store(key, record)

    # --- search
    def search_key(self, sampling: str, betas: str, seed: int) -> str:
        """The search's cache and run name (a warm-up names its epochs: its runs keep a snapshot)."""
        a = self.args
        tag = f"_w{a.arch_warmup}of{a.search_epochs}" if a.arch_warmup else ""
        return f"search_{sampling}_{betas}_s{seed}{tag}"

    def search(self, sampling: str, betas: str, seed: int) -> dict[str, Any]:
        """One search (``fair`` sampling: the genotype of the run's own selection, ``sampled``). With an
        architecture warm-up the search pauses at its end (``stop_after_epochs``), a copy of the run folder is
        kept as ``RUN_warmup`` (a supernet to score later) and the search resumes."""
        import shutil

        from scnas_dsl.training.config import AdamConfig, SearchConfig, SelectionConfig
        from scnas_dsl.training.search import run_search

        a = self.args
        name = self.search_key(sampling, betas, seed)
        settings = {"sampling": sampling, "betas": list(BETAS[betas]), "seed": seed, "epochs": a.search_epochs,
                    "steps": a.search_steps, "batch": a.batch_size, "patch": list(a.patch),
                    "stem_width": a.stem_width, "stem_kernel": a.stem_kernel, "weight_lr": a.search_lr, "arch_lr": a.arch_lr,
                    "arch_warmup": a.arch_warmup, "data": self._data_key()}
        cached = self._cached(name, settings)
        if cached is not None:
            return cached
        # the run's own choice: alpha (pair, single, full) or sampled (fair); no self-check here, the
        # selection phase derives every method from the run folder
        own = SelectionConfig(method="sampled" if sampling == "fair" else "alpha", check_samples=0)
        cfg = SearchConfig(data=str(self.pre), spec=str(self.space_file), out=str(self.runs / name),
                           epochs=a.search_epochs, batches_per_epoch=a.search_steps, batch_size=a.batch_size,
                           patch=tuple(a.patch), stem_width=a.stem_width, device=a.device, seed=seed,
                           spacing=None, augment=False, progress=False, sampling=sampling,
                           weight_optimizer=AdamConfig(lr=a.search_lr, betas=BETAS[betas]),
                           arch_optimizer=AdamConfig(lr=a.arch_lr, betas=(0.5, 0.999)),
                           arch_warmup_epochs=a.arch_warmup, selection=own)
        started = time.time()
        if a.arch_warmup:
            paused = run_search(cfg, force=True, stop_after_epochs=a.arch_warmup)
            assert paused is None
            snapshot = self.runs / f"{name}_warmup"
            if snapshot.exists():
                shutil.rmtree(snapshot)
            shutil.copytree(self.runs / name, snapshot)
            result = run_search(cfg, resume=True)
        else:
            result = run_search(cfg, force=True)
        seconds = time.time() - started
        assert result is not None
        from scnas_dsl.graph.printer import print_document
        from scnas_dsl.model import Document, Import

        gname = name.removeprefix("search_")
        genotype = result.genotype.model_copy(update={"name": gname})
        text = print_document(Document(imports=(Import(path="space.scn"),), genotypes=(genotype,)))
        probs = {}
        for key, logits in result.logits.items():
            p = logits.float().softmax(dim=1)
            probs[key] = p.mean(dim=0).tolist()
        mass = float(np.mean([row[OPS.index(PLANTED)] for row in probs.values()]))
        argmax_all = {key: [OPS[i] for i in logits.argmax(dim=1).tolist()] for key, logits in result.logits.items()}
        edges_all = [op for ops in argmax_all.values() for op in ops]
        nonzero = [op for op in edges_all if op != ZERO]
        record = {"settings": settings, "name": gname, "run": str(self.runs / name), "sampling": sampling,
                  "betas": betas, "seed": seed, "warmup_snapshot": str(self.runs / f"{name}_warmup") if a.arch_warmup else None,
                  "genotype_text": text, "planted_share": planted_share(genotype), "op_counts": op_counts(genotype),
                  "cell_counts": {c.cell: op_counts(genotype, [c]) for c in genotype.cells}, "enc_chain": enc_chain(genotype),
                  "argmax": argmax_all,
                  "planted_share_all_edges": (nonzero.count(PLANTED) / len(nonzero)) if nonzero else 0.0,
                  "planted_mass": mass, "mean_probabilities": probs, "pruning": result.pruning,
                  "seconds": round(seconds, 1)}
        print(f"  searched {gname}: {PLANTED} share {record['planted_share']:.2f} of live edges, "
              f"mass {mass:.3f} ({seconds:.0f} s)", flush=True)
        return self._store(name, record)


    # --- selection
    def select(self, run: str, method: str, name: str) -> dict[str, Any]:
        """The genotype ``method`` chooses from the search in ``run`` (``derive_run.derive``, the project's
        default ``SelectionConfig`` otherwise) and its self-check, cached; the text imports the genotypes
        folder's ``space.scn`` (the same space)."""
        from scnas_dsl.graph.printer import print_document
        from scnas_dsl.model import Document, Import
        from scnas_dsl.training.config import SelectionConfig
        from scnas_dsl.training.derive_run import derive, open_search

        a = self.args
        # fewer batches and draws than the defaults (8, 4): a projection's 20 edges x 6 candidates x draws x
        # batches scores take minutes each on a CPU otherwise; the same batches for every method's self-check
        selection_cfg = SelectionConfig(method=method, score_batches=a.score_batches,
                                        draws=a.projection_draws)
        settings = {"run": run, "method": method, "selection": selection_cfg.model_dump(),
                    "stamp": (Path(run) / "checkpoints" / "last.pt").stat().st_mtime}
        key = f"select_{name}"
        cached = self._cached(key, settings)
        if cached is not None:
            return cached
        started = time.time()
        search = open_search(run, device=self.args.device)
        selection, check, _ = derive(search, selection_cfg, out=Path(run) / f"genotype_{method}.scn", force=True)
        genotype = selection.genotype.model_copy(update={"name": name})
        text = print_document(Document(imports=(Import(path="space.scn"),), genotypes=(genotype,)))
        counts = {c.cell: op_counts(genotype, [c]) for c in genotype.cells}
        record = {"settings": settings, "name": name, "method": method, "genotype_text": text,
                  "planted_share": planted_share(genotype), "op_counts": op_counts(genotype), "cell_counts": counts,
                  "enc_planted": counts.get("enc", {}).get(PLANTED, 0), "enc_chain": enc_chain(genotype),
                  "self_check": None if check is None else {k: check[k] for k in ("rank", "of", "by", "score", "text")},
                  "details": {k: v for k, v in selection.details.items() if k in ("changed_from_alpha", "best", "note")},
                  "seconds": round(time.time() - started, 1)}
        print(f"  selected {name}: {PLANTED} in enc {record['enc_planted']} (chained: {record['enc_chain']}); "
              f"{check['text'] if check else ''} ({record['seconds']:.0f} s)", flush=True)
        return self._store(key, record)


# ------------------------------------------------------------------------------------------- statistics


def permutation_test(a: Sequence[float], b: Sequence[float], rounds: int = 20000, seed: int = 0) -> float:
    """One-sided p-value of mean(a) - mean(b) >= observed under random relabelling (exact when small)."""
    from itertools import combinations

    pooled, n = list(a) + list(b), len(a)
    observed = statistics.fmean(a) - statistics.fmean(b)
    total = sum(pooled)

    def diff(idx: Sequence[int]) -> float:
        s = sum(pooled[i] for i in idx)
        return s / n - (total - s) / (len(pooled) - n)

    if math.comb(len(pooled), n) <= rounds:
        diffs = [diff(c) for c in combinations(range(len(pooled)), n)]
        return sum(d >= observed - 1e-12 for d in diffs) / len(diffs)
    rng = random.Random(seed)
    hits = sum(diff(rng.sample(range(len(pooled)), n)) >= observed - 1e-12 for _ in range(rounds))
    return (hits + 1) / (rounds + 1)


def rank_among(value: float, others: Sequence[float]) -> int:
    """1 + how many of ``others`` are strictly better: 1 = better than every random genotype."""
    return 1 + sum(o > value for o in others)


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample std of the known values (None and NaN left out); NaN when none is known."""
    known = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not known:
        return float("nan"), float("nan")
    return statistics.fmean(known), (statistics.stdev(known) if len(known) > 1 else 0.0)


# ------------------------------------------------------------------------------------------------ phases


def _job(args: argparse.Namespace, kind: str, payload: tuple[Any, ...]) -> dict[str, Any]:
    """One search or retraining, in a worker process of :func:`run_jobs` (or in this one)."""
    import torch

    torch.set_num_threads(args.threads)
    bench = Bench(args)
    if kind == "select":  # (run, ((method, name), ...)): one process per run folder, which derive holds
        run, wanted = payload
        return [bench.select(run, method, name) for method, name in wanted]
    return bench.search(*payload) if kind == "search" else bench.retrain(*payload)


def run_jobs(bench: Bench, jobs: list[tuple[str, tuple[Any, ...]]]) -> list[dict[str, Any]]:
    """Run ``(kind, payload)`` jobs, ``--jobs`` at a time (fresh spawned processes), results in order."""
    if bench.args.jobs <= 1 or len(jobs) <= 1:
        return [_job(bench.args, kind, payload) for kind, payload in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(bench.args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_job, bench.args, kind, payload) for kind, payload in jobs]
        return [f.result() for f in futures]


def phase_check(bench: Bench) -> list[dict[str, Any]]:
    print("check: hand genotypes with and without the planted operation", flush=True)
    return run_jobs(bench, [("train", (name, text, seed)) for name, text in hand_genotypes(bench.args.window).items()
                            for seed in bench.args.check_seeds])


def search_plan(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    plan = [("pair", betas, s) for betas in args.pair_betas for s in args.pair_seeds]
    plan += [("single", "paper", s) for s in args.single_seeds]
    plan += [("full", "paper", s) for s in args.full_seeds]
    plan += [("fair", "standard", s) for s in getattr(args, "fair_seeds", [])]
    return plan


def phase_search(bench: Bench) -> list[dict[str, Any]]:
    print("search", flush=True)
    return run_jobs(bench, [("search", job) for job in search_plan(bench.args)])


def random_samples(bench: Bench, searches: list[dict[str, Any]]) -> list[tuple[str, str, float]]:
    """Random genotypes matched in FLOPs to the searched genotypes' median (name, text, planted share)."""
    from scnas_dsl.graph.printer import print_document
    from scnas_dsl.loader import load, load_text
    from scnas_dsl.model import Document, Import

    try:
        from scnas_dsl.nn.random_genotypes import sample_genotypes
    except ImportError as err:
        raise SystemExit("scnas_dsl.nn.random_genotypes is not there yet: the retrain phase needs it") from err
    a = bench.args
    space = load(bench.space_file).space(SPACE_NAME)
    searched = []
    for s in searches:
        _, g = load_text(s["genotype_text"], base_dir=bench.genotypes).genotype(s["name"])
        searched.append(g)
    from scnas_dsl.nn.cost import estimate

    flops = [estimate(space, genotype=g, patch=tuple(a.patch), in_channels=1, num_classes=2,
                      stem_width=a.stem_width).flops for g in searched]
    like = searched[sorted(range(len(flops)), key=flops.__getitem__)[len(flops) // 2]]
    samples = sample_genotypes(space, a.random, seed=a.random_seed, like=like, match="flops",
                               tolerance=a.tolerance, patch=tuple(a.patch), in_channels=1, num_classes=2,
                               stem_width=a.stem_width, name_prefix="random")
    out = []
    for s in samples:
        text = print_document(Document(imports=(Import(path="space.scn"),), genotypes=(s.genotype,)))
        out.append((s.genotype.name, text, planted_share(s.genotype)))
    return out


def phase_select(bench: Bench, searches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every method of ``--methods`` derives a genotype from each pair (and fair) search's run folder (the same
    trained supernet for all methods; a fair search trains no logits, so alpha is left out for it)."""
    print("select", flush=True)
    pairs = [s for s in searches if s["sampling"] in ("pair", "fair") and s.get("run")]

    def methods(search: dict[str, Any]) -> list[str]:
        return [m for m in bench.args.methods if not (search["sampling"] == "fair" and m == "alpha")]

    jobs = [("select", (s["run"], tuple((m, f"{s['name']}_{m}") for m in methods(s)))) for s in pairs]
    rows = [row for rows in run_jobs(bench, jobs) for row in rows]
    metas = [s for s in pairs for _ in methods(s)]
    return [{**row, "search": s["name"], "sampling": s["sampling"], "betas": s["betas"], "search_seed": s["seed"]}
            for row, s in zip(rows, metas, strict=True)]


def best_method(selections: list[dict[str, Any]]) -> str:
    """The method to retrain, chosen before any retraining: the most searches with the planted operation
    chained in ``enc``, then the most with it anywhere in ``enc``, then the best mean self-check rank, then the
    order of ``--methods``."""
    methods = list(dict.fromkeys(s["method"] for s in selections))

    def key(m: str) -> tuple[float, float]:
        rows = [s for s in selections if s["method"] == m]
        ranks = [s["self_check"]["rank"] for s in rows if s["self_check"]]
        return (-sum(bool(s.get("enc_chain")) for s in rows), -sum(s["enc_planted"] > 0 for s in rows),
                statistics.fmean(ranks) if ranks else math.inf)

    return min(methods, key=key)


def unet_width(bench: Bench, macs: float) -> tuple[int, int]:
    """The stem width at which specs/baselines/unet3d.scn has the MACs closest to ``macs`` (the compiler's
    cost counter at the study's patch), and those MACs."""
    from scnas_dsl.loader import load
    from scnas_dsl.nn.cost import estimate

    space, genotype = load(UNET).genotype("unet3d")
    best = (0, 0)
    for width in range(1, 33):
        m = estimate(space, genotype=genotype, patch=tuple(bench.args.patch), in_channels=1, num_classes=2,
                     stem_width=width).macs
        if best[0] == 0 or abs(m - macs) < abs(best[1] - macs):
            best = (width, m)
    return best


def per_genotype(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs (one per genotype and seed) grouped by genotype: ``dice`` the mean over the seeds, ``dice_seeds``
    each seed's, ``dice_std`` their std."""
    out = []
    for name in dict.fromkeys(r["name"] for r in rows):
        runs = [r for r in rows if r["name"] == name]
        m, sd = mean_std([r["dice"] for r in runs])
        out.append({**runs[0], "dice": m, "dice_std": sd, "dice_seeds": [r["dice"] for r in runs],
                    "seeds": [r["seed"] for r in runs], "seconds": sum(r["seconds"] for r in runs)})
    return out


def phase_retrain(bench: Bench, searches: list[dict[str, Any]], selections: list[dict[str, Any]] | None = None
                  ) -> dict[str, Any]:
    """The searched genotypes (with selections: those of ``--retrain-method``, and the single/full searches'
    own), FLOPs-matched random ones, all-conv3 and (``--unet``) the U-Net at matched MACs, each with every seed
    of ``--retrain-seeds``; rows per genotype (Dice: the mean over the seeds)."""
    print("retrain", flush=True)
    a = bench.args
    seeds = a.retrain_seeds or [a.train_seed]
    method = None
    if selections:
        method = best_method(selections) if a.retrain_method == "best" else a.retrain_method
        searched_items = [s for s in selections if s["method"] == method]
        searched_items += [{**s, "search_seed": s["seed"]} for s in searches if s["sampling"] not in ("pair", "fair")]
    else:
        searched_items = [{**s, "search_seed": s["seed"]} for s in searches]
    randoms = random_samples(bench, searched_items)
    items = [(s["name"], s["genotype_text"], None) for s in searched_items]
    items += [(name, text, None) for name, text, _ in randoms]
    items.append(("all_conv3", hand_genotypes(a.window)["all_conv3"], None))
    unet = None
    if a.unet:
        from scnas_dsl.loader import load_text
        from scnas_dsl.nn.cost import estimate

        space = load_text(space_text(a.stem_width, a.stem_kernel)).space(SPACE_NAME)
        macs = [estimate(space, genotype=load_text(s["genotype_text"], base_dir=bench.genotypes).genotype(s["name"])[1],
                         patch=tuple(a.patch), in_channels=1, num_classes=2, stem_width=a.stem_width).macs
                for s in searched_items]
        target = float(np.median(macs))
        width, unet_macs = unet_width(bench, target)
        unet = {"stem_width": width, "macs": unet_macs, "searched_median_macs": target}
        items.append(("unet3d", UNET.read_text(), width))
    jobs = [("train", (name, text, seed) + ((width,) if width else ())) for name, text, width in items for seed in seeds]
    rows = per_genotype(run_jobs(bench, jobs))
    by_name = {r["name"]: r for r in rows}
    searched = [{**by_name[s["name"]], "sampling": s["sampling"], "betas": s["betas"],
                 "search_seed": s["search_seed"], "method": s.get("method", "alpha")} for s in searched_items]
    return {"searched": searched, "random": [by_name[n] for n, _, _ in randoms],
            "baseline": [by_name["all_conv3"]], **({"unet": [by_name["unet3d"]]} if unet else {}),
            "method": method, "unet_match": unet, "seeds": seeds}


def uniform_share(bench: Bench, draws: int = 2000) -> float:
    """Expected maxpool share of live edges when every edge draws uniformly from the set (zero included),
    after the same cutting of dead nodes as a derivation."""
    import torch

    from scnas_dsl.loader import load
    from scnas_dsl.nn.derive import derive_genotype

    space = load(bench.space_file).space(SPACE_NAME)
    gen = torch.Generator().manual_seed(0)
    shares = []
    for _ in range(draws):
        alphas = {key: torch.rand(len(space.cell(key).edge_list()), len(OPS), generator=gen) for key in CELLS}
        genotype, _ = derive_genotype(space, alphas)
        counts = op_counts(genotype)
        total = sum(counts.values())
        if total:
            shares.append(counts[PLANTED] / total)
    return float(np.mean(shares))


def check_table(check: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The check's runs grouped by hand genotype: Dice per seed, mean and std."""
    names = list(dict.fromkeys(r["name"] for r in check))
    rows = []
    for name in names:
        runs = [r for r in check if r["name"] == name]
        m, sd = mean_std([r["dice"] for r in runs])
        rows.append({"name": name, "dice": [r["dice"] for r in runs], "seeds": [r["seed"] for r in runs],
                     "mean": m, "std": sd, "flops": runs[0]["flops"], "params": runs[0]["params"],
                     "seconds": sum(r["seconds"] for r in runs)})
    return rows


def selection_stats(selections: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: in how many searches maxpool lands in ``enc``, the self-check ranks, maxpool shares."""
    out = {}
    for m in dict.fromkeys(s["method"] for s in selections):
        rows = [s for s in selections if s["method"] == m]
        out[m] = {"searches": len(rows), "enc_planted_searches": sum(s["enc_planted"] > 0 for s in rows),
                  "enc_chain_searches": sum(bool(s.get("enc_chain")) for s in rows),
                  "enc_planted": [s["enc_planted"] for s in rows],
                  "self_check_ranks": [s["self_check"]["rank"] if s["self_check"] else None for s in rows],
                  "self_check_of": rows[0]["self_check"]["of"] if rows[0]["self_check"] else None,
                  "planted_share": mean_std([s["planted_share"] for s in rows])}
    return out


def report(bench: Bench, check: list[dict[str, Any]], searches: list[dict[str, Any]],
           groups: dict[str, Any] | None, started: float,
           selections: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    a = bench.args
    summary: dict[str, Any] = {"settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items()},
                               "check_runs": check, "check": check_table(check), "searches": searches}
    if selections:
        summary["selections"] = selections
        summary["selection_stats"] = selection_stats(selections)
    summary["task"] = TASK
    summary["planted"] = PLANTED
    summary["linear_reference_dice"] = linear_reference(bench.pre, bench.fold().val, a.window,
                                                        a.distance if TASK == "context" else None)
    summary["uniform_planted_share"] = uniform_share(bench) if searches else None
    by_kind: dict[str, Any] = {}
    for key in dict.fromkeys((s["sampling"], s["betas"]) for s in searches):
        runs = [s for s in searches if (s["sampling"], s["betas"]) == key]
        shares = [s["planted_share"] for s in runs]
        by_kind[f"{key[0]} {key[1]}"] = {
            "runs": len(runs), "planted_share": mean_std(shares), "planted_mass": mean_std([s["planted_mass"] for s in runs]),
            "dominant": sum(sh > 0.5 for sh in shares), "above_uniform": sum(sh > summary["uniform_planted_share"] for sh in shares),
            "enc_planted": [s["cell_counts"]["enc"].get(PLANTED, 0) for s in runs]}
    for srch in searches:  # the supernet's own end state, from the run's last epoch record
        path = bench.runs / f"search_{srch['name']}" / "metrics.jsonl"
        last = json.loads(path.read_text().splitlines()[-1]) if path.is_file() else {}
        srch["last_epoch"] = {k: last.get(k) for k in ("weight_loss", "arch_loss", "argmax_dice", "sampled_dice",
                                                        "mean_entropy", "parameter_free_share")}
    for kind, st in by_kind.items():
        runs = [s for s in searches if f"{s['sampling']} {s['betas']}" == kind]
        st["weight_loss"] = mean_std([s["last_epoch"]["weight_loss"] for s in runs])
        st["argmax_dice"] = mean_std([s["last_epoch"]["argmax_dice"] for s in runs])  # 0.0 is a value
    summary["search_stats"] = by_kind
    if groups:
        extra = {k: groups.pop(k) for k in ("method", "unet_match", "seeds") if k in groups}
        summary.update({f"retrain_{k}": v for k, v in extra.items()})
        rnd = [r["dice"] for r in groups["random"]]
        srch = [r["dice"] for r in groups["searched"]]
        every = [r for rows in groups.values() for r in rows]
        stds = [r["dice_std"] for r in every if len(r.get("dice_seeds", [])) > 1]
        summary["noise_floor"] = {"mean_seed_std": float(np.mean(stds)) if stds else None,
                                  "std_of_means": mean_std([r["dice"] for r in every])[1]}
        if "unet" in groups and srch:
            u = groups["unet"][0]
            summary["p_searched_gt_unet"] = permutation_test(
                [d for r in groups["searched"] for d in r["dice_seeds"]], u["dice_seeds"])
        stats: dict[str, Any] = {}
        for group, rows in groups.items():
            m, sd = mean_std([r["dice"] for r in rows])
            stats[group] = {"mean": m, "std": sd, "n": len(rows)}
        for subset in dict.fromkeys((r["sampling"], r["betas"]) for r in groups["searched"]):
            vals = [r["dice"] for r in groups["searched"] if (r["sampling"], r["betas"]) == subset]
            m, sd = mean_std(vals)
            stats[f"searched {subset[0]} {subset[1]}"] = {"mean": m, "std": sd, "n": len(vals)}
        summary["groups"] = groups
        summary["group_stats"] = stats
        summary["ranks"] = {r["name"]: rank_among(r["dice"], rnd) for r in groups["searched"]}
        summary["p_searched_gt_random"] = permutation_test(srch, rnd) if srch and rnd else None
        pair = {b: [r["dice"] for r in groups["searched"] if r["sampling"] == "pair" and r["betas"] == b] for b in BETAS}
        if pair["paper"] and pair["standard"]:
            summary["p_pair_standard_gt_paper"] = permutation_test(pair["standard"], pair["paper"])
            summary["p_pair_paper_gt_standard"] = permutation_test(pair["paper"], pair["standard"])
        for b, vals in pair.items():
            if vals and rnd:
                summary[f"p_pair_{b}_gt_random"] = permutation_test(vals, rnd)
        summary["random_planted_share"] = mean_std([r["planted_share"] for r in groups["random"]])
    summary["seconds_this_invocation"] = round(time.time() - started, 1)
    runs = {("search", s["name"]): s["seconds"] for s in searches}
    runs.update({("train", r["name"], r["seed"]): r["seconds"]
                 for r in check + [r for rows in (groups or {}).values() for r in rows]})
    summary["seconds_of_runs"] = round(sum(runs.values()), 1)  # each run once (a cached run is shared)
    (bench.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(bench, summary)
    print_tables(summary)
    return summary


def _f(pair: Sequence[float]) -> str:
    return f"{pair[0]:.3f} ± {pair[1]:.3f}"


def print_tables(summary: dict[str, Any]) -> None:
    """The tables of docs/benchmarks.md, in Markdown."""
    what = ("the six voxels at the arms' distance, summed" if summary.get("task") == "context"
            else "centre minus the window's mean")
    print(f"\nlinear reference ({what}, best threshold): Dice "
          f"{summary['linear_reference_dice']:.3f}")
    if summary["check"]:
        print("\n| hand genotype (enc cell) | Dice mean ± std | Dice per seed | MFLOPs | params |\n| --- | --- | --- | --- | --- |")
        for r in summary["check"]:
            print(f"| {r['name']} | {r['mean']:.3f} ± {r['std']:.3f} | {', '.join(f'{d:.3f}' for d in r['dice'])} | "
                  f"{r['flops'] / 1e6:.1f} | {r['params']} |")
    if summary["searches"]:
        print(f"\n{PLANTED} share of live edges, uniform random genotypes: {summary['uniform_planted_share']:.3f}")
        print(f"\n| search | {PLANTED} share (live edges) | {PLANTED} edges in enc | softmax mass on {PLANTED} | "
              "ops of the live edges | seconds |\n| --- | --- | --- | --- | --- | --- |")
        for s in summary["searches"]:
            ops = ", ".join(f"{op} {n}" for op, n in s["op_counts"].items() if n)
            enc = s["cell_counts"]["enc"]
            print(f"| {s['name']} | {s['planted_share']:.2f} | {enc.get(PLANTED, 0)} of {sum(enc.values())} | "
                  f"{s['planted_mass']:.3f} | {ops} | {s['seconds']:.0f} |")
        print(f"\n| sampling, betas | searches | {PLANTED} share mean ± std | share > 0.5 | share > uniform | "
              "last-epoch weight loss | supernet argmax Dice |\n| --- | --- | --- | --- | --- | --- | --- |")
        for kind, st in summary["search_stats"].items():
            print(f"| {kind} | {st['runs']} | {_f(st['planted_share'])} | {st['dominant']} | {st['above_uniform']} | "
                  f"{_f(st['weight_loss'])} | {_f(st['argmax_dice'])} |")
    if summary.get("selection_stats"):
        print(f"\n| search | method | {PLANTED} in enc | chained in enc | {PLANTED} share | self-check rank | "
              "ops of the live edges |\n| --- | --- | --- | --- | --- | --- | --- |")
        for s in summary["selections"]:
            ops = ", ".join(f"{op} {n}" for op, n in s["op_counts"].items() if n)
            enc = s["cell_counts"].get("enc", {})
            chk = f"{s['self_check']['rank']} of {s['self_check']['of']}" if s["self_check"] else "-"
            print(f"| {s['search']} | {s['method']} | {s['enc_planted']} of {sum(enc.values())} | "
                  f"{'yes' if s.get('enc_chain') else 'no'} | {s['planted_share']:.2f} | {chk} | {ops} |")
        print(f"\n| method | searches with {PLANTED} in enc | chained in enc | self-check ranks | "
              f"{PLANTED} share mean ± std |\n| --- | --- | --- | --- | --- |")
        for m, st in summary["selection_stats"].items():
            print(f"| {m} | {st['enc_planted_searches']} of {st['searches']} | "
                  f"{st.get('enc_chain_searches', 0)} of {st['searches']} | "
                  f"{', '.join(str(r) for r in st['self_check_ranks'])} (of {st['self_check_of']}) | "
                  f"{_f(st['planted_share'])} |")
    if "group_stats" in summary:
        if summary.get("retrain_method"):
            print(f"\nretrained: the genotypes of selection method '{summary['retrain_method']}', seeds "
                  f"{summary.get('retrain_seeds')}")
        if summary.get("retrain_unet_match"):
            u = summary["retrain_unet_match"]
            print(f"U-Net (specs/baselines/unet3d.scn) at stem width {u['stem_width']}: {u['macs'] / 1e6:.1f} MMACs "
                  f"(searched genotypes' median {u['searched_median_macs'] / 1e6:.1f} MMACs)")
        nf = summary.get("noise_floor") or {}
        if nf.get("mean_seed_std") is not None:
            print(f"noise floor: mean per-genotype seed std {nf['mean_seed_std']:.3f}; std of the genotype means "
                  f"{nf['std_of_means']:.3f}")
        print("\n| group | n | Dice mean ± std |\n| --- | --- | --- |")
        for g, st in summary["group_stats"].items():
            print(f"| {g} | {st['n']} | {st['mean']:.3f} ± {st['std']:.3f} |")
        n_random = len(summary["groups"]["random"])
        print(f"\n| searched genotype | Dice | rank among random | {PLANTED} share | MFLOPs |\n| --- | --- | --- | --- | --- |")
        for r in summary["groups"]["searched"]:
            seeds = f" ({', '.join(f'{d:.3f}' for d in r['dice_seeds'])})" if len(r.get("dice_seeds", [])) > 1 else ""
            print(f"| {r['name']} | {r['dice']:.3f}{seeds} | {summary['ranks'][r['name']]} of {n_random + 1} | "
                  f"{r['planted_share']:.2f} | {r['flops'] / 1e6:.1f} |")
        print(f"\n| other genotype | Dice | {PLANTED} share | MFLOPs |\n| --- | --- | --- | --- |")
        for r in summary["groups"]["random"] + summary["groups"]["baseline"] + summary["groups"].get("unet", []):
            seeds = f" ({', '.join(f'{d:.3f}' for d in r['dice_seeds'])})" if len(r.get("dice_seeds", [])) > 1 else ""
            print(f"| {r['name']} | {r['dice']:.3f}{seeds} | {r['planted_share']:.2f} | {r['flops'] / 1e6:.1f} |")
        print(f"\nFLOP-matched random genotypes, {PLANTED} share: {_f(summary['random_planted_share'])}")
        for key in ("p_searched_gt_random", "p_searched_gt_unet", "p_pair_paper_gt_random", "p_pair_standard_gt_random",
                    "p_pair_standard_gt_paper", "p_pair_paper_gt_standard"):
            if summary.get(key) is not None:
                print(f"one-sided permutation test {key.removeprefix('p_').replace('_gt_', ' > ')}: p = {summary[key]:.4f}")
    print(f"\nrun time of the runs: {summary['seconds_of_runs'] / 60:.1f} min (this invocation: "
          f"{summary['seconds_this_invocation'] / 60:.1f} min)")


def reference_label(summary: dict[str, Any]) -> str:
    return "ideal cross filter" if summary.get("task") == "context" else "best linear filter"


def plot(bench: Bench, summary: dict[str, Any]) -> None:
    """Dice per hand genotype, Dice per group, maxpool share per search: ``search_validity.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def dots(ax: Any, columns: list[tuple[str, list[float]]], title: str) -> None:
        for i, (_, values) in enumerate(columns):
            jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(jitter + i, values, s=14)
            if values:
                ax.hlines(np.mean(values), i - 0.25, i + 0.25, color="k", lw=1)
        ax.set_xticks(range(len(columns)), [c[0] for c in columns], fontsize=7)
        ax.axhline(summary["linear_reference_dice"], color="gray", ls=":", lw=1, label=reference_label(summary))
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=72, gridspec_kw={"width_ratios": [1, 1.2, 1.2]})
    dots(axes[0], [(r["name"].removeprefix("hand_").replace("all_", "all\n"), r["dice"]) for r in summary["check"]],
         "check: enc cell with P (Dice per seed)")
    axes[0].set_ylabel("validation Dice, last epoch", fontsize=8)
    if "groups" in summary:
        g = summary["groups"]
        columns = [("random", [r["dice"] for r in g["random"]]), ("all conv3", [r["dice"] for r in g["baseline"]])]
        if g.get("unet"):
            columns.append(("U-Net\n(seeds)", g["unet"][0].get("dice_seeds", [g["unet"][0]["dice"]])))
        for key in dict.fromkeys((r["sampling"], r["betas"]) for r in g["searched"]):
            columns.append((f"{key[0]}\n{key[1]}", [r["dice"] for r in g["searched"] if (r["sampling"], r["betas"]) == key]))
        dots(axes[1], columns, "retrained: random (FLOP-matched) vs searched")
    ax = axes[2]
    searches = summary["searches"]
    selections = summary.get("selections") or []
    if selections:  # planted-op edges in enc per search and method
        methods = list(dict.fromkeys(s["method"] for s in selections))
        names = list(dict.fromkeys(s["search"] for s in selections))
        width = 0.8 / len(methods)
        for j, m in enumerate(methods):
            rows = {s["search"]: s["enc_planted"] for s in selections if s["method"] == m}
            ax.bar(np.arange(len(names)) + (j - (len(methods) - 1) / 2) * width, [rows.get(n, 0) for n in names],
                   width, label=m)
        ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=6)
        ax.set_ylim(0, 5)
        ax.legend(fontsize=7)
        ax.set_title(f"{PLANTED} edges in the enc cell, per selection method", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    elif searches:
        ax.bar(range(len(searches)), [s["planted_share"] for s in searches], color="tab:blue")
        ax.axhline(summary["uniform_planted_share"], color="gray", ls=":", lw=1, label="uniform random")
        if "random_planted_share" in summary:
            ax.axhline(summary["random_planted_share"][0], color="tab:orange", ls="--", lw=1,
                       label="FLOP-matched random")
        ax.set_xticks(range(len(searches)), [s["name"].replace("_", "\n") for s in searches], fontsize=6)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        ax.set_title(f"{PLANTED} share of the derived genotype's live edges", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(bench.out / "search_validity.png")
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- cli


PHASES = ["data", "check", "search", "select", "retrain", "report"]


def build_parser(doc: str | None = None, out: str = "scnas-search-validity",
                 phases: Sequence[str] = tuple(PHASES)) -> argparse.ArgumentParser:
    """The study's options (also those of benchmarks/ranking.py, which gives its own ``doc``, ``out``, ``phases``)."""
    doc = doc or __doc__ or ""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / out),
                   help="output folder: data, runs, results.json and the plot (default: in the temp folder)")
    p.add_argument("--phases", nargs="+", default=list(phases), choices=list(phases))
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one seed, two random genotypes")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run on the CPU")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (separate processes)")
    p.add_argument("--task", default="peaks", choices=sorted(TASKS),
                   help="peaks: local maxima of noise (maxpool pays); context: centres of crosses at a distance "
                        "(dil3 pays, chained)")
    g = p.add_argument_group("data")
    g.add_argument("--cases", type=int, default=30)
    g.add_argument("--shape", type=int, nargs=3, default=[24, 24, 24],
                   help="volume size; the same as --patch keeps the peaks at patch borders true")
    g.add_argument("--sigma", type=float, default=0.0, help="Gaussian smoothing of the noise (voxels)")
    g.add_argument("--threshold", type=float, default=0.0, help="a peak must be above this standardised value")
    g.add_argument("--window", type=int, default=5, choices=[3, 5], help="neighbourhood of a peak (voxels)")
    g.add_argument("--contrast", type=float, default=1.0,
                   help="the noise amplitude varies smoothly over each volume by this factor")
    g.add_argument("--data-seed", type=int, default=0)
    g.add_argument("--distance", type=int, default=6, help="context task: the arms' length (voxels)")
    g.add_argument("--centres", type=int, default=12, help="context task: marked crosses per case (and as many decoys)")
    g.add_argument("--amplitude", type=float, default=3.0,
                   help="context task: how much the arms' ends are raised (in the noise's std)")
    g = p.add_argument_group("networks and training")
    g.add_argument("--patch", type=int, nargs=3, default=[24, 24, 24])
    g.add_argument("--batch-size", type=int, default=2)
    g.add_argument("--stem-width", type=int, default=8)
    g.add_argument("--stem-kernel", type=int, default=1, choices=[1, 3],
                   help="the stem's convolution kernel (1: every spatial operation is a searched one)")
    g.add_argument("--search-epochs", type=int, default=8)
    g.add_argument("--search-steps", type=int, default=25, help="search steps per epoch")
    g.add_argument("--search-lr", type=float, default=0.025, help="weight Adam lr in the search (paper 0.025)")
    g.add_argument("--arch-lr", type=float, default=0.05, help="logit Adam lr (paper 0.003; the demo's 0.05)")
    g.add_argument("--arch-warmup", type=int, default=0,
                   help="search epochs that train only the weights first (0: the paper's search)")
    g.add_argument("--train-epochs", type=int, default=8)
    g.add_argument("--train-steps", type=int, default=25)
    g.add_argument("--train-lr", type=float, default=3e-3)
    g.add_argument("--train-seed", type=int, default=0)
    g.add_argument("--check-seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="retraining seeds of each hand genotype in the check")
    g = p.add_argument_group("searches and random genotypes")
    g.add_argument("--pair-seeds", type=int, nargs="*", default=[0, 1, 2])
    g.add_argument("--pair-betas", nargs="*", default=["paper", "standard"], choices=sorted(BETAS))
    g.add_argument("--single-seeds", type=int, nargs="*", default=[0])
    g.add_argument("--full-seeds", type=int, nargs="*", default=[0])
    g.add_argument("--fair-seeds", type=int, nargs="*", default=[],
                   help="searches with fair sampling of the weights (FairNAS; no logits: selected by projection "
                        "and sampled only)")
    g.add_argument("--random", type=int, default=8, help="random FLOP-matched genotypes to retrain")
    g.add_argument("--random-seed", type=int, default=0)
    g.add_argument("--tolerance", type=float, default=0.1, help="relative FLOP tolerance of the random genotypes")
    g = p.add_argument_group("selection and retraining")
    g.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS),
                   help="selection methods the select phase derives from every pair search")
    g.add_argument("--score-batches", type=int, default=4,
                   help="batches of the architecture part every selection score and self-check runs on")
    g.add_argument("--projection-draws", type=int, default=2,
                   help="projection: architectures drawn for the undecided edges per score")
    g.add_argument("--retrain-method", default="best", choices=["best", *METHODS],
                   help="whose genotypes are retrained (best: most searches with maxpool in enc, then the best "
                        "mean self-check rank; chosen before any retraining)")
    g.add_argument("--retrain-seeds", type=int, nargs="*", default=None,
                   help="retraining seeds of every genotype of the retrain phase (default: --train-seed)")
    g.add_argument("--unet", action=argparse.BooleanOptionalAction, default=True,
                   help="also retrain specs/baselines/unet3d.scn at the stem width whose MACs match the searched "
                        "genotypes' median")
    return p


def quick_sizes(args: argparse.Namespace) -> None:
    """``--quick``: tiny data, searches and retrainings."""
    args.cases, args.shape, args.patch = 10, [16, 16, 16], [16, 16, 16]
    args.search_epochs, args.search_steps, args.train_epochs, args.train_steps = 2, 3, 2, 3
    args.random = 2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.quick:
        quick_sizes(args)
        args.pair_seeds, args.pair_betas, args.check_seeds = [0], ["paper", "standard"], [0]
    return args


def start(args: argparse.Namespace) -> float:
    """One torch thread per run (``--threads``); the start time."""
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    return time.time()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = start(args)
    bench = Bench(args)
    bench.prepare_data()  # every phase needs it; reused when the settings are unchanged
    check = phase_check(bench) if "check" in args.phases else []
    ph = set(args.phases)
    searches = phase_search(bench) if ph & {"search", "select", "retrain"} else []
    selections = phase_select(bench, searches) if "select" in ph else []
    groups = phase_retrain(bench, searches, selections) if "retrain" in ph else None
    if "report" in ph:
        if not check:
            check = [r for r in (bench.cached_train(n, t, seed) for n, t in hand_genotypes(args.window).items()
                                 for seed in args.check_seeds) if r is not None]
        report(bench, check, searches, groups, started, selections)
    print(f"done in {time.time() - started:.0f} s; results in {bench.out}", flush=True)


if __name__ == "__main__":
    main()
