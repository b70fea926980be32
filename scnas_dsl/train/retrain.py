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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from scnas_dsl.errors import CheckpointError
from scnas_dsl.loader import load
from scnas_dsl.model import Document, SearchSpace
from scnas_dsl.nn import build_network
from scnas_dsl.train import common
from scnas_dsl.train.checkpoint import capture_rng, restore_rng, save_checkpoint
from scnas_dsl.train.config import TrainConfig
from scnas_dsl.train.device import Runtime, check_gpu_memory, setup_runtime, training_memory
from scnas_dsl.train.inference import sliding_window_inference
from scnas_dsl.train.losses import soft_jaccard_loss
from scnas_dsl.train.metrics import dice_per_label, nanmean
from scnas_dsl.train.runs import RunFolder, environment


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
                    mirror: bool = False) -> dict[str, Any]:
    """Mean Dice per label over ``case_ids`` (preprocessed grid) and their mean, ``foreground_mean``."""
    per_case: dict[str, dict[int, float]] = {}
    # each rank scores its share of the cases; the scores are gathered so that every rank has them all
    for case in case_ids[runtime.rank::runtime.world_size]:
        image, label = pre.load(case, mmap=False)
        probs = sliding_window_inference(model, torch.from_numpy(np.ascontiguousarray(image)), patch,
                                         blend=blend, mirror=mirror, device=runtime.device,  # type: ignore[arg-type]
                                         autocast_dtype=runtime.amp_dtype)
        per_case[case] = dice_per_label(probs.argmax(0).numpy(), np.asarray(label), labels)
    for part in runtime.gather(per_case):
        per_case.update(part)
    means = {name: nanmean(s[k] for s in per_case.values()) for k, name in labels.items()}
    return {"mean_dice": means, "foreground_mean": nanmean(means.values()), "cases": len(per_case)}


def run_train(cfg: TrainConfig, *, resume: bool = False, force: bool = False,
              stop_after_epochs: int | None = None) -> TrainResult | None:
    """Retrain as configured (or resume); None when stopped early by ``stop_after_epochs`` (checkpoint
    saved). Raises :class:`common.RunInterrupted` on Ctrl-C or SIGTERM after saving a checkpoint."""
    runtime = setup_runtime(cfg.device, cfg.amp)
    try:
        return _train(cfg, runtime, resume, force, stop_after_epochs)
    finally:
        runtime.close()


def _train(cfg: TrainConfig, runtime: Runtime, resume: bool, force: bool,
           stop_after_epochs: int | None) -> TrainResult | None:
    space, genotype = load(cfg.genotype).genotype(cfg.genotype_name)
    out = Path(cfg.out) if cfg.out else default_out(cfg, genotype.name)
    run = RunFolder(out, writer=runtime.is_main)
    if runtime.is_main:
        run.prepare("train", resume=resume, force=force, create=False)  # refuse early, write nothing yet
    data = common.open_data(cfg, runtime)
    patch = common.patch_for(cfg, data, space)
    torch.manual_seed(cfg.seed)
    net = build_network(space, genotype, in_channels=data.in_channels, num_classes=data.num_classes,
                        stem_width=cfg.stem_width)
    if runtime.device.type == "cuda":
        from scnas_dsl.nn.cost import estimate

        report = estimate(net, patch=patch, batch_size=common.per_rank_batch(cfg.batch_size, runtime))
        check_gpu_memory(runtime, training_memory(report, runtime),
                         f"retraining (patch {patch}, batch {cfg.batch_size})")
    if runtime.is_main:  # everything checked: now the folder is made (or replaced, with --force)
        run.prepare("train", resume=resume, force=force)
    runtime.barrier()
    net.to(runtime.device)
    model: torch.nn.Module = net
    if runtime.distributed:
        model = DistributedDataParallel(net, device_ids=[runtime.device.index] if runtime.device.type == "cuda"
                                        else None)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.optimizer.lr, betas=cfg.optimizer.betas,
                           weight_decay=cfg.optimizer.weight_decay)
    sched = common.plateau(opt, cfg.plateau.factor, cfg.plateau.patience, cfg.plateau.threshold)
    scaler = runtime.grad_scaler()
    ckpt_path, best_path = run.checkpoints / "last.pt", run.checkpoints / "best.pt"
    start_epoch, start_step, loss_sum = 0, 0, 0.0
    best = {"dice": -1.0, "epoch": -1}
    if resume:
        state = common.resume_state(out, {**cfg.model_dump(mode="json"), "patch": list(patch)}, ckpt_path,
                                    "train")
        try:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"{ckpt_path}: does not fit this network ({str(err)[:200]}); was the genotype "
                                  "or the stem width changed?") from err
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        start_epoch, start_step, loss_sum = int(state["epoch"]), int(state["step"]), float(state["loss_sum"])
        best = dict(state["best"])
        run.truncate_jsonl("metrics.jsonl", start_epoch)
    else:
        _write_run_files(run, cfg, space, genotype, data, patch, runtime, out)

    train_loader = common.loader(cfg, data, runtime, data.fold.train, patch, stream=3)
    steps = cfg.batches_per_epoch
    val_cases = data.fold.val

    def checkpoint(epoch: int, step: int) -> None:
        if runtime.is_main:
            save_checkpoint(ckpt_path, {
                "kind": "train", "epoch": epoch, "step": step, "loss_sum": loss_sum, "best": best,
                "model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(), "rng": capture_rng(),
            })
        runtime.barrier()

    stopped_by, epochs_run, epoch = "epochs", 0, start_epoch - 1  # epoch: the last one run
    with common.StopSignal() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            started = time.time()
            model.train()
            first = start_step if epoch == start_epoch else 0
            if first == 0:
                loss_sum = 0.0
            bar = common.progress_bar(steps, f"train epoch {epoch + 1}/{cfg.epochs}", cfg.progress and runtime.is_main)
            bar.update(first)
            for step, (x, y) in enumerate(common.epoch_batches(train_loader, epoch, first), start=first):
                x, y = runtime.to_device(x), runtime.to_device(y)
                opt.zero_grad(set_to_none=True)
                with runtime.autocast():
                    loss = soft_jaccard_loss(model(x), y)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                # with the stop request in the same all_reduce: every rank stops at the same step
                value, stopping = runtime.mean_values([loss.item(), float(bool(stop.requested))])
                common.check_finite(value, epoch, step, steps, "training loss", common.lr_of(opt))
                loss_sum += value
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{common.lr_of(opt):.2g}")
                bar.update()
                if stopping > 0 and step + 1 < steps:
                    stop.requested = stop.requested or "SIGTERM"
                    bar.close()
                    checkpoint(epoch, step + 1)
                    raise common.RunInterrupted(
                        f"{stop.requested}: stopped at epoch {epoch + 1}, step {step + 1}; checkpoint saved to "
                        f"{ckpt_path}; continue with `scnas train ... --out {out} --resume`")
            bar.close()
            record: dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum / steps, "lr": common.lr_of(opt)}
            sched.step(record["train_loss"])
            low_lr = common.lr_of(opt) < cfg.min_lr
            last = epoch + 1 == cfg.epochs or low_lr
            if val_cases and ((epoch + 1) % cfg.val_every == 0 or last):
                cases = val_cases if last or cfg.val_cases is None else val_cases[:cfg.val_cases]
                val = validation_dice(net, data.pre, cases, patch, data.label_names, runtime, cfg.blend,
                                      cfg.mirror_validation)
                record.update(val_dice=val["foreground_mean"], val_mean_dice=val["mean_dice"])
                if val["foreground_mean"] > best["dice"]:
                    best = {"dice": val["foreground_mean"], "epoch": epoch}
                    if runtime.is_main:
                        save_checkpoint(best_path, {"kind": "weights", "model": net.state_dict(),
                                                    "epoch": epoch, "dice": val["foreground_mean"]})
            record["seconds"] = round(time.time() - started, 3)
            run.append_jsonl("metrics.jsonl", record)
            checkpoint(epoch + 1, 0)
            epochs_run += 1
            if low_lr:
                stopped_by = f"learning rate {common.lr_of(opt):.2g} < {cfg.min_lr:g}"
                break
            if runtime.mean_values([float(bool(stop.requested))])[0] > 0:  # every rank decides alike
                raise common.RunInterrupted(
                    f"{stop.requested or 'SIGTERM'}: stopped after epoch {epoch + 1}; checkpoint saved to {ckpt_path}; "
                    f"continue with `scnas train ... --out {out} --resume`")
            if stop_after_epochs is not None and epochs_run >= stop_after_epochs and epoch + 1 < cfg.epochs:
                return None
    if runtime.is_main:
        if not best_path.exists():  # no validation cases: the last weights are the ones to use
            save_checkpoint(best_path, {"kind": "weights", "model": net.state_dict(), "epoch": epoch,
                                        "dice": float("nan")})
        from scnas_dsl.train.plots import plot_train

        plot_train(run)
    return TrainResult(run=run.path, best_dice=float(best["dice"]), best_epoch=int(best["epoch"]),
                       epochs=epoch + 1, stopped_by=stopped_by)


def _write_run_files(run: RunFolder, cfg: TrainConfig, space: SearchSpace, genotype: Any,
                     data: common.DataContext, patch: tuple[int, ...], runtime: Runtime, out: Path) -> None:
    """Everything ``scnas predict`` needs besides the weights: the network's recipe and the preprocessing."""
    from scnas_dsl.graph.printer import print_document

    run.write_json("config.json", {**cfg.model_dump(mode="json"), "out": str(out), "patch": list(patch)})
    run.write_text("space.scn", print_document(Document(spaces=(space,))))
    run.write_text("genotype.scn", common.genotype_text(
        genotype, f"Retrained by `scnas train` from {cfg.genotype} on {Path(cfg.data).name}, fold {cfg.fold}."))
    run.write_json("network.json", {
        "genotype": genotype.name, "space": space.name, "in_channels": data.in_channels,
        "num_classes": data.num_classes, "stem_width": cfg.stem_width, "patch": list(patch),
        "labels": {str(k): v for k, v in data.pre.dataset.labels.items()}, "blend": cfg.blend,
    })
    run.write_json("environment.json", environment(str(runtime.device), cfg.seed, runtime.world_size))
    run.write_json("split.json", {"fold": cfg.fold, "train": data.fold.train, "val": data.fold.val})
    if run.writer:
        (run.path / "preprocessing").mkdir(exist_ok=True)
        shutil.copyfile(data.pre.root / "preprocessed.json", run.path / "preprocessing" / "preprocessed.json")
