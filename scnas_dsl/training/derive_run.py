"""``scnas derive`` and ``scnas rank``: the trained supernet of a search's run folder, read back, chooses a
genotype by another method or scores given genotypes.

A search folder holds what is needed (``config.json``, ``space.scn``, ``split.json``, ``operations.json``,
``checkpoints/last.pt``), also one written before selection existed and one paused or stopped mid-search (its
last checkpoint is then what is scored). The data set must be the one the search ran on: the fold's architecture
part in ``split.json`` is checked against the data's.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scnas_dsl.errors import CheckpointError, RunError, ScnasError, first_line
from scnas_dsl.files import atomic_write
from scnas_dsl.folders import holding
from scnas_dsl.graph.scn_text import genotype_text
from scnas_dsl.loader import load
from scnas_dsl.model import Genotype, SearchSpace
from scnas_dsl.nn import TemperatureSchedule, build_supernet
from scnas_dsl.nn.supernet import Supernet
from scnas_dsl.training.checkpoint import load_checkpoint, weights_mismatch
from scnas_dsl.training.config import SearchConfig, SelectionConfig, settings_problems
from scnas_dsl.training.data_context import DataContext, open_data
from scnas_dsl.training.device import Runtime, setup_runtime
from scnas_dsl.training.loop import adam
from scnas_dsl.training.runs import (
    CHECKPOINT_DIR,
    CONFIG,
    GENOTYPE,
    LAST,
    SPACE,
    SPLIT,
    RunFolder,
    read_split,
)
from scnas_dsl.training.selection import Score, Selection, SupernetScorer, architecture_scorer


@dataclass
class TrainedSearch:
    """A search's supernet with its last weights and logits, its settings, data and patch."""

    run: Path
    cfg: SearchConfig
    space: SearchSpace
    model: Supernet
    data: DataContext
    patch: tuple[int, int, int]
    runtime: Runtime
    epochs_done: int
    state: dict[str, Any]


def open_search(run: Path | str, *, data: str | None = None, device: str = "auto",
                ops: tuple[str, ...] = ()) -> TrainedSearch:
    """Read back the search of ``run``; ``data`` replaces the recorded data path (the same data elsewhere)."""
    from scnas_dsl.ops.plugins import check_recorded, load_operations

    run = Path(run)
    config_path = run / CONFIG
    if not config_path.is_file() or not (run / SPACE).is_file():
        raise RunError(f"{run}: not a folder written by `scnas search` (no config.json and space.scn); give the "
                       "--out folder of a search")
    try:
        recorded = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunError(f"{config_path}: cannot be read ({err})") from err
    if not isinstance(recorded, dict) or "spec" not in recorded:
        raise RunError(f"{config_path}: not the settings of a search (no 'spec'); is {run} a training run? "
                       "`scnas derive` and `scnas rank` read search folders")
    values = {k: v for k, v in recorded.items() if k in SearchConfig.model_fields}
    values.update(device=device, progress=False, workers=0)
    if ops:
        values["ops"] = tuple(ops)
    if data is not None:
        values["data"] = data
    try:
        cfg = SearchConfig.model_validate(values)
    except ValidationError as err:
        raise RunError(f"{config_path}: settings this scnas cannot read ({settings_problems(err)}); was the file "
                       "edited? Put back the run folder's copy") from err
    except ValueError as err:
        raise RunError(f"{config_path}: settings this scnas cannot read ({first_line(err)})") from err
    extra = load_operations(cfg.ops)
    check_recorded(run, extra)
    loaded = load(run / SPACE, signatures=extra.library.signatures)
    space = loaded.space(cfg.space) if cfg.space and any(s.name == cfg.space for s in loaded.document.spaces) \
        else loaded.space()
    state = load_checkpoint(run / CHECKPOINT_DIR / LAST)
    if state["kind"] != "search":
        raise CheckpointError(f"{run / 'checkpoints' / 'last.pt'}: a '{state['kind']}' checkpoint, not a search's")
    runtime = setup_runtime(cfg.device, cfg.amp)
    try:
        opened = open_data(cfg, runtime)
    except ScnasError as err:
        raise RunError(f"{run}: the search's data cannot be opened ({err}); give it with --data") from err
    _check_split(run, opened)
    patch = tuple(recorded.get("patch") or cfg.patch or ())
    if len(patch) != 3:
        raise RunError(f"{config_path}: no patch size recorded")
    schedule = TemperatureSchedule(cfg.temperature.initial, cfg.temperature.final, cfg.temperature.kind)
    model = build_supernet(space, in_channels=opened.in_channels, num_classes=opened.num_classes,
                           stem_width=cfg.stem_width, sampling=cfg.sampling, temperature=schedule, seed=cfg.seed,
                           library=extra.library)
    problem = weights_mismatch({k: tuple(v.shape) for k, v in model.state_dict().items()}, state["model"])
    try:
        if problem:
            raise ValueError(problem)
        model.load_state_dict(state["model"])
        model.load_sampler_state_dict(state["sampler"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(f"{run / 'checkpoints' / 'last.pt'}: does not fit the space of {run / 'space.scn'} "
                              f"({problem or first_line(err, 200)}); was space.scn edited? Put back the run "
                              "folder's copy (the search's spec holds the same space)") from err
    model.to(runtime.device)
    return TrainedSearch(run=run, cfg=cfg, space=space, model=model, data=opened,
                         patch=(int(patch[0]), int(patch[1]), int(patch[2])), runtime=runtime,
                         epochs_done=int(state["epoch"]), state=state)


def check_not_in_run(target: Path, run: Path, allowed: str | None = None) -> None:
    """Refuse an output inside the search folder ``run`` (its records, space, checkpoints: the command's inputs),
    except a new file or one whose name matches ``allowed`` (a regular expression) directly in the folder."""
    resolved, folder = target.resolve(), run.resolve()
    if folder not in resolved.parents:
        return
    if resolved.parent == folder and allowed is not None and re.fullmatch(allowed, resolved.name):
        return
    if resolved.exists():
        raise RunError(f"{target}: a file of the search {run} (one of this command's inputs); write elsewhere")


def _check_split(run: Path, data: DataContext) -> None:
    path = run / SPLIT
    if not path.is_file():
        return
    arch_part = sorted(read_split(run).arch_part)
    if arch_part != sorted(data.fold.arch_part):
        raise RunError(f"{path}: the search's architecture part is not the fold's of this data set; give the data "
                       "set the search ran on with --data")


def scorer_for(search: TrainedSearch, settings: SelectionConfig) -> SupernetScorer:
    """A scorer on the architecture part's fixed un-augmented batches (the same the search's selection uses)."""
    return architecture_scorer(search.model, search.cfg, search.data, search.runtime, search.patch, settings)


@holding("search", "scnas derive")
def derive(search: TrainedSearch, settings: SelectionConfig, out: Path | None = None, force: bool = False,
           say: Any = None) -> tuple[Selection, dict[str, Any] | None, Path]:
    """Choose the genotype of ``search`` by ``settings`` and write it (default ``RUN/genotype_<method>.scn``,
    with ``RUN/selection_<method>.json``); the search's own ``genotype.scn`` is never replaced."""
    from scnas_dsl.training.budgeting import budget_line, retrain_line
    from scnas_dsl.training.search import genotype_name, select_genotype, write_selection_record

    run = search.run
    target = out if out is not None else run / f"genotype_{settings.method}.scn"
    if target.resolve() == (run / GENOTYPE).resolve():
        raise RunError(f"{target}: the search's own genotype; write the derived one elsewhere")
    check_not_in_run(target, run, allowed=r"genotype_\w+\.scn")
    if target.suffix != ".scn":
        raise RunError(f"{target}: a genotype file ends in .scn")
    if target.exists() and not force:
        raise RunError(f"{target}: exists; give --force to replace it or -o for another file")
    if search.runtime.is_main and not os.access(run, os.W_OK):
        raise RunError(f"{run}: cannot be written (the selection record selection_{settings.method}.json goes "
                       "there); nothing was written")
    optimizer = adam(search.model.weight_parameters(), search.cfg.weight_optimizer)
    if "weight_optimizer" in search.state:
        try:
            optimizer.load_state_dict(search.state["weight_optimizer"])
        except (ValueError, KeyError):
            pass  # a fresh optimiser of the run's settings then
    name = f"{genotype_name(search.space, search.cfg)}_{settings.method}"
    selection, check = select_genotype(search.model, search.cfg, search.runtime, search.data, search.patch, name,
                                       optimizer=optimizer, settings=settings, say=say)
    report = budget_line(selection.details, target.name, f"selection_{settings.method}.json")
    budget_header = report + ".\n" if report else ""
    header = (f"Chosen by `scnas derive --select {settings.method}` from the search in {run} "
              f"({search.epochs_done} epochs done).\n" + (check["text"] + ".\n" if check else "")
              + budget_header + retrain_line(target.name, selection.details.get("budget")))
    # the genotype imports the run's space, by its path from where the genotype is written
    space_path = Path(os.path.relpath(run.resolve() / SPACE, target.parent.resolve()))
    text = genotype_text(selection.genotype, header, space_path.as_posix())
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda f: f.write(text), mode="w")
    except OSError as err:
        raise RunError(f"{target}: cannot be written ({err.strerror or err}); nothing was written") from err
    if search.runtime.is_main:
        try:
            write_selection_record(RunFolder(run), selection, check, search.epochs_done,
                                   name=f"selection_{settings.method}.json", settings=settings)
        except OSError as err:
            raise RunError(f"{run / f'selection_{settings.method}.json'}: cannot be written "
                           f"({err.strerror or err}); the genotype was written to {target}") from err
    return selection, check, target


def rank(search: TrainedSearch, genotypes: list[Genotype], settings: SelectionConfig) -> list[dict[str, Any]]:
    """Every genotype's supernet score, best first (``settings.by``), with its rank."""
    scorer = scorer_for(search, settings)
    scored: list[tuple[Genotype, Score]] = []
    for genotype in genotypes:
        if genotype.space != search.space.name:
            raise RunError(f"genotype '{genotype.name}' is of space '{genotype.space}', the search's is "
                           f"'{search.space.name}'")
        scored.append((genotype, scorer.score_genotype(genotype)))
    order = sorted(range(len(scored)), key=lambda i: scored[i][1].key(settings.by), reverse=True)
    return [{"rank": r + 1, "genotype": scored[i][0].name, "loss": scored[i][1].loss,
             "dice": scored[i][1].dice} for r, i in enumerate(order)]


def rank_table_csv(rows: list[dict[str, Any]]) -> str:
    """The rank table as CSV text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["rank", "genotype", "loss", "dice"])
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()

