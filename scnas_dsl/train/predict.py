"""``scnas predict``: a trained run's network on new images, written back on their original grid.

Each case is preprocessed exactly as the run's training data (the run keeps a copy of the preprocessing
record), segmented with sliding windows (50% overlap, Gaussian blending by default, optional mirroring),
and the label map is brought back to the original image (inverse resampling, crop and orientation), with the
original affine and header, as ``<case>.nii.gz`` (nnU-Net's naming). Probabilities, when asked, go to
``probabilities/<case>.nii.gz`` (4D, one volume per class) so that the prediction folder holds only label
maps for ``scnas evaluate``. Existing outputs are never overwritten without ``force``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import torch

from scnas_dsl.data.preprocess import (
    Preprocessed,
    preprocess_image,
    restore_prediction,
    restore_probabilities,
)
from scnas_dsl.errors import CheckpointError, DataError, RunError
from scnas_dsl.loader import load
from scnas_dsl.nn import build_network
from scnas_dsl.train.checkpoint import load_checkpoint
from scnas_dsl.train.loop import progress_bar
from scnas_dsl.train.device import setup_runtime
from scnas_dsl.train.inference import sliding_window_inference
from scnas_dsl.train.metrics import NIFTI_ENDINGS, case_id_of


@dataclass
class TrainedModel:
    """A run's network with its weights, patch size and preprocessing record."""

    network: torch.nn.Module
    patch: tuple[int, ...]
    pre: Preprocessed
    blend: str


def load_trained(run: Path | str, which: str = "best") -> TrainedModel:
    """The network of a ``scnas train`` run folder with its ``best`` (default) or ``last`` weights."""
    run = Path(run)
    recipe_path = run / "network.json"
    if not recipe_path.is_file():
        raise RunError(f"{run}: not a folder written by `scnas train` (no network.json); give the --out folder "
                       "of a training run")
    recipe = json.loads(recipe_path.read_text())
    space, genotype = load(run / "genotype.scn").genotype()
    network = build_network(space, genotype, in_channels=recipe["in_channels"], num_classes=recipe["num_classes"],
                            stem_width=recipe["stem_width"])
    if which not in ("best", "last"):
        raise RunError(f"unknown checkpoint '{which}': use best or last")
    path = run / "checkpoints" / f"{which}.pt"
    state = load_checkpoint(path)
    try:
        network.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"{path}: does not fit the network of {run / 'genotype.scn'} ({str(err)[:200]})") from err
    return TrainedModel(network=network, patch=tuple(recipe["patch"]), pre=Preprocessed(run / "preprocessing"),
                        blend=recipe.get("blend", "gaussian"))


def group_cases(inputs: list[Path], layout: str, channels: int) -> dict[str, list[Path]]:
    """``{case id: image files}`` from files and folders: one 4D file per case (MSD) or one file per channel
    ``<case>_0000.nii.gz`` ... (nnU-Net)."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files += sorted(p for p in item.iterdir()
                            if p.is_file() and not p.name.startswith(".") and p.name.endswith(NIFTI_ENDINGS))
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    if not files:
        raise DataError(f"no NIfTI images (.nii.gz, .nii) in {', '.join(str(i) for i in inputs)}")
    cases: dict[str, list[Path]] = {}
    for path in files:
        name = case_id_of(path)
        if layout == "nnunet":
            if len(name) < 6 or name[-5] != "_" or not name[-4:].isdigit():
                raise DataError(f"{path}: the run was trained on nnU-Net layout data, where images are named "
                                "<case>_0000.nii.gz (one file per channel)")
            name = name[:-5]
        cases.setdefault(name, []).append(path)
    for case, paths in cases.items():
        if layout == "nnunet" and len(paths) != channels:
            raise DataError(f"case {case}: {len(paths)} channel file(s) but the network takes {channels} "
                            f"({', '.join(p.name for p in paths)})")
        if layout != "nnunet" and len(paths) != 1:
            raise DataError(f"case {case}: several files with this name ({', '.join(str(p) for p in paths)})")
    return cases


def predict_run(run: Path | str, inputs: list[Path], output: Path, *, probabilities: bool = False,
                mirror: bool = False, device: str = "auto", checkpoint: str = "best", batch_size: int = 2,
                force: bool = False, progress: bool = True, blend: str | None = None) -> list[Path]:
    """Segment every case of ``inputs`` with the run's network; returns the label map files written.
    ``blend``: ``gaussian`` or ``constant`` (default: the run's setting)."""
    if blend not in (None, "gaussian", "constant"):
        raise RunError(f"unknown blending '{blend}': use gaussian or constant")
    model = load_trained(run, checkpoint)
    pre = model.pre
    cases = group_cases([Path(i) for i in inputs], pre.dataset.layout, len(pre.dataset.modalities))
    output = Path(output)
    targets = {case: output / f"{case}.nii.gz" for case in cases}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not force:
        raise RunError(f"{output}: would overwrite {len(existing)} existing prediction(s) ({existing[0]}, ...); "
                       "choose another --output or pass --force")
    runtime = setup_runtime(device)
    network = model.network.to(runtime.device)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    bar = progress_bar(len(cases), "predict", progress)
    for case, paths in sorted(cases.items()):
        image, meta = preprocess_image(sorted(paths), pre)
        probs = sliding_window_inference(network, torch.from_numpy(image), model.patch, blend=blend or model.blend,  # type: ignore[arg-type]
                                         mirror=mirror, batch_size=batch_size, device=runtime.device,
                                         autocast_dtype=runtime.amp_dtype)
        labels = probs.argmax(0).numpy()
        nib.save(restore_prediction(labels, meta.model_copy(update={"case_id": case})), str(targets[case]))
        if probabilities:
            (output / "probabilities").mkdir(exist_ok=True)
            nib.save(restore_probabilities(probs.numpy(), meta), str(output / "probabilities" / f"{case}.nii.gz"))
        written.append(targets[case])
        bar.update()
    bar.close()
    return written
