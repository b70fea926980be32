"""``scnas train``: retraining a genotype (or a hand-designed baseline) from scratch, as the paper.

Adam (lr 3e-4, betas (0.9, 0.999)), the learning rate x0.2 after a 30-epoch plateau of the epoch's mean
training loss, stop after 500 epochs or when the learning rate falls under 1e-7; soft Jaccard loss; every
``val_every`` epochs (and at the end) the mean foreground Dice on the fold's validation cases with
sliding-window inference on the preprocessed grid (nnU-Net's "pseudo Dice" during training); the best and
the last checkpoints are kept. The genotype may come from another task: the network is rebuilt for this data
set's channels and classes (the paper's transfer). Several processes: DDP (NCCL on GPUs, gloo on the CPU).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from scnas_dsl.data.cache import MANIFEST
from scnas_dsl.errors import RunError, ScnasError, first_line
from scnas_dsl.evaluation.metrics import dice_per_label, nanmean
from scnas_dsl.graph.scn_text import genotype_text, space_text
from scnas_dsl.inference.sliding_window import InferenceStopped, sliding_window_inference
from scnas_dsl.loader import load
from scnas_dsl.model import Document, SearchSpace
from scnas_dsl.nn import build_network
from scnas_dsl.nn.network import FixedNetwork
from scnas_dsl.ops.plugins import RECORD as OPERATIONS_RECORD
from scnas_dsl.ops.plugins import load_operations
from scnas_dsl.stopping import CollectiveStop, stop_requested
from scnas_dsl.training.checkpoint import capture_rng, restore_rng, save_checkpoint
from scnas_dsl.training.config import TrainConfig, retraining_width
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
from scnas_dsl.training.losses import deep_supervision_loss, soft_jaccard_loss
from scnas_dsl.training.plots import plot_train
from scnas_dsl.training.resume import check_resumed_settings, record_epochs, restoring, resume_state
from scnas_dsl.training.runs import (
    BEST,
    CONFIG,
    ENVIRONMENT,
    GENOTYPE,
    LAST,
    METRICS,
    NETWORK,
    PREPROCESSING,
    SPACE,
    SPLIT,
    RunFolder,
    environment,
)


@dataclass
class TrainResult:
    """What a finished retraining leaves."""

    run: Path
    best_dice: float
    best_epoch: int
    epochs: int
    stopped_by: str


def default_out(cfg: TrainConfig, genotype_name: str) -> Path:
    """``runs/train_<genotype>_fold<K>`` when no ``--out`` is given."""
    return Path("runs") / f"train_{genotype_name}_fold{cfg.fold}"


def validation_dice(model: torch.nn.Module, pre: Any, case_ids: list[str], patch: tuple[int, ...],
                    labels: dict[int, str], runtime: Runtime, blend: str = "gaussian",
                    mirror: bool = False, should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Mean Dice per label over ``case_ids`` (preprocessed grid) and their mean, ``foreground_mean``.
    ``should_stop`` is asked between batches of windows (with several ranks, collectively: see
    :class:`~scnas_dsl.stopping.CollectiveStop`); :class:`InferenceStopped` when it says yes."""
    per_case: dict[str, dict[int, float]] = {}
    # several ranks: the stop is decided together (a rank that has finished its share keeps answering),
    # so that every rank abandons the validation at the same call and none waits in the gather below
    collective = CollectiveStop(runtime.mean_values, should_stop) if should_stop and runtime.distributed else None
    # each rank scores its share of the cases; the scores are gathered so that every rank has them all
    for case in case_ids[runtime.rank::runtime.world_size]:
        image, label = pre.load(case, mmap=False)
        probs = sliding_window_inference(model, torch.from_numpy(np.ascontiguousarray(image)), patch,
                                         blend=blend, mirror=mirror, device=runtime.device,  # type: ignore[arg-type]
                                         autocast_dtype=runtime.amp_dtype, should_stop=collective or should_stop)
        per_case[case] = dice_per_label(probs.argmax(0).numpy(), np.asarray(label), labels)
    if collective is not None and collective.drain():
        raise InferenceStopped("another rank stopped")
    for part in runtime.gather(per_case):
        per_case.update(part)
    means = {name: nanmean(s[k] for s in per_case.values()) for k, name in labels.items()}
    return {"mean_dice": means, "foreground_mean": nanmean(means.values()), "cases": len(per_case)}


def run_train(cfg: TrainConfig, *, resume: bool = False, force: bool = False,
              stop_after_epochs: int | None = None, resume_hint: str | None = None) -> TrainResult | None:
    """Retrain as configured (or resume); None when stopped early by ``stop_after_epochs`` (checkpoint
    saved). Raises :class:`RunInterrupted` on Ctrl-C or SIGTERM after saving a checkpoint, whose message
    says how to continue: ``resume_hint``, or ``scnas train ... --out RUN --resume``."""
    runtime = setup_runtime(cfg.device, cfg.amp)
    try:
        with ExitStack() as held:  # the run folder, held for the whole job (scnas_dsl.folders.hold_folder)
            return _train(cfg, runtime, resume, force, stop_after_epochs, resume_hint, held)
    finally:
        runtime.close()


def _check_genotype_record(run: Path, space: Any, genotype: Any, given: str, signatures: Any) -> None:
    """On a resume: the network of the genotype file given must be the run's (its ``genotype.scn``, which
    predict and export rebuild); an operation edited to one of the same weights would otherwise train on as another
    network, silently."""
    path = run / GENOTYPE
    try:
        recorded_space, recorded = load(path, signatures=signatures).genotype()
    except (ScnasError, OSError) as err:
        raise RunError(f"{path}: the run's copy of its genotype cannot be read ({first_line(err, 200)}); put it "
                       "back, or start the training again") from err
    if recorded.cells != genotype.cells or space_text(recorded_space, None, False) != space_text(space, None, False):
        raise RunError(f"{given}: not the network this run trains ({path}): the genotype file or the run's copy "
                       "was edited since the training started; resume with the genotype it started with, or "
                       "start a new training (another --out)")


def _train(cfg: TrainConfig, runtime: Runtime, resume: bool, force: bool,
           stop_after_epochs: int | None, resume_hint: str | None, held: ExitStack) -> TrainResult | None:
    extra = load_operations(cfg.ops)  # the installed plugins and --ops: recorded in operations.json
    loaded = load(cfg.genotype, signatures=extra.library.signatures)
    space, genotype = loaded.genotype(cfg.genotype_name)
    width, why_width = retraining_width(cfg.stem_width, space.unet.stem.width,
                                        any(s.name == space.name for s in loaded.document.spaces))
    cfg = cfg.model_copy(update={"stem_width": width})  # resolved: recorded, compared on --resume
    out = Path(cfg.out) if cfg.out else default_out(cfg, genotype.name)
    run = RunFolder.held_for(out, "train", command="scnas train", writer=runtime.is_main, held=held, resume=resume,
                             force=force)
    if resume:  # other settings are refused before the data are prepared (minutes); the patch after
        check_resumed_settings(out, {k: v for k, v in cfg.model_dump(mode="json").items() if k != "patch"})
        _check_genotype_record(out, space, genotype, cfg.genotype, extra.library.signatures)
    data = open_data(cfg, runtime)
    patch = patch_for(cfg, data, space)
    torch.manual_seed(cfg.seed)
    net = build_network(space, genotype, in_channels=data.in_channels, num_classes=data.num_classes,
                        stem_width=cfg.stem_width, deep_supervision=cfg.deep_supervision, library=extra.library)
    net.checkpoint_cells = cfg.checkpoint_cells is True
    if runtime.device.type == "cuda":
        from scnas_dsl.nn.cost import estimate

        report = estimate(net, patch=patch, batch_size=per_rank_batch(cfg.batch_size, runtime))
        net.checkpoint_cells = settle_checkpointing(report, runtime, cfg.checkpoint_cells,
                                                    f"retraining (patch {patch}, batch {cfg.batch_size})",
                                                    num_classes=data.num_classes)
    if runtime.is_main:  # everything checked: now the folder is made (or replaced, with --force)
        run.prepare("train", resume=resume, force=force)
    runtime.barrier()
    net.to(runtime.device)
    model: torch.nn.Module = net
    if runtime.distributed:
        model = DistributedDataParallel(net, device_ids=[runtime.device.index] if runtime.device.type == "cuda"
                                        else None)
    if cfg.compile:
        model = _compiled(net, model, cfg, runtime, data, patch)
    job = _TrainJob(net, model, cfg, runtime, run, data, patch)
    state = LoopState()
    if resume:
        state = job.resume(resume_state(out, {**cfg.model_dump(mode="json"), "patch": list(patch)},
                                        job.ckpt_path, "train"))
        record_epochs(run, cfg.epochs)  # a bare --resume later continues to this length
    else:
        _write_run_files(run, cfg, space, genotype, data, patch, runtime, out, net.plan.deep_supervision)
        run.write_json(OPERATIONS_RECORD, extra.record())
    loop = EpochLoop.for_run("train", cfg, run, runtime, state, held,
                             resume_hint=resume_hint or f"scnas train ... --out {out} --resume",
                             checkpoint_path=job.ckpt_path, stop_after_epochs=stop_after_epochs)
    details = f"{adam_text(cfg.optimizer)}; {len(data.fold.val)} validation case(s)"
    if net.plan.deep_supervision:
        details += f"; deep supervision at levels 0, {', '.join(map(str, net.plan.deep_supervision))}"
    details += f"; stem width {cfg.stem_width}: {why_width}"
    loop.announce(genotype.name, cfg, patch, state, resume, details)
    end = loop.run_job(job, state)
    if end.how == "paused":
        return None
    if runtime.is_main and not job.best_path.exists():  # no validation cases: the last weights are the best known
        save_checkpoint(job.best_path, {"kind": "weights", "model": net.state_dict(), "epoch": end.epoch,
                                        "dice": float("nan")})
    runtime.barrier()
    best = job.best
    return TrainResult(run=run.path, best_dice=float(best["dice"]), best_epoch=int(best["epoch"]),
                       epochs=end.epoch + 1, stopped_by=end.reason if end.how == "early" else "epochs")


def _compiled(net: FixedNetwork, model: torch.nn.Module, cfg: TrainConfig, runtime: Runtime, data: DataContext,
              patch: tuple[int, int, int]) -> torch.nn.Module:
    """``--compile``: the training forward compiled on a probe batch of the run's shape, under the run's
    autocast and with the deep-supervision heads as the steps use them (so the probe compiles the graph the
    steps run); ``model`` itself when compiling fails (a note says why)."""
    from scnas_dsl.training.compiling import compile_forward

    probe = torch.zeros(per_rank_batch(cfg.batch_size, runtime), data.in_channels, *patch, device=runtime.device)
    net.deep_supervision = bool(net.plan.deep_supervision)
    try:
        with runtime.autocast():
            return compile_forward(model, probe, train=True, what="retraining",
                                   log=None if runtime.is_main else (lambda text: None))
    finally:
        net.deep_supervision = False


class _TrainJob:
    """Retraining's part of the epoch loop: one Adam step per batch; at the end of an epoch the plateau
    schedule, validation every ``val_every`` epochs (keeping the best weights), and the learning-rate floor."""

    def __init__(self, net: FixedNetwork, model: torch.nn.Module, cfg: TrainConfig, runtime: Runtime,
                 run: RunFolder, data: DataContext, patch: tuple[int, int, int]) -> None:
        self.net, self.model, self.cfg, self.runtime, self.run, self.data, self.patch = (
            net, model, cfg, runtime, run, data, patch)
        self.opt = adam(net.parameters(), cfg.optimizer)
        self.sched = plateau(self.opt, cfg.plateau)
        self.scaler = runtime.grad_scaler()
        self.ckpt_path, self.best_path = run.checkpoints / LAST, run.checkpoints / BEST
        self.best: dict[str, Any] = {"dice": -1.0, "epoch": -1}
        self.train_loader = loader(cfg, data, runtime, data.fold.train, patch, stream=3)

    def resume(self, state: dict[str, Any]) -> LoopState:
        """Load a training checkpoint; the loop state to continue from."""
        with restoring(self.ckpt_path, "this network"):
            self.net.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            load_scaler_state(self.scaler, state["scaler"])
            restore_rng(state["rng"])
            self.best = {"dice": float(state["best"]["dice"]), "epoch": int(state["best"]["epoch"])}
            epoch, step = int(state["epoch"]), int(state["step"])
            sums = {k: float(v) for k, v in state.get("sums", {"train_loss": float(state.get("loss_sum", 0.0))}).items()}
        self.run.truncate_jsonl(METRICS, epoch)
        return LoopState(epoch, step, sums)

    def batches(self, epoch: int, skip: int) -> Iterable[Any]:
        return epoch_batches(self.train_loader, epoch, skip)

    def begin_epoch(self, epoch: int, first: int) -> None:
        self.model.train()

    def step(self, epoch: int, step: int, batch: Any) -> dict[str, torch.Tensor]:
        x, y = (self.runtime.to_device(t) for t in batch)
        self.opt.zero_grad(set_to_none=True)
        levels = self.net.plan.deep_supervision
        with self.runtime.autocast():
            if levels:  # the heads' outputs only for this forward: validation and prediction get one tensor
                self.net.deep_supervision = True
                try:
                    loss = deep_supervision_loss(self.model(x), y, levels, reduce_over_ranks=True)
                finally:
                    self.net.deep_supervision = False
            else:
                loss = soft_jaccard_loss(self.model(x), y, reduce_over_ranks=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return {"train_loss": loss.detach()}

    def learning_rates(self) -> dict[str, float]:
        return {"weights": lr_of(self.opt)}

    def end_epoch(self, epoch: int, means: dict[str, float]) -> EpochEnd:
        cfg, val_cases = self.cfg, self.data.fold.val
        record: dict[str, Any] = {"lr": lr_of(self.opt)}
        # put back when a stop abandons the validation: the resumed run steps the scheduler again
        before, lrs = self.sched.state_dict(), [group["lr"] for group in self.opt.param_groups]
        self.sched.step(means["train_loss"])
        low_lr = lr_of(self.opt) < cfg.min_lr
        last = epoch + 1 == cfg.epochs or low_lr
        summary = f"loss {fmt(means['train_loss'])} | lr {record['lr']:.3g}"
        if val_cases and ((epoch + 1) % cfg.val_every == 0 or last):
            cases = val_cases if last or cfg.val_cases is None else val_cases[:cfg.val_cases]
            # a stop signal abandons the validation between batches of windows (a batch system's SIGKILL
            # follows its SIGTERM within ~30 s); with several ranks all of them at the same batch
            try:
                val = validation_dice(self.net, self.data.pre, cases, self.patch, self.data.label_names,
                                      self.runtime, cfg.blend, cfg.mirror_validation, should_stop=stop_requested)
            except InferenceStopped:
                self.sched.load_state_dict(before)
                for group, lr in zip(self.opt.param_groups, lrs, strict=True):
                    group["lr"] = lr
                raise
            record.update(val_dice=val["foreground_mean"], val_mean_dice=val["mean_dice"])
            summary += f" | validation Dice {fmt(val['foreground_mean'], 3)} ({val['cases']} cases)"
            if val["foreground_mean"] > self.best["dice"]:
                self.best = {"dice": val["foreground_mean"], "epoch": epoch}
                if self.runtime.is_main:
                    save_checkpoint(self.best_path, {"kind": "weights", "model": self.net.state_dict(),
                                                     "epoch": epoch, "dice": val["foreground_mean"]})
        stop = f"learning rate {lr_of(self.opt):.2g} < {cfg.min_lr:g}" if low_lr else None
        return EpochEnd(record, summary, stop)

    def save(self, state: LoopState) -> None:
        if self.runtime.is_main:
            save_checkpoint(self.ckpt_path, {
                "kind": "train", "epoch": state.epoch, "step": state.step, "sums": state.sums,
                "best": self.best, "model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(), "rng": capture_rng(),
            })
        self.runtime.barrier()

    def plot(self) -> None:
        plot_train(self.run)


def _write_run_files(run: RunFolder, cfg: TrainConfig, space: SearchSpace, genotype: Any,
                     data: DataContext, patch: tuple[int, ...], runtime: Runtime, out: Path,
                     net_levels: tuple[int, ...]) -> None:
    """Everything ``scnas predict`` needs besides the weights: the network's recipe and the preprocessing."""
    from scnas_dsl.graph.printer import print_document

    run.write_json(CONFIG, {**cfg.model_dump(mode="json"), "out": str(out), "patch": list(patch)})
    run.write_text(SPACE, print_document(Document(spaces=(space,))))
    run.write_text(GENOTYPE, genotype_text(
        genotype, f"Retrained by `scnas train` from {cfg.genotype} on {Path(cfg.data).name}, fold {cfg.fold}."))
    run.write_json(NETWORK, {
        "genotype": genotype.name, "space": space.name, "in_channels": data.in_channels,
        "num_classes": data.num_classes, "stem_width": cfg.stem_width, "patch": list(patch),
        "deep_supervision": list(net_levels),
        "labels": {str(k): v for k, v in data.pre.dataset.labels.items()}, "blend": cfg.blend,
    })
    run.write_json(ENVIRONMENT, environment(str(runtime.device), cfg.seed, runtime.world_size))
    run.write_json(SPLIT, {"fold": cfg.fold, "train": data.fold.train, "val": data.fold.val})
    if run.writer:
        (run.path / PREPROCESSING).mkdir(exist_ok=True)
        shutil.copyfile(data.pre.root / MANIFEST, run.path / PREPROCESSING / MANIFEST)
