"""``scnas search``: the stochastic bi-level search of SCNAS (Algorithm 1 with pair sampling by default).

Each step makes one weight update on a batch of the fold's weight part, then one architecture update on a
batch of its architecture part (first-order alternation, as the paper). Both learning rates are multiplied by
0.1 after a 20-epoch plateau of the epoch's mean training (weight-part) loss; the temperature follows the
supernet's schedule, set at the start of each epoch from the share of the search done.

Distributed: every rank builds the supernet from the same seed, so each rank draws the same architecture in
each step; gradients of the weights and of the logits are averaged over the ranks with one all_reduce each
(DDP's averaging done by hand, because the sampled sub-network changes every step and DDP would otherwise
also all-reduce the logits' gradients during the weight step). Only rank 0 writes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scnas_dsl.errors import RunError, ScnasError, first_line
from scnas_dsl.graph.scn_text import genotype_body, genotype_text, space_text
from scnas_dsl.loader import load
from scnas_dsl.model import Genotype, SearchSpace
from scnas_dsl.nn import TemperatureSchedule, build_supernet
from scnas_dsl.nn.supernet import Supernet
from scnas_dsl.ops.plugins import RECORD as OPERATIONS_RECORD
from scnas_dsl.ops.plugins import load_operations
from scnas_dsl.stopping import StopRequested, StopSignal
from scnas_dsl.training.budgeting import SearchBudget, budget_line, retrain_line, search_budget
from scnas_dsl.training.checkpoint import capture_rng, restore_rng, save_checkpoint
from scnas_dsl.training.config import SearchConfig, SelectionConfig
from scnas_dsl.training.data_context import (
    DataContext,
    epoch_batches,
    loader,
    open_data,
    patch_for,
    per_rank_batch,
)
from scnas_dsl.training.device import Runtime, load_scaler_state, settle_checkpointing, setup_runtime
from scnas_dsl.training.loop import EpochEnd, EpochLoop, LoopState, adam, adam_text, fmt, lr_of, plateau
from scnas_dsl.training.losses import soft_jaccard_loss
from scnas_dsl.training.plots import plot_search, plot_search_progress, probability_figure
from scnas_dsl.training.resume import check_resumed_settings, record_epochs, restoring, resume_state
from scnas_dsl.training.runs import (
    ALPHAS,
    CONFIG,
    ENVIRONMENT,
    GENOTYPE,
    LAST,
    METRICS,
    SELECTION,
    SPACE,
    SPLIT,
    RunFolder,
    environment,
    read_jsonl,
)
from scnas_dsl.training.search_report import (
    Choices,
    changed_edges,
    choices_of,
    discretisation_gap,
    edge_table,
    parameter_free_share,
)
from scnas_dsl.training.selection import (
    CostContext,
    Selection,
    architecture_scorer,
    choose,
    fit_to_budget,
    select_alpha,
    weight_tuner,
)
from scnas_dsl.training.tracking import Tracking

StepHook = Callable[[int, int], None]


@dataclass
class SearchResult:
    """What a finished search leaves: the run folder, the genotype and its file."""

    run: Path
    genotype: Genotype
    genotype_file: Path
    pruning: list[str]
    #: the final architecture logits alpha, structure key -> (E, O) tensor on the CPU
    logits: dict[str, torch.Tensor]
    #: the self-check (``scnas_dsl.training.selection.self_check``), None when switched off
    self_check: dict[str, Any] | None = None
    #: the budget's record (limits, the genotype's costs, what was given up), None without ``--budget``
    budget: dict[str, Any] | None = None
    #: the budget's line of the report (as in ``genotype.scn``'s header), None without ``--budget``
    budget_report: str | None = None


def default_out(cfg: SearchConfig, space: SearchSpace) -> Path:
    """``runs/search_<space>_fold<K>`` when no ``--out`` is given."""
    return Path("runs") / f"search_{space.name}_fold{cfg.fold}"


def _grads_to(params: list[torch.nn.Parameter], loss: torch.Tensor, runtime: Runtime) -> None:
    """Set ``p.grad`` of ``params`` from ``loss`` (only these: the other group's gradients are not computed
    into ``.grad``), averaged over the ranks.

    A parameter that took no part in the step (an operation that was not sampled, a cell output that was not
    used) gets ``grad = None``, not zeros: Adam skips it, so its weights and its moments stay exactly as they
    were. A zero gradient would not: Adam keeps moving a parameter from its moments (with the paper's betas
    (0.1, 0.001) such a step grows about beta1 / sqrt(beta2) ~ 3x per step). Every rank drew the same
    architecture, so the set of gradients that exist is the same on every rank and only those are averaged.
    """
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    present = [g for g in grads if g is not None]
    runtime.average(present)
    for p, g in zip(params, grads, strict=True):
        p.grad = g


def update(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
           loss: torch.Tensor, runtime: Runtime) -> bool:
    """One gradient step of ``optimizer`` on ``params`` (the weights theta or the logits alpha) from
    ``loss``: gradients of what took part only (:func:`_grads_to`), averaged over the ranks; afterwards the
    gradients are released so that they hold no memory during the other group's step.

    Returns False, and steps nothing, when no parameter of ``params`` took part: late in a search every edge of
    a step may run only its dominant operation, so the architecture loss does not depend on alpha. The step is
    then skipped on every rank alike (they drew the same architecture); an enabled fp16 GradScaler would
    otherwise raise "No inf checks were recorded for this optimizer"."""
    _grads_to(params, scaler.scale(loss), runtime)
    if all(p.grad is None for p in params):
        return False
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return True


def run_search(cfg: SearchConfig, *, resume: bool = False, force: bool = False,
               stop_after_epochs: int | None = None, on_step: StepHook | None = None) -> SearchResult | None:
    """Run (or resume) a search as configured; returns None when stopped early by ``stop_after_epochs``
    (a checkpoint is saved, ``resume=True`` continues). Raises :class:`RunInterrupted` on Ctrl-C or
    SIGTERM after saving a checkpoint."""
    runtime = setup_runtime(cfg.device, cfg.amp)
    try:
        with ExitStack() as held:  # the run folder, held for the whole job (scnas_dsl.folders.hold_folder)
            return _search(cfg, runtime, resume, force, stop_after_epochs, on_step, held)
    finally:
        runtime.close()


def _search(cfg: SearchConfig, runtime: Runtime, resume: bool, force: bool, stop_after_epochs: int | None,
            on_step: StepHook | None, held: ExitStack) -> SearchResult | None:
    extra = load_operations(cfg.ops)  # the installed plugins and --ops: recorded in operations.json
    loaded = load(cfg.spec, signatures=extra.library.signatures)
    space = loaded.space(cfg.space)
    out = Path(cfg.out) if cfg.out else default_out(cfg, space)
    run = RunFolder.held_for(out, "search", command="scnas search", writer=runtime.is_main, held=held, resume=resume,
                             force=force)
    if resume:  # other settings are refused before the data are prepared (minutes); the patch after
        check_resumed_settings(out, {k: v for k, v in cfg.model_dump(mode="json").items() if k != "patch"})
    data = open_data(cfg, runtime)
    patch = patch_for(cfg, data, space)
    if cfg.arch_warmup_epochs >= cfg.epochs:
        raise RunError(f"--arch-warmup {cfg.arch_warmup_epochs} leaves no epoch of the {cfg.epochs} for the "
                       "architecture: use fewer warm-up epochs or more --epochs")

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    schedule = TemperatureSchedule(cfg.temperature.initial, cfg.temperature.final, cfg.temperature.kind)
    model = build_supernet(space, in_channels=data.in_channels, num_classes=data.num_classes,
                           stem_width=cfg.stem_width, sampling=cfg.sampling, temperature=schedule, seed=cfg.seed,
                           library=extra.library)
    _check_memory(model, runtime, patch, cfg)
    budget = search_budget(cfg, space, patch, data.in_channels, data.num_classes, extra.library)
    if budget is not None and not resume:  # an impossible budget is refused before anything is written
        budget.check_reachable()
    if runtime.is_main:  # everything checked: now the folder is made (or replaced, with --force)
        run.prepare("search", resume=resume, force=force)
    runtime.barrier()
    model.to(runtime.device)
    job = _SearchJob(model, cfg, runtime, run, data, patch, on_step, budget)
    state = LoopState()
    if resume:
        _check_space_record(out, space, extra.library.signatures, cfg.spec)
        state = job.resume(resume_state(out, {**cfg.model_dump(mode="json"), "patch": list(patch)},
                                        job.ckpt_path, "search"))
        record_epochs(run, cfg.epochs)  # a bare --resume later continues to this length
    else:
        run.write_json(CONFIG, {**cfg.model_dump(mode="json"), "out": str(out), "patch": list(patch)})
        source = Path(cfg.spec).read_text(encoding="utf-8-sig")
        own = not loaded.document.imports and any(s.name == space.name for s in loaded.document.spaces)
        run.write_text(SPACE, space_text(space, source, own))
        run.write_json(ENVIRONMENT, environment(str(runtime.device), cfg.seed, runtime.world_size))
        run.write_json(OPERATIONS_RECORD, extra.record())
        run.write_json(SPLIT, {"fold": cfg.fold, "weight_part": data.fold.weight_part,
                                      "arch_part": data.fold.arch_part, "val": data.fold.val})
    if runtime.distributed:  # identical starting point on every rank, also after a resume
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)
    job.start_choices()

    loop = EpochLoop.for_run("search", cfg, run, runtime, state, held,
                             resume_hint=f"scnas search ... --out {out} --resume", checkpoint_path=job.ckpt_path,
                             stop_after_epochs=stop_after_epochs)
    job.tracking = loop.tracking  # the alpha heat maps go to the run's trackers too
    loop.announce(space.name, cfg, patch, state, resume, f"{cfg.sampling} sampling; weights "
                  f"{adam_text(cfg.weight_optimizer)}; logits {adam_text(cfg.arch_optimizer)}")
    end = loop.run_job(job, state)
    if end.how == "paused":
        return None
    if resume and state.epoch >= cfg.epochs:  # nothing ran: the choice made after these epochs stands
        chosen = _chosen_before(job, space, loop, state.epoch)
        if chosen is not None:
            return chosen
    if runtime.distributed:  # every rank chooses; a stop reaching one rank must not leave the others waiting
        return _finish(job, space, loop, end.epoch + 1)
    with StopSignal():  # the choice (scores, self-check draws, budget fitting) takes minutes: stoppable
        try:
            return _finish(job, space, loop, end.epoch + 1)
        except StopRequested as stop:
            raise loop.interrupted(str(stop), "while choosing the genotype after the last epoch (the epochs are "
                                   "done; the choice is made again)") from None


def _check_space_record(run: Path, space: SearchSpace, signatures: Any, cfg_spec: str) -> None:
    """On a resume: the run's ``space.scn`` (which its genotype file imports) must still hold the space the
    search runs; an edited copy would make the written genotype a network of another space."""
    path = run / SPACE
    try:
        recorded = load(path, signatures=signatures).space(space.name)
    except (ScnasError, OSError) as err:
        raise RunError(f"{path}: the run's copy of its space cannot be read ({first_line(err, 200)}); put it back "
                       "(the search's spec holds the same space) or start the search again") from err
    if space_text(recorded, None, False) != space_text(space, None, False):
        raise RunError(f"{path}: is not the space '{space.name}' of {cfg_spec}, which this resume runs: the spec or "
                       "this copy was edited since the search started (the genotype written at the end imports the "
                       "copy); resume with both as they were, or start a new search")


class _SearchJob:
    """The search's part of the epoch loop: one weight step and one architecture step per step, the
    schedules and the search's own report at the end of each epoch, its checkpoint and plots."""

    def __init__(self, model: Supernet, cfg: SearchConfig, runtime: Runtime, run: RunFolder, data: DataContext,
                 patch: tuple[int, int, int], on_step: StepHook | None, budget: SearchBudget | None = None) -> None:
        self.model, self.cfg, self.runtime, self.run, self.on_step = model, cfg, runtime, run, on_step
        self.budget = budget
        self.data, self.patch = data, patch
        self.tracking = Tracking((), run.path, kind="search", settings={}, start_epoch=0)  # set by _search
        self.weights, self.logits = model.weight_parameters(), model.arch_parameters()
        self.w_opt, self.a_opt = adam(self.weights, cfg.weight_optimizer), adam(self.logits, cfg.arch_optimizer)
        self.w_sched, self.a_sched = plateau(self.w_opt, cfg.plateau), plateau(self.a_opt, cfg.plateau)
        self.w_scaler, self.a_scaler = runtime.grad_scaler(), runtime.grad_scaler()
        self.ckpt_path = run.checkpoints / LAST
        self.w_loader = loader(cfg, data, runtime, data.fold.weight_part, patch, stream=1)
        self.a_loader = loader(cfg, data, runtime, data.fold.arch_part, patch, stream=2)
        # the discretisation gap: the same few un-augmented patches of the architecture part every epoch
        self.gap_loader = (loader(cfg, data, runtime, data.fold.arch_part, patch, stream=4, augment=False,
                                  num_batches=cfg.gap_batches) if cfg.gap_batches else None)
        self.free = model.parameter_free()
        self.choices: Choices | None = None
        self.warming = False

    def resume(self, state: dict[str, Any]) -> LoopState:
        """Load a search checkpoint; the loop state to continue from."""
        with restoring(self.ckpt_path, "this search's network"):
            self.model.load_state_dict(state["model"])
            self.model.load_sampler_state_dict(state["sampler"])
            self.w_opt.load_state_dict(state["weight_optimizer"])
            self.a_opt.load_state_dict(state["arch_optimizer"])
            self.w_sched.load_state_dict(state["weight_scheduler"])
            self.a_sched.load_state_dict(state["arch_scheduler"])
            load_scaler_state(self.w_scaler, state["weight_scaler"])
            load_scaler_state(self.a_scaler, state["arch_scaler"])
            restore_rng(state["rng"])
            epoch, step = int(state["epoch"]), int(state["step"])
            sums = {k: float(v) for k, v in state["sums"].items()}
        self.run.truncate_jsonl(METRICS, epoch)
        self.run.truncate_jsonl(ALPHAS, epoch)
        return LoopState(epoch, step, sums)

    def start_choices(self) -> None:
        """The choices the first reported epoch is compared with: the last record's, or the current logits'."""
        records = read_jsonl(self.run.path / METRICS) if self.run.writer else []
        if records and "edges" in records[-1]:
            self.choices = choices_of(records[-1]["edges"])
        else:
            self.choices = choices_of(edge_table(self.model.arch_probabilities()))

    def batches(self, epoch: int, skip: int) -> Iterable[Any]:
        return zip(epoch_batches(self.w_loader, epoch, skip), epoch_batches(self.a_loader, epoch, skip),
                   strict=True)

    def begin_epoch(self, epoch: int, first: int) -> None:
        self.model.train()
        warmup = self.cfg.arch_warmup_epochs
        self.warming = epoch < warmup  # only the weights learn; the temperature anneals after the warm-up
        self.model.set_progress(max(epoch - warmup, 0) / max(self.cfg.epochs - warmup - 1, 1))
        if first == 0:
            self.model.reset_sample_counts()

    def step(self, epoch: int, step: int, batch: Any) -> dict[str, torch.Tensor]:
        (xw, yw), (xa, ya) = batch
        model, runtime = self.model, self.runtime
        xw, yw = runtime.to_device(xw), runtime.to_device(yw)
        # the logits get no gradient here: the draw's weights are detached, so autograd keeps nothing that only
        # alpha's gradient would need (the same draws and the same weight gradients)
        with runtime.autocast():
            loss_w = soft_jaccard_loss(model(xw, arch_grad=False), yw, reduce_over_ranks=True)
        update(self.weights, self.w_opt, self.w_scaler, loss_w, runtime)
        xa, ya = runtime.to_device(xa), runtime.to_device(ya)
        # during a warm-up the architecture part's loss is only reported: no graph, the logits stay
        with torch.set_grad_enabled(self.learns_logits()), runtime.autocast():
            loss_a = soft_jaccard_loss(model(xa), ya, reduce_over_ranks=True)
        out = {"weight_loss": loss_w.detach(), "arch_loss": loss_a.detach()}
        if self.learns_logits():
            # the budget's penalty (zero inside the budget): the same on every rank, as the logits are
            extra = self.budget.penalty(model, epoch) if self.budget is not None else None
            if extra is not None:
                out["budget_penalty"] = extra.detach()
                loss_a = loss_a + extra.to(loss_a.device)
            update(self.logits, self.a_opt, self.a_scaler, loss_a, runtime)
        if self.on_step is not None:
            self.on_step(epoch, step)
        return out

    def learns_logits(self) -> bool:
        """Whether this step updates alpha: not during a warm-up, never with fair sampling (it trains the
        shared weights only; the genotype is then chosen by measured scores, ``--select``)."""
        return not self.warming and self.model.sampling != "fair"

    def learning_rates(self) -> dict[str, float]:
        return {"weights": lr_of(self.w_opt), "logits": lr_of(self.a_opt)}

    def end_epoch(self, epoch: int, means: dict[str, float]) -> EpochEnd:
        model = self.model
        self.w_sched.step(means["weight_loss"])
        self.a_sched.step(means["weight_loss"])
        probabilities = model.arch_probabilities()
        edges = edge_table(probabilities)
        choices = choices_of(edges)
        changed, self.choices = changed_edges(self.choices, choices), choices
        every = [row for rows in edges.values() for row in rows.values()]
        genotype, pruning = model.derive(name="derived")
        record: dict[str, Any] = {
            "warm_up": self.warming,
            "temperature": model.temperature, "lr_weights": lr_of(self.w_opt), "lr_arch": lr_of(self.a_opt),
            "mean_entropy": sum(r["entropy"] for r in every) / max(len(every), 1),
            "mean_top_probability": sum(r["p"] for r in every) / max(len(every), 1),
            "changed_edges": changed, "edges_total": len(every),
            "parameter_free_share": parameter_free_share(choices, self.free),
        }
        if self.gap_loader is not None:
            record.update(discretisation_gap(model, self.gap_loader, self.runtime, self.cfg.seed * 7919 + epoch))
        budget_summary = ""
        if self.budget is not None:
            record["budget"], budget_summary = self.budget.record(model, epoch)
        record.update(edges=edges, sample_counts=model.sample_counts(), genotype=genotype_body(genotype),
                      pruned=pruning)
        self.run.append_jsonl(ALPHAS, {
            "epoch": epoch, "temperature": model.temperature,
            "logits": {k: a.detach().cpu().tolist() for k, a in model.arch.items()},
            "probabilities": probabilities})
        if self.tracking.active:  # the heat maps of softmax(alpha), as plots/probabilities.png draws them
            self.tracking.figure(epoch, "alpha", probability_figure(
                probabilities, f"epoch {epoch + 1}, temperature {model.temperature:.3g}"))
        summary = (f"{'warm-up (weights only) | ' if self.warming else ''}"
                   f"loss weights {fmt(means['weight_loss'])} arch {fmt(means['arch_loss'])} | "
                   f"tau {model.temperature:.3g} | lr {lr_of(self.w_opt):.3g}/{lr_of(self.a_opt):.3g} | "
                   f"entropy {record['mean_entropy']:.3f} top p {record['mean_top_probability']:.2f} | "
                   f"changed {changed}/{len(every)} edges | "
                   f"param-free {record['parameter_free_share']:.2f}")
        if self.gap_loader is not None:
            summary += (f" | gap loss {fmt(record['sampled_loss'])} -> {fmt(record['argmax_loss'])}, "
                        f"Dice {fmt(record['sampled_dice'], 3)} -> {fmt(record['argmax_dice'], 3)} "
                        "(sampled -> argmax)")
        if budget_summary:
            summary += f" | {budget_summary}"
        return EpochEnd(record, summary)

    def save(self, state: LoopState) -> None:
        if self.runtime.is_main:
            m = self.model
            save_checkpoint(self.ckpt_path, {
                "kind": "search", "epoch": state.epoch, "step": state.step, "sums": state.sums,
                "model": m.state_dict(), "sampler": m.sampler_state_dict(),
                "weight_optimizer": self.w_opt.state_dict(), "arch_optimizer": self.a_opt.state_dict(),
                "weight_scheduler": self.w_sched.state_dict(), "arch_scheduler": self.a_sched.state_dict(),
                "weight_scaler": self.w_scaler.state_dict(), "arch_scaler": self.a_scaler.state_dict(),
                "rng": capture_rng(),
            })
        self.runtime.barrier()

    def plot(self) -> None:
        plot_search_progress(self.run)


def _check_memory(model: Supernet, runtime: Runtime, patch: tuple[int, ...], cfg: SearchConfig) -> None:
    """Refuse a search the GPU cannot hold, and settle ``checkpoint_cells`` (``settle_checkpointing``)."""
    model.checkpoint_cells = cfg.checkpoint_cells is True
    if runtime.device.type != "cuda":
        return
    from scnas_dsl.nn.cost import estimate

    report = estimate(model, patch=patch, batch_size=per_rank_batch(cfg.batch_size, runtime))
    what = f"the search (patch {patch}, batch {cfg.batch_size}, {cfg.sampling} sampling)"
    model.checkpoint_cells = settle_checkpointing(report, runtime, cfg.checkpoint_cells, what, cfg.sampling,
                                                  num_classes=model.num_classes)


def genotype_name(space: SearchSpace, cfg: SearchConfig) -> str:
    """The name of a search's genotype in its ``genotype.scn``: ``<space>_fold<K>`` (a name of the language)."""
    return f"{space.name}_fold{cfg.fold}".replace("-", "_")


def _finish(job: _SearchJob, space: SearchSpace, loop: EpochLoop, epochs_done: int) -> SearchResult:
    """Choose the genotype (``cfg.selection``), run the self-check, write ``genotype.scn`` (checked by loading it
    back), ``selection.json``, the self-check's record in ``metrics.jsonl``, and the plots."""
    model, run, cfg = job.model, job.run, job.cfg
    name = genotype_name(space, cfg)
    selection, check = select_genotype(model, cfg, job.runtime, job.data, job.patch, name,
                                       optimizer=job.w_opt, say=loop.say, budget=job.budget)
    genotype = selection.genotype
    budget_report = budget_line(selection.details, GENOTYPE, SELECTION)
    method = {"alpha": "the largest logit on each edge (the paper's)",
              "projection": "projection (edge by edge, the candidate whose presence scores best on the supernet)",
              "sampled": "the best of random genotypes scored on the supernet"}[selection.method]
    header = (f"Found by `scnas search` on {Path(cfg.data).name}, fold {cfg.fold}, {cfg.epochs} epochs, "
              f"{cfg.sampling} sampling, seed {cfg.seed}; chosen by {method}.\n"
              + (check["text"] + ".\n" if check else "") + (budget_report + ".\n" if budget_report else "")
              + retrain_line(GENOTYPE, selection.details.get("budget")))
    target = run.write_text(GENOTYPE, genotype_text(genotype, header))
    write_selection_record(run, selection, check, epochs_done, settings=cfg.selection)
    if check is not None:  # the self-check's rank, at the last epoch's step
        loop.tracking.amend(epochs_done - 1, {"self_check": {k: check[k] for k in ("rank", "of", "score")
                                                             if isinstance(check.get(k), (int, float))}})
    if check is not None:
        loop.say(check["text"])
    if budget_report:
        loop.say(budget_report)
    if run.writer:
        try:
            load(target, signatures=model.library.signatures).genotype(name)
        except ScnasError as err:  # a bug of ours, not the user's: say so plainly
            raise ScnasError(f"{target}: the written genotype does not load back ({err}); please report this") from err
        plot_search(run, space, genotype)
    return SearchResult(run=run.path, genotype=genotype, genotype_file=target, pruning=selection.pruning,
                        logits={k: a.detach().cpu().clone() for k, a in model.arch.items()}, self_check=check,
                        budget=selection.details.get("budget"), budget_report=budget_report or None)


def _chosen_before(job: _SearchJob, space: SearchSpace, loop: EpochLoop, epochs_done: int) -> SearchResult | None:
    """The result of a finished search resumed with no more epochs and the same selection settings: its
    ``genotype.scn`` and ``selection.json`` as they are (the choice and its self-check take minutes to make again).
    None when anything differs or cannot be read: then the choice is made again."""
    run, cfg = job.run, job.cfg
    try:
        record = json.loads((run.path / SELECTION).read_text())
        name = genotype_name(space, cfg)
        genotype = load(run.path / GENOTYPE, signatures=job.model.library.signatures).genotype(name)[1]
    except (OSError, ValueError, ScnasError):
        return None
    if (not isinstance(record, dict) or record.get("epochs_done") != epochs_done
            or record.get("settings") != cfg.selection.model_dump(mode="json")
            or record.get("genotype") != genotype_body(genotype)):
        return None
    details: dict[str, Any] = record["details"] if isinstance(record.get("details"), dict) else {}
    check = record.get("self_check") if isinstance(record.get("self_check"), dict) else None
    loop.say(f"search: its genotype was chosen after these {epochs_done} epoch(s) already, with these settings: "
             f"{run.path / GENOTYPE} stands (a larger --epochs, or other --select settings, chooses again)")
    return SearchResult(run=run.path, genotype=genotype, genotype_file=run.path / GENOTYPE,
                        pruning=[str(p) for p in record.get("pruned") or []],
                        logits={k: a.detach().cpu().clone() for k, a in job.model.arch.items()}, self_check=check,
                        budget=details.get("budget"), budget_report=budget_line(details, GENOTYPE, SELECTION) or None)


def write_selection_record(run: RunFolder, selection: Selection, check: dict[str, Any] | None, epochs_done: int,
                           name: str = SELECTION, settings: SelectionConfig | None = None) -> None:
    """``name`` (the method's whole record and the self-check, after ``epochs_done`` epochs) and, for the search's
    own choice, ``selection`` and ``self_check`` in the last epoch's record of ``metrics.jsonl``."""
    record = {"method": selection.method, "epochs_done": epochs_done, "genotype": genotype_body(selection.genotype),
              "pruned": selection.pruning, "details": selection.details, "self_check": check,
              "settings": None if settings is None else settings.model_dump(mode="json")}
    run.write_json(name, record)
    if name == SELECTION:
        run.amend_last_jsonl(METRICS, {
            "selection": selection.method, "budget_result": selection.details.get("budget"),
            "self_check": None if check is None else {k: v for k, v in check.items() if k != "random_scores"}})


def select_genotype(model: Supernet, cfg: SearchConfig, runtime: Runtime, data: DataContext,
                    patch: tuple[int, int, int], name: str, *, optimizer: torch.optim.Optimizer | None = None,
                    settings: SelectionConfig | None = None, say: Callable[..., None] | None = None,
                    budget: SearchBudget | None = None) -> tuple[Selection, dict[str, Any] | None]:
    """The genotype of a trained supernet by ``settings`` (default: the run's ``cfg.selection``) and its
    self-check, scored on the fold's architecture part; a projection fine-tunes with ``optimizer`` (default: a
    new Adam of the run's weight settings) and undoes it afterwards."""
    settings = settings or cfg.selection
    if budget is None:  # the run's own budget (``scnas derive`` keeps it too)
        budget = search_budget(cfg, model.space, patch, model.in_channels, model.num_classes, model.library)
    needs_scores = settings.method != "alpha" or settings.check_samples > 0
    if not needs_scores:
        return fit_to_budget(model, select_alpha(model, name), budget), None
    scorer = architecture_scorer(model, cfg, data, runtime, patch, settings)
    tune = None
    if settings.method == "projection" and settings.tune_steps:
        tuning = optimizer or adam(model.weight_parameters(), cfg.weight_optimizer)
        w_loader = loader(cfg, data, runtime, data.fold.weight_part, patch, stream=7)

        def endless() -> Iterator[Any]:
            epoch = 0
            while True:
                yield from epoch_batches(w_loader, epoch, 0)
                epoch += 1

        kept_optimizer = copy.deepcopy(tuning.state_dict())
        tune = weight_tuner(model, tuning, endless(), runtime, settings.tune_steps)
    cost = CostContext(patch=tuple(patch), in_channels=model.in_channels, num_classes=model.num_classes,
                       stem_width=model.plan.stem_width)
    try:
        return choose(model, scorer, settings, seed=cfg.seed, cost=cost, name=name, tune=tune, budget=budget,
                      progress=(lambda line: say(line, False)) if say is not None else None)
    finally:
        if tune is not None:
            tuning.load_state_dict(kept_optimizer)
