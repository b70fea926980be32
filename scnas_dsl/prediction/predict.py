"""``scnas predict``: a trained run's network on new images, written back on their original grid.

Each case is preprocessed exactly as the run's training data (the run keeps a copy of the preprocessing
record), segmented with sliding windows (50% overlap, Gaussian blending by default, mirroring along every
spatial axis by default, as nnU-Net), and brought back to the original image as nnU-Net does: the class
probabilities are resampled linearly to the original spacing and the argmax is taken there, then crop and
orientation are undone (``restore_segmentation``), with the original affine and header, as ``<case>.nii.gz``
(nnU-Net's naming). Probabilities, when asked, go to
``probabilities/<case>.nii.gz`` (4D, one volume per class) so that the prediction folder holds only label
maps for ``scnas evaluate``. Existing outputs are never overwritten without ``force``.

The weights are the run's **last** ones by default (``checkpoints/last.pt``): the paper does no model selection
on validation, and weights chosen on the validation cases score those cases too well. ``checkpoint="best"``
(``checkpoints/best.pt``, the best validation Dice during training) stays available and is labelled: every
prediction folder gets a ``prediction.json`` naming the run, the checkpoint, its epoch and, for ``best``, the
validation Dice that chose it.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import torch

from scnas_dsl.data.files import write_json
from scnas_dsl.data.names import NIFTI_ENDINGS, strip_channel_suffix
from scnas_dsl.data.preprocess import (
    Preprocessed,
    preprocess_image,
    restore_probabilities,
    restore_segmentation,
)
from scnas_dsl.errors import CheckpointError, CompileError, DataError, RunError, first_line
from scnas_dsl.evaluation.metrics import case_id_of
from scnas_dsl.files import atomic_write
from scnas_dsl.folders import holding, refuse_data_set
from scnas_dsl.inference.sliding_window import InferenceStopped, sliding_window_inference
from scnas_dsl.loader import load
from scnas_dsl.nn import build_network, check_input_size
from scnas_dsl.stopping import RunInterrupted, StopSignal, requested_signal, stop_requested
from scnas_dsl.training.checkpoint import load_checkpoint, require, weights_mismatch
from scnas_dsl.training.device import out_of_memory, setup_runtime
from scnas_dsl.training.loop import progress_bar
from scnas_dsl.training.runs import CHECKPOINT_DIR, GENOTYPE, NETWORK, PREPROCESSING, read_network

#: The checkpoints a training run keeps, the default first.
CHECKPOINTS = ("last", "best")
#: What a checkpoint of each name must be (``kind``): the full training state, or weights only.
_KINDS = {"last": "train", "best": "weights"}
RECORD = "prediction.json"


@dataclass(frozen=True)
class Weights:
    """Which weights of a run made a prediction: the checkpoint and how far training had got."""

    run: Path
    #: ``last`` or ``best``
    checkpoint: str
    #: epochs of training behind the weights (1-based: ``epoch 15`` = after the 15th epoch)
    epoch: int
    #: steps into the next epoch, for a run stopped in the middle of one (``last`` only), else 0
    step: int = 0
    #: the validation Dice that chose them (``best``); NaN when the run had no validation cases
    dice: float | None = None

    @property
    def selected_on_validation(self) -> bool:
        """Chosen by their Dice on the validation cases (``best``, when there were any)."""
        return self.checkpoint == "best" and self.dice is not None and not math.isnan(self.dice)

    def label(self) -> str:
        """E.g. ``last weights, after epoch 15`` or ``best weights, after epoch 10 (validation Dice 0.8123:
        chosen on the validation cases)``."""
        when = f"after epoch {self.epoch}" + (f" and {self.step} steps of epoch {self.epoch + 1}" if self.step else "")
        if self.checkpoint != "best":
            return f"{self.checkpoint} weights, {when}"
        if self.dice is None or math.isnan(self.dice):
            return f"best weights, {when} (no validation cases: the last weights)"
        return f"best weights, {when} (validation Dice {self.dice:.4f}: chosen on the validation cases)"

    def to_json(self) -> dict[str, Any]:
        """The record's fields (``prediction.json``, cv's summary)."""
        return {"run": str(self.run), "checkpoint": self.checkpoint, "file": f"checkpoints/{self.checkpoint}.pt",
                "epoch": self.epoch, "step": self.step,
                "validation_dice": None if self.dice is None or math.isnan(self.dice) else self.dice,
                "selected_on_validation": self.selected_on_validation, "label": self.label()}


@dataclass
class TrainedModel:
    """A run's network with its weights, patch size and preprocessing record."""

    network: torch.nn.Module
    patch: tuple[int, ...]
    pre: Preprocessed
    blend: str
    weights: Weights


def _missing_checkpoint(run: Path, which: str, path: Path) -> CheckpointError:
    if which == "best":
        return CheckpointError(
            f"{path}: no best weights: best.pt is written when a validation improves and at the end of training, "
            "and this run stopped before either; use --checkpoint last (the weights of its last epoch), or finish "
            f"the run with `scnas train GENOTYPE --data DATA --out {run} --resume`")
    return CheckpointError(
        f"{path}: no last weights: last.pt is written at the end of every epoch, and this run stopped before the "
        f"end of its first; continue it with `scnas train GENOTYPE --data DATA --out {run} --resume`, or train "
        "again")


def load_trained(run: Path | str, which: str = "last", ops: Sequence[str] = ()) -> TrainedModel:
    """The network of a ``scnas train`` run folder with its ``last`` (default) or ``best`` weights; ``ops``:
    the operation modules (``--ops``) the run was trained with, if any (its ``operations.json`` says)."""
    from scnas_dsl.ops.plugins import check_recorded, load_operations

    run = Path(run)
    recipe = read_network(run)  # the run folder's one reader of network.json
    if which not in CHECKPOINTS:
        raise RunError(f"unknown checkpoint '{which}': use last (the default) or best")
    extra = load_operations(ops)
    check_recorded(run, extra)
    space, genotype = load(run / GENOTYPE, signatures=extra.library.signatures).genotype()
    path = run / CHECKPOINT_DIR / f"{which}.pt"
    if not path.is_file():
        raise _missing_checkpoint(run, which, path)
    state = load_checkpoint(path)
    if state["kind"] != _KINDS[which]:
        raise CheckpointError(f"{path}: a '{state['kind']}' checkpoint, not the {which} weights of a training "
                              f"run ('{_KINDS[which]}')")
    require(path, state, ("model", "epoch", "step") if which == "last" else ("model", "epoch", "dice"))

    # the heads the run trained with (deep supervision), so that its weights load; prediction uses level 0 only
    def build() -> torch.nn.Module:
        return build_network(space, genotype, in_channels=recipe.in_channels, num_classes=recipe.num_classes,
                             stem_width=recipe.stem_width, deep_supervision=recipe.deep_supervision,
                             library=extra.library)

    # first on the meta device (no memory): a network.json edited to a width the weights do not have is a
    # message, not the allocation of a network that may not fit in memory
    try:
        check_input_size(space, recipe.patch)  # the windows prediction cuts must go through the network
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    except CompileError as err:  # e.g. deep supervision at a level the genotype's decoder does not have
        raise RunError(f"{run / NETWORK}: does not describe a network of {run / GENOTYPE} ({first_line(err, 200)}); "
                       "was network.json edited? Put back the run folder's copy, or train again") from err
    model_state = state["model"]
    problem = weights_mismatch(shapes, model_state)
    if problem:
        raise CheckpointError(f"{path}: does not fit the network of {run / GENOTYPE} and {run / NETWORK} "
                              f"({problem}); was network.json edited? Put back the run folder's copy, or train "
                              "again")
    network = build()
    try:
        network.load_state_dict(model_state)
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"{path}: does not fit the network of {run / GENOTYPE} ({str(err)[:200]})") from err
    if which == "last":  # a training state: "epoch" epochs done, then "step" steps of the next one
        weights = Weights(run=run.resolve(), checkpoint="last", epoch=int(state["epoch"]), step=int(state["step"]))
    else:  # weights saved after the 0-based epoch "epoch"
        weights = Weights(run=run.resolve(), checkpoint="best", epoch=int(state["epoch"]) + 1,
                          dice=float(state["dice"]))
    try:
        pre = Preprocessed(run / PREPROCESSING)
    except DataError as err:  # its advice (run `scnas data preprocess`) cannot remake a run's own record
        raise RunError(f"{run / PREPROCESSING}: the run's record of how its training data was preprocessed cannot "
                       f"be read ({first_line(err, 200)}); put back a copy of the run folder's {PREPROCESSING}/ "
                       "or train again: `scnas data preprocess` cannot remake it") from err
    return TrainedModel(network=network, patch=tuple(recipe.patch), pre=pre, blend=recipe.blend, weights=weights)


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
            case = strip_channel_suffix(name)
            if case is None:
                raise DataError(f"{path}: the run was trained on nnU-Net layout data, where images are named "
                                "<case>_0000.nii.gz (one file per channel)")
            name = case
        cases.setdefault(name, []).append(path)
    for case, paths in cases.items():
        if layout == "nnunet" and len(paths) != channels:
            raise DataError(f"case {case}: {len(paths)} channel file(s) but the network takes {channels} "
                            f"({', '.join(p.name for p in paths)})")
        if layout != "nnunet" and len(paths) != 1:
            raise DataError(f"case {case}: several files with this name ({', '.join(str(p) for p in paths)})")
    return cases


@dataclass
class Predictions:
    """What :func:`predict_run` wrote: the label maps, the weights that made them, and their record."""

    files: list[Path]
    weights: Weights
    record: Path
    #: cases a stopped earlier call had finished, kept and not predicted again
    continued: list[str] = field(default_factory=list)


class PredictionStopped(RunInterrupted):
    """Ctrl-C or SIGTERM stopped :func:`predict_run` between batches of windows or cases: the finished cases
    are written (and recorded), the case being predicted is not; the same call again continues."""

    def __init__(self, message: str, done: int, total: int) -> None:
        super().__init__(message)
        self.done, self.total = done, total


def _earlier(output: Path) -> dict:
    """The folder's ``prediction.json`` ({} when there is none or it is unreadable)."""
    try:
        earlier = json.loads((output / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return earlier if isinstance(earlier, dict) else {}


def _same(earlier: dict, record: dict) -> bool:
    """Whether ``earlier`` was written with the weights and settings of ``record``."""
    return all(earlier.get(k) == v for k, v in record.items() if k not in ("label", "validation_dice"))


def _settings(weights: Weights, mirror: bool, blend: str) -> dict:
    return {**weights.to_json(), "mirror": mirror, "blend": blend}


def _continued(output: Path, weights: Weights, mirror: bool, blend: str, targets: dict[str, Path]) -> set[str]:
    """The cases that a call stopped by a signal (``"stopped"`` in its record) finished with these weights and
    settings: kept, not predicted again."""
    earlier = _earlier(output)
    if not earlier.get("stopped") or not _same(earlier, _settings(weights, mirror, blend)):
        return set()
    return {case for case in earlier.get("cases", []) if case in targets and targets[case].is_file()}


def _record(output: Path, weights: Weights, mirror: bool, blend: str, cases: list[str], force: bool) -> dict:
    """The new ``prediction.json``: this call's weights and settings, with the cases (other than ``cases``)
    already predicted in the folder by the same ones. A folder with predictions of other weights or settings is
    refused without ``force`` (one record could not say which case came from which)."""
    record = _settings(weights, mirror, blend)
    earlier = _earlier(output)
    same = _same(earlier, record)
    if earlier and not same:
        if not force:
            again = (" (a stopped call is continued only by the same command: same checkpoint, --mirror and "
                     "--blend)") if earlier.get("stopped") else ""
            raise RunError(f"{output}: holds predictions of other weights or settings ({earlier.get('label', '?')}, "
                           f"{RECORD}){again}; choose another --output, or pass --force to write these "
                           f"({weights.label()}) there")
        earlier = {}
    return {**record, "cases": sorted(set(earlier.get("cases", [])) - set(cases))}


def check_output_folder(output: Path, inputs: list[Path]) -> None:
    """Refuse (even with ``--force``) an output folder that is an input folder, holds an input file, or lies
    inside a data set (a folder with a ``dataset.json`` at or above it): predictions must never replace images
    or reference labels."""
    target = output.resolve()
    for source in inputs:
        source = source.resolve()
        folder = source if source.is_dir() else source.parent
        if target == folder:
            raise RunError(f"{output}: is the folder of the input images ({source}); write the predictions into "
                           "another folder (--output), outside the data set")
    refuse_data_set(output, "an --output")  # the one rule of every command (scnas_dsl.folders)


@holding("output", "scnas predict")
def predict_run(run: Path | str, inputs: list[Path], output: Path, *, probabilities: bool = False,
                mirror: bool = True, device: str = "auto", checkpoint: str = "last", batch_size: int = 2,
                force: bool = False, progress: bool = True, blend: str | None = None,
                ops: Sequence[str] = (), compile_network: bool = False) -> Predictions:
    """Segment every case of ``inputs`` with the run's network (its ``last`` weights, or ``best``); writes the
    label maps and ``prediction.json`` (which weights, which settings, which cases).
    ``mirror``: average over the 8 flips of the spatial axes (nnU-Net's default; 8x the network's work).
    ``blend``: ``gaussian`` or ``constant`` (default: the run's setting). ``compile_network``: ``torch.compile``
    the network first, checked on a batch of windows (eager with a note where it cannot compile)."""
    if blend not in (None, "gaussian", "constant"):
        raise RunError(f"unknown blending '{blend}': use gaussian or constant")
    if batch_size < 1:
        raise RunError(f"--batch-size {batch_size}: the number of windows per forward pass must be at least 1")
    output = Path(output)
    check_output_folder(output, [Path(i) for i in inputs])
    model = load_trained(run, checkpoint, ops)
    pre = model.pre
    cases = group_cases([Path(i) for i in inputs], pre.dataset.layout, len(pre.dataset.modalities))
    targets = {case: output / f"{case}.nii.gz" for case in cases}
    blend = blend or model.blend
    # a call stopped by a signal is continued: its finished cases are kept (unless --force redoes them)
    kept = set() if force else _continued(output, model.weights, mirror, blend, targets)
    todo = {case: paths for case, paths in cases.items() if case not in kept}
    record = _record(output, model.weights, mirror, blend, list(todo), force)
    existing = [str(targets[case]) for case in todo if targets[case].exists()]
    if existing and not force:
        raise RunError(f"{output}: would overwrite {len(existing)} existing prediction(s) ({existing[0]}, ...); "
                       "choose another --output or pass --force")
    runtime = setup_runtime(device)
    network: torch.nn.Module = model.network.to(runtime.device)
    compiled = False
    if compile_network and todo:
        from scnas_dsl.training.compiling import compile_forward

        probe = torch.zeros(batch_size, len(pre.dataset.modalities), *model.patch, device=runtime.device)
        with torch.autocast(runtime.device.type, dtype=runtime.amp_dtype, enabled=runtime.amp_dtype is not None):
            network = compile_forward(network, probe, train=False, what="prediction")
        compiled = network is not model.network
    written: list[Path] = []
    bar = progress_bar(len(todo), "predict", progress)

    def stopping() -> None:  # the finished cases listed as a stopped call's, which the same command continues
        bar.close()
        if output.is_dir():
            write_json(output / RECORD, {**record, "stopped": True})

    with StopSignal():
        try:
            for case, paths in sorted(todo.items()):
                if stop_requested():
                    raise InferenceStopped
                image, meta = preprocess_image(sorted(paths), pre)
                # a stop signal is answered between batches of windows (a batch system's SIGKILL follows soon)
                try:
                    probs = sliding_window_inference(network, torch.from_numpy(image), model.patch, blend=blend,  # type: ignore[arg-type]
                                                     mirror=mirror, batch_size=batch_size, device=runtime.device,
                                                     autocast_dtype=runtime.amp_dtype, should_stop=stop_requested,
                                                     fixed_batch=compiled)
                except RuntimeError as err:
                    if not out_of_memory(err):
                        raise
                    stopping()  # continued by the same command, as after a stop signal
                    raise _no_memory(case, image.shape, model, runtime.device, batch_size, run, output,
                                     len(written)) from None
                output.mkdir(parents=True, exist_ok=True)  # only now: a call failing on its first case leaves none
                # written under a temporary name and renamed: a stop or a crash never leaves half a file
                _save_nifti(restore_segmentation(probs.numpy(), meta.model_copy(update={"case_id": case})),
                            targets[case])
                if probabilities:
                    (output / "probabilities").mkdir(exist_ok=True)
                    _save_nifti(restore_probabilities(probs.numpy(), meta),
                                output / "probabilities" / f"{case}.nii.gz")
                written.append(targets[case])
                record["cases"] = sorted([*record["cases"], case])
                # after every case: an interrupted call leaves a record of what it did write
                write_json(output / RECORD, record)
                bar.update()
        except InferenceStopped:
            stopping()
            left = (f"the finished ones are kept in {output} (listed in {RECORD}), the case in progress was not "
                    "written" if written else "nothing was written")
            raise PredictionStopped(
                f"{requested_signal()}: prediction stopped after {len(written)} of {len(todo)} case(s); {left}; "
                "the same command again continues with the rest", len(written), len(todo)) from None
    bar.close()
    if output.is_dir():
        write_json(output / RECORD, record)  # complete: no longer "stopped"
    return Predictions(files=written, weights=model.weights, record=output / RECORD, continued=sorted(kept))


def _no_memory(case: str, shape: tuple[int, ...], model: TrainedModel, device: torch.device, batch_size: int,
               run: Path | str, output: Path, written: int) -> RunError:
    """The message of a case whose prediction did not fit in ``device``'s memory, and what to change."""
    voxels = "x".join(str(s) for s in shape[1:])
    advice = ["--batch-size 1" if batch_size > 1 else None,
              "--device cpu (slower; the machine's memory)" if device.type != "cpu" else None,
              "a machine with more memory"]
    done = f"the {written} case(s) before it are written in {output}" if written else "nothing was written"
    return RunError(f"case '{case}': out of memory predicting it on {device.type} ({voxels} voxels after "
                    f"preprocessing, windows of {'x'.join(map(str, model.patch))} from {Path(run) / NETWORK}, "
                    f"--batch-size {batch_size}); try {' or '.join(a for a in advice if a)}; {done}, and the same "
                    "command continues with the rest")


def _save_nifti(image: nib.Nifti1Image, path: Path) -> None:
    """``image`` to ``path`` (``.nii.gz``: gzip at nibabel's level 1), written atomically."""
    data = gzip.compress(image.to_bytes(), compresslevel=1)
    atomic_write(path, lambda f: f.write(data))
