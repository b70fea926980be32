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

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scnas_dsl.errors import CheckpointError, ScnasError
from scnas_dsl.loader import load
from scnas_dsl.model import Genotype, SearchSpace
from scnas_dsl.nn import TemperatureSchedule, build_supernet
from scnas_dsl.train import common
from scnas_dsl.train.checkpoint import capture_rng, restore_rng, save_checkpoint
from scnas_dsl.train.config import SearchConfig
from scnas_dsl.train.device import Runtime, check_gpu_memory, setup_runtime, training_memory
from scnas_dsl.train.losses import soft_jaccard_loss
from scnas_dsl.train.runs import RunFolder, environment

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


def default_out(cfg: SearchConfig, space: SearchSpace) -> Path:
    """``runs/search_<space>_fold<K>`` when no ``--out`` is given."""
    return Path("runs") / f"search_{space.name}_fold{cfg.fold}"


def entropy_table(probabilities: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Entropy (nats) of each edge's operation distribution: key -> "src->dst" -> H."""
    return {key: {edge: -sum(p * math.log(p) for p in ops.values() if p > 0) for edge, ops in edges.items()}
            for key, edges in probabilities.items()}


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
           loss: torch.Tensor, runtime: Runtime) -> None:
    """One gradient step of ``optimizer`` on ``params`` (the weights theta or the logits alpha) from
    ``loss``: gradients of what took part only (:func:`_grads_to`), averaged over the ranks; afterwards the
    gradients are released so that they hold no memory during the other group's step."""
    _grads_to(params, scaler.scale(loss), runtime)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def run_search(cfg: SearchConfig, *, resume: bool = False, force: bool = False,
               stop_after_epochs: int | None = None, on_step: StepHook | None = None) -> SearchResult | None:
    """Run (or resume) a search as configured; returns None when stopped early by ``stop_after_epochs``
    (a checkpoint is saved, ``resume=True`` continues). Raises :class:`common.RunInterrupted` on Ctrl-C or
    SIGTERM after saving a checkpoint."""
    runtime = setup_runtime(cfg.device, cfg.amp)
    try:
        return _search(cfg, runtime, resume, force, stop_after_epochs, on_step)
    finally:
        runtime.close()


def _search(cfg: SearchConfig, runtime: Runtime, resume: bool, force: bool, stop_after_epochs: int | None,
            on_step: StepHook | None) -> SearchResult | None:
    loaded = load(cfg.spec)
    space = loaded.space(cfg.space)
    out = Path(cfg.out) if cfg.out else default_out(cfg, space)
    run = RunFolder(out, writer=runtime.is_main)
    if runtime.is_main:
        run.prepare("search", resume=resume, force=force, create=False)  # refuse early, write nothing yet
    data = common.open_data(cfg, runtime)
    patch = common.patch_for(cfg, data, space)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    schedule = TemperatureSchedule(cfg.temperature.initial, cfg.temperature.final, cfg.temperature.kind)
    model = build_supernet(space, in_channels=data.in_channels, num_classes=data.num_classes,
                           stem_width=cfg.stem_width, sampling=cfg.sampling, temperature=schedule, seed=cfg.seed)
    _check_memory(model, runtime, patch, cfg)
    if runtime.is_main:  # everything checked: now the folder is made (or replaced, with --force)
        run.prepare("search", resume=resume, force=force)
    runtime.barrier()
    model.to(runtime.device)
    weights, logits = model.weight_parameters(), model.arch_parameters()
    w_opt = torch.optim.Adam(weights, lr=cfg.weight_optimizer.lr, betas=cfg.weight_optimizer.betas,
                             weight_decay=cfg.weight_optimizer.weight_decay)
    a_opt = torch.optim.Adam(logits, lr=cfg.arch_optimizer.lr, betas=cfg.arch_optimizer.betas,
                             weight_decay=cfg.arch_optimizer.weight_decay)
    p = cfg.plateau
    w_sched = common.plateau(w_opt, p.factor, p.patience, p.threshold)
    a_sched = common.plateau(a_opt, p.factor, p.patience, p.threshold)
    w_scaler, a_scaler = runtime.grad_scaler(), runtime.grad_scaler()
    ckpt_path = run.checkpoints / "last.pt"

    start_epoch, start_step = 0, 0
    sums = {"weight_loss": 0.0, "arch_loss": 0.0}
    if resume:
        state = common.resume_state(out, {**cfg.model_dump(mode="json"), "patch": list(patch)}, ckpt_path,
                                    "search")
        try:
            model.load_state_dict(state["model"])
            model.load_sampler_state_dict(state["sampler"])
            w_opt.load_state_dict(state["weight_optimizer"])
            a_opt.load_state_dict(state["arch_optimizer"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"{ckpt_path}: does not fit this search's network ({str(err)[:200]}); "
                                  "was the spec or the stem width changed?") from err
        w_sched.load_state_dict(state["weight_scheduler"])
        a_sched.load_state_dict(state["arch_scheduler"])
        w_scaler.load_state_dict(state["weight_scaler"])
        a_scaler.load_state_dict(state["arch_scaler"])
        restore_rng(state["rng"])
        start_epoch, start_step, sums = int(state["epoch"]), int(state["step"]), dict(state["sums"])
        run.truncate_jsonl("metrics.jsonl", start_epoch)
        run.truncate_jsonl("alphas.jsonl", start_epoch)
    else:
        run.write_json("config.json", {**cfg.model_dump(mode="json"), "out": str(out), "patch": list(patch)})
        source = Path(cfg.spec).read_text(encoding="utf-8-sig")
        own = not loaded.document.imports and any(s.name == space.name for s in loaded.document.spaces)
        run.write_text("space.scn", common.space_text(space, source, own))
        run.write_json("environment.json", environment(str(runtime.device), cfg.seed, runtime.world_size))
        run.write_json("split.json", {"fold": cfg.fold, "weight_part": data.fold.weight_part,
                                      "arch_part": data.fold.arch_part, "val": data.fold.val})
    if runtime.distributed:  # identical starting point on every rank, also after a resume
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)

    w_loader = common.loader(cfg, data, runtime, data.fold.weight_part, patch, stream=1)
    a_loader = common.loader(cfg, data, runtime, data.fold.arch_part, patch, stream=2)
    steps = cfg.batches_per_epoch

    def checkpoint(epoch: int, step: int) -> None:
        if runtime.is_main:
            save_checkpoint(ckpt_path, {
                "kind": "search", "epoch": epoch, "step": step, "sums": dict(sums),
                "model": model.state_dict(), "sampler": model.sampler_state_dict(),
                "weight_optimizer": w_opt.state_dict(), "arch_optimizer": a_opt.state_dict(),
                "weight_scheduler": w_sched.state_dict(), "arch_scheduler": a_sched.state_dict(),
                "weight_scaler": w_scaler.state_dict(), "arch_scaler": a_scaler.state_dict(),
                "rng": capture_rng(), "patch": list(patch),
            })
        runtime.barrier()

    epochs_run = 0
    with common.StopSignal() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            started = time.time()
            model.train()
            model.set_progress(epoch / max(cfg.epochs - 1, 1))
            first = start_step if epoch == start_epoch else 0
            if first == 0:
                sums = {"weight_loss": 0.0, "arch_loss": 0.0}
                model.reset_sample_counts()
            bar = common.progress_bar(steps, f"search epoch {epoch + 1}/{cfg.epochs}",
                                      cfg.progress and runtime.is_main)
            bar.update(first)
            batches = zip(common.epoch_batches(w_loader, epoch, first), common.epoch_batches(a_loader, epoch, first),
                          strict=True)
            for step, ((xw, yw), (xa, ya)) in enumerate(batches, start=first):
                xw, yw = runtime.to_device(xw), runtime.to_device(yw)
                with runtime.autocast():
                    loss_w = soft_jaccard_loss(model(xw), yw)
                update(weights, w_opt, w_scaler, loss_w, runtime)
                xa, ya = runtime.to_device(xa), runtime.to_device(ya)
                with runtime.autocast():
                    loss_a = soft_jaccard_loss(model(xa), ya)
                update(logits, a_opt, a_scaler, loss_a, runtime)
                if on_step is not None:
                    on_step(epoch, step)
                # one all_reduce for the logged losses and the stop request, so that every rank stops at the
                # same step even when the signal reaches the ranks at different moments
                lw, la, stopping = runtime.mean_values([loss_w.item(), loss_a.item(), float(bool(stop.requested))])
                common.check_finite(lw, epoch, step, steps, "weight loss", common.lr_of(w_opt))
                common.check_finite(la, epoch, step, steps, "architecture loss", common.lr_of(a_opt))
                sums["weight_loss"] += lw
                sums["arch_loss"] += la
                bar.set_postfix(loss=f"{lw:.4f}", arch=f"{la:.4f}", tau=f"{model.temperature:.3g}")
                bar.update()
                if stopping > 0 and step + 1 < steps:
                    stop.requested = stop.requested or "SIGTERM"
                    bar.close()
                    checkpoint(epoch, step + 1)
                    raise common.RunInterrupted(
                        f"{stop.requested}: stopped at epoch {epoch + 1}, step {step + 1}; checkpoint saved to "
                        f"{ckpt_path}; continue with `scnas search ... --out {out} --resume`")
            bar.close()
            record = _epoch_record(model, epoch, sums, steps, w_opt, a_opt, time.time() - started)
            w_sched.step(record["weight_loss"])
            a_sched.step(record["weight_loss"])
            run.append_jsonl("metrics.jsonl", record)
            run.append_jsonl("alphas.jsonl", {"epoch": epoch, "temperature": model.temperature,
                                              "logits": {k: a.detach().cpu().tolist() for k, a in model.arch.items()},
                                              "probabilities": model.arch_probabilities()})
            checkpoint(epoch + 1, 0)
            epochs_run += 1
            if runtime.mean_values([float(bool(stop.requested))])[0] > 0:  # every rank decides alike
                raise common.RunInterrupted(
                    f"{stop.requested or 'SIGTERM'}: stopped after epoch {epoch + 1}; checkpoint saved to {ckpt_path}; "
                    f"continue with `scnas search ... --out {out} --resume`")
            if stop_after_epochs is not None and epochs_run >= stop_after_epochs and epoch + 1 < cfg.epochs:
                return None
    return _finish(model, space, run, cfg)


def _check_memory(model: torch.nn.Module, runtime: Runtime, patch: tuple[int, ...], cfg: SearchConfig) -> None:
    if runtime.device.type != "cuda":
        return
    from scnas_dsl.nn.cost import estimate

    report = estimate(model, patch=patch, batch_size=common.per_rank_batch(cfg.batch_size, runtime))  # type: ignore[arg-type]
    need = training_memory(report, runtime, cfg.sampling)
    check_gpu_memory(runtime, need, f"the search (patch {patch}, batch {cfg.batch_size}, {cfg.sampling} sampling)")


def _epoch_record(model: Any, epoch: int, sums: dict[str, float], steps: int, w_opt: torch.optim.Optimizer,
                  a_opt: torch.optim.Optimizer, seconds: float) -> dict[str, Any]:
    probabilities = model.arch_probabilities()
    entropy = entropy_table(probabilities)
    genotype, pruning = model.derive(name="derived")
    every = [h for edges in entropy.values() for h in edges.values()]
    return {
        "epoch": epoch, "weight_loss": sums["weight_loss"] / steps, "arch_loss": sums["arch_loss"] / steps,
        "temperature": model.temperature, "lr_weights": common.lr_of(w_opt), "lr_arch": common.lr_of(a_opt),
        "mean_entropy": sum(every) / max(len(every), 1), "entropy": entropy,
        "sample_counts": model.sample_counts(), "genotype": common.genotype_body(genotype), "pruned": pruning,
        "seconds": round(seconds, 3),
    }


def _finish(model: Any, space: SearchSpace, run: RunFolder, cfg: SearchConfig) -> SearchResult:
    """Derive the genotype, write ``genotype.scn`` (checked by loading it back) and the plots."""
    name = f"{space.name}_fold{cfg.fold}".replace("-", "_")
    genotype, pruning = model.derive(name=name)
    header = (f"Found by `scnas search` on {Path(cfg.data).name}, fold {cfg.fold}, {cfg.epochs} epochs, "
              f"{cfg.sampling} sampling, seed {cfg.seed}.\nRetrain it with: scnas train genotype.scn --data DATA")
    target = run.write_text("genotype.scn", common.genotype_text(genotype, header))
    if run.writer:
        try:
            load(target).genotype(name)
        except ScnasError as err:  # a bug of ours, not the user's: say so plainly
            raise ScnasError(f"{target}: the written genotype does not load back ({err}); please report this") from err
        from scnas_dsl.train.plots import plot_search

        plot_search(run, space, genotype)
    return SearchResult(run=run.path, genotype=genotype, genotype_file=target, pruning=pruning,
                        logits={k: a.detach().cpu().clone() for k, a in model.arch.items()})
