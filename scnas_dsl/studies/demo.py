"""``scnas demo``: the whole method on generated data, on a laptop's CPU, in a few minutes.

It generates a small heart-like data set (one MRI channel, one label), searches a small space with the
paper's eight operations (two levels, two nodes per cell, stem width 16: embedded below so that the demo
works from any directory after any install), derives the genotype, retrains it from scratch, predicts the
validation cases of fold 0 on their original grid with the last weights (as ``scnas predict``: no choice of
weights on those cases; mirrored, as by default) and evaluates them. The validation during retraining is not
mirrored (it only labels ``best.pt``, which the demo does not use; mirrored it cost about 110 s). The paper's schedules and loss are used as they are; sizes and
epoch counts are small, and the architecture learning rate is raised (``arch_lr``) so that the logits move in
the demo's few search steps (see docs/training.md for the figures).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scnas_dsl.data.preprocess import preprocess_dataset
from scnas_dsl.data.synth import synthesize
from scnas_dsl.errors import RunError
from scnas_dsl.evaluation.metrics import Evaluation, evaluate_pairs
from scnas_dsl.files import write_text
from scnas_dsl.folders import folder_state, foreign_folder, replace_folder
from scnas_dsl.prediction.predict import Weights, predict_run
from scnas_dsl.training.config import SearchConfig, TrainConfig
from scnas_dsl.training.retrain import run_train
from scnas_dsl.training.runs import SPACE, read_split
from scnas_dsl.training.search import run_search

#: The paper's eight candidate operations, as .scn operation calls.
PAPER_OPS: dict[str, str] = {
    "conv3": "conv(kernel=3)", "dil2": "sep_conv(kernel=3, dilation=2)", "dil3": "sep_conv(kernel=3, dilation=3)",
    "dil4": "sep_conv(kernel=3, dilation=4)", "maxpool": "max_pool(kernel=3)", "avgpool": "avg_pool(kernel=3)",
    "skip": "identity", "none": "zero",
}


def small_space(name: str = "demo", levels: int = 2, ops: tuple[str, ...] = tuple(PAPER_OPS), nodes: int = 2,
                stem_width: int = 16) -> str:
    """The .scn text of a small space with the paper's four cell types: ``levels`` down-samplings, ``nodes``
    intermediate nodes per cell, a subset of the paper's operations."""
    encoder = " ".join(["red"] + ["enc red"] * (levels - 1))
    decoder = " ".join(["exp dec"] * levels)
    lines = [f"space {name} {{", "  ops paper {"]
    lines += [f"    {op} = {PAPER_OPS[op]}" for op in ops]
    lines += ["  }"]
    lines += [f"  cell {cell} {role} {{ nodes {nodes}; inputs 2; ops paper }}"
              for cell, role in (("enc", "normal"), ("red", "reduction"), ("dec", "normal"), ("exp", "expansion"))]
    lines += ["  unet {", "    dims 3", f"    stem conv_block(kernel=3) -> {stem_width}", f"    encoder {encoder}",
              "    bridge enc", f"    decoder {decoder}", "    head logits(kernel=1)", "    width_factor 2",
              "    share by_type", "    node_width split", "  }", "}"]
    return "\n".join(lines) + "\n"


#: The demo's search space: the paper's cells and operations, smaller (two levels, two nodes per cell).
DEMO_SPACE = "# The scnas demo's space: the paper's cells and eight operations, two levels, two nodes.\n" + small_space()

MARKER = ".scnas-demo"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo; ``quick()`` is the reduced budget used by the test suite."""

    cases: int = 20
    shape: tuple[int, int, int] = (40, 40, 40)
    patch: tuple[int, int, int] = (32, 32, 32)
    #: 16: with node_width split the two nodes of a level-0 cell get 8 channels each
    stem_width: int = 16
    search_epochs: int = 4
    search_batches: int = 15
    search_batch: int = 2
    train_epochs: int = 15
    train_batches: int = 20
    train_batch: int = 2
    val_every: int = 5
    #: learning rate of the logits' Adam: the paper's 0.003 moves them by at most ~0.2 in the demo's 60
    #: steps (its genotype would be close to a random draw); 0.05 lets the search make a choice. A demo
    #: setting only: ``scnas search`` keeps the paper's 0.003.
    arch_lr: float = 0.05

    @classmethod
    def quick(cls) -> DemoSettings:
        """A tiny budget for smoke tests (its Dice means nothing)."""
        return cls(cases=6, shape=(24, 24, 24), patch=(16, 16, 16), stem_width=4, search_epochs=1,
                   search_batches=2, train_epochs=1, train_batches=2, val_every=1)


@dataclass
class DemoResult:
    """Where everything is, the Dice table and the time taken."""

    out: Path
    genotype: Path
    search_plots: Path
    predictions: Path
    evaluation: Evaluation
    seconds: float
    #: the weights that made the predictions (the last ones)
    weights: Weights


def run_demo(out: Path | str, settings: DemoSettings | None = None, *, force: bool = False,
             progress: bool = True, echo: Callable[[str], None] = print, device: str = "auto") -> DemoResult:
    """Run the demo into the new folder ``out`` (``force`` replaces an earlier demo folder, nothing else)."""
    s = settings or DemoSettings()
    out = Path(out)
    state = folder_state(out, MARKER)
    if state == "foreign":
        raise foreign_folder(out, "a demo folder (--force replaces only earlier demos)", "--force",
                             "folder (scnas demo OTHER)")
    if state == "ours" and not force:
        raise RunError(f"{out}: already exists; choose another folder (scnas demo OTHER) or pass --force to "
                       "replace an earlier demo")
    replace_folder(out, MARKER, "scnas demo\n")
    threads = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        # The demo's tensors are small: a second thread gains little on an idle 2-core machine, and when
        # anything else runs, threads waiting for each other made a step 5-15x slower (measured)
        torch.set_num_threads(1)
    try:
        return _run(out, s, progress, echo, device)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, s: DemoSettings, progress: bool, echo: Callable[[str], None], device: str) -> DemoResult:
    started = time.time()
    echo(f"[1/6] generating {s.cases} cases of a heart-like task in {out / 'data'}")
    data = synthesize(out / "data", "heart", cases=s.cases, shape=s.shape, seed=0)
    # Keep the data's own voxel size (median spacing): small volumes, and no cache outside the demo folder.
    pre = preprocess_dataset(data, out=out / "preprocessed", spacing=None, progress=progress)
    write_text(out / SPACE, DEMO_SPACE)
    common: dict[str, Any] = dict(data=str(pre.root), patch=s.patch, stem_width=s.stem_width, device=device, seed=0,
                  spacing=None, progress=progress)
    echo(f"[2/6] searching ({s.search_epochs} epochs x {s.search_batches} steps, pair sampling, "
         f"architecture learning rate {s.arch_lr:g})")
    arch = SearchConfig.model_fields["arch_optimizer"].default.model_copy(update={"lr": s.arch_lr})
    search = run_search(SearchConfig(spec=str(out / SPACE), out=str(out / "search"), epochs=s.search_epochs,
                                     batches_per_epoch=s.search_batches, batch_size=s.search_batch,
                                     arch_optimizer=arch, **common))
    assert search is not None  # the demo never stops early
    echo(f"[3/6] derived genotype: {search.genotype_file}")
    for line in search.pruning:
        echo(f"      {line}")
    echo(f"[4/6] retraining from scratch ({s.train_epochs} epochs x {s.train_batches} steps)")
    trained = run_train(TrainConfig(genotype=str(search.genotype_file), out=str(out / "train"),
                                    epochs=s.train_epochs, batches_per_epoch=s.train_batches,
                                    batch_size=s.train_batch, val_every=s.val_every,
                                    # validation only labels best.pt, which the demo does not use: unmirrored it
                                    # saves about 110 s of the demo; the predictions below mirror (the default)
                                    mirror_validation=False, **common))
    assert trained is not None
    val = read_split(out / "train").val
    dataset_cases = {c: (data / "imagesTr" / f"{c}.nii.gz", data / "labelsTr" / f"{c}.nii.gz") for c in val}
    echo(f"[5/6] predicting the {len(val)} validation cases of fold 0 on their original grid")
    predictions = out / "predictions"
    made = predict_run(out / "train", [img for img, _ in dataset_cases.values()], predictions, device=device,
                       checkpoint="last", progress=progress)
    echo(f"[6/6] evaluating the {made.weights.label()}")
    evaluation = evaluate_pairs({c: (predictions / f"{c}.nii.gz", lab) for c, (_, lab) in dataset_cases.items()},
                                label_names={1: "left atrium"})
    evaluation.write(predictions)
    return DemoResult(out=out, genotype=search.genotype_file, search_plots=search.run / "plots",
                      predictions=predictions, evaluation=evaluation, seconds=time.time() - started,
                      weights=made.weights)
