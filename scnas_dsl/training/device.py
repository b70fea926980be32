"""Devices, mixed precision and ``torchrun``: one CPU, one GPU, or several processes.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment) the process group uses NCCL on
GPUs and gloo on the CPU; each rank takes GPU ``LOCAL_RANK``. Only rank 0 writes the run folder.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from scnas_dsl.data.loader import to_device
from scnas_dsl.errors import RunError


@dataclass
class Runtime:
    """Where and how a run computes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: autocast dtype on CUDA, None for full precision
    amp_dtype: torch.dtype | None = None
    owns_group: bool = False
    #: a gloo group with a long timeout on which the other ranks wait for their node's data preparation
    wait_group: Any = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    def autocast(self) -> Any:
        """The autocast context of a forward pass (a no-op without AMP)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only for fp16 (bf16 needs none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def average(self, tensors: list[torch.Tensor]) -> None:
        """Average tensors in place over the ranks (one flat all_reduce)."""
        if not self.distributed or not tensors:
            return
        flat = torch.cat([t.reshape(-1).float() for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n

    def mean_values(self, values: list[float]) -> list[float]:
        """The means of some numbers over the ranks (one all_reduce)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A batch onto the device: unchanged when it is there already (the run's loaders deliver their batches
        on the device); on CUDA through pinned memory, so that the copy runs asynchronously."""
        return to_device(tensor, self.device)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        """Wait for every rank (nothing to do alone)."""
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group if this runtime joined it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict[str, Any]) -> None:
    """Restore a gradient scaler from a checkpoint. A run saved without an enabled scaler (on the CPU, in
    float32 or bf16) holds an empty state; resumed where fp16 needs one (a V100, a T4), the scaler starts fresh
    (the loss scale is found again in a few steps) instead of failing with "The source state dict is empty"."""
    if not state:
        return
    if scaler.is_enabled():
        scaler.load_state_dict(state)


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation that did not fit: a device's ``torch.OutOfMemoryError``, or the CPU
    allocator's RuntimeError (``can't allocate memory``; torch raises no OutOfMemoryError there)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and ("can't allocate memory" in str(err) or "out of memory" in str(err))


def amp_dtype_for(capability: tuple[int, int] | None, amp: bool = True) -> torch.dtype | None:
    """The autocast dtype of a CUDA device of compute ``capability``: bf16 only where the GPU computes it
    natively (compute capability 8.0 and later: A100, H100, RTX 30xx and later), fp16 with a gradient scaler
    otherwise (V100, T4: ``torch.cuda.is_bf16_supported()`` also counts their emulated bf16, which is slow);
    None without ``amp`` or without a GPU."""
    if not amp or capability is None:
        return None
    return torch.bfloat16 if capability >= (8, 0) else torch.float16


def setup_runtime(device: str = "auto", amp: bool = True) -> Runtime:
    """Pick the device (``auto``: CUDA when present), join the ``torchrun`` process group when there is one,
    and choose mixed precision (:func:`amp_dtype_for`: bf16 where native, else fp16; none on the CPU or with
    ``amp=False``)."""
    if device not in ("auto", "cpu", "cuda"):
        raise RunError(f"unknown device '{device}': use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda: no CUDA device is available to torch here; use --device cpu "
                       "(or install a CUDA build of torch)")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    wait_group = None
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local_rank)
            # the rank's own GPU bound to the group: barriers and NCCL's set-up run there, not on GPU 0
            dist.init_process_group(backend=backend, device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group(backend=backend)
        owns = True
    if world_size > 1:
        # the other ranks wait here while rank 0 prepares the data (hours for a raw data set): on a group of its
        # own with a long timeout, so that the main group keeps NCCL's short one for real hangs
        wait_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(minutes=wait_minutes()))
    if use_cuda:
        dev = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.backends.cudnn.benchmark = True  # fixed patch sizes: autotuning pays off
        amp_dtype = amp_dtype_for(torch.cuda.get_device_capability(dev), amp)
        set_float32_precision(full=amp_dtype is None)
    else:
        dev, amp_dtype = torch.device("cpu"), None
    return Runtime(device=dev, rank=rank, world_size=world_size, local_rank=local_rank, amp_dtype=amp_dtype,
                   owns_group=owns, wait_group=wait_group)


#: how long the other processes of a ``torchrun`` job wait for their node's data preparation (by its local rank 0),
#: in minutes (the environment variable ``SCNAS_WAIT_MINUTES`` changes it)
WAIT_MINUTES = 24 * 60


def wait_minutes() -> float:
    """``SCNAS_WAIT_MINUTES`` or :data:`WAIT_MINUTES`."""
    text = os.environ.get("SCNAS_WAIT_MINUTES", "").strip()
    if not text:
        return WAIT_MINUTES
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise RunError(f"SCNAS_WAIT_MINUTES={text!r}: give the minutes the other processes wait for rank 0's data "
                       "preparation as a positive number (default 1440, a day)")
    return value


def set_float32_precision(full: bool) -> None:
    """``--no-amp`` means float32: on Ampere and later GPUs cuDNN's convolutions would otherwise run in TF32 (10
    mantissa bits; torch's default for convolutions). Under mixed precision the float32 parts may use TF32
    (convolutions and matrix products alike): faster, and within what 16-bit activations lose anyway."""
    torch.backends.cudnn.allow_tf32 = not full
    torch.backends.cuda.matmul.allow_tf32 = not full


def training_memory(report: Any, runtime: Runtime, sampling: str | None = None, checkpoint: bool = False) -> int:
    """The training memory of ``report`` (a ``scnas_dsl.nn.cost.CostReport``) for this runtime, in bytes.

    The step of the given ``sampling`` (a supernet's ``pair``/``single``/``full``), else the report's own
    figure; ``checkpoint``: with per-cell activation checkpointing. Under mixed precision the activations kept
    for backward are stored in 16 bits, so they count half; weights, gradients and Adam state stay in float32."""
    steps = getattr(report, "steps", {}) or {}
    # fair sampling runs one operation per edge, as single sampling
    step = steps.get("single" if sampling == "fair" else sampling) if sampling is not None else None
    if step is None and len(steps) == 1:
        step = next(iter(steps.values()))
    if step is None:
        return int(report.memory_bytes)
    kept = step.checkpointed_activation_bytes if checkpoint else step.activation_bytes
    activations = kept // 2 if runtime.amp_dtype is not None else kept
    return int(activations + step.weight_bytes + step.gradient_bytes + step.optimizer_bytes)


#: the share of the GPU's memory left out of the budget a run is checked against: what neither the estimate nor
#: ``step_extras`` counts (cuDNN's workspaces, which autotuning picks by what is free, and the caching
#: allocator's fragmentation). The budget starts from the memory free when the run starts (``mem_get_info``), so
#: the CUDA context and other processes on the card are already taken out.
GPU_MARGIN = 0.10


def step_extras(report: Any, runtime: Runtime, num_classes: int) -> int:
    """Bytes a training step holds besides the network's estimate (``training_memory``): the loss's softmax and
    one-hot target in float32 (``B x K x V`` each, at the report's per-process batch and patch) and, with several
    processes, the flat float32 copy of every gradient that one all-reduce averages (``Runtime.average``)."""
    voxels = 1
    for size in report.patch:
        voxels *= int(size)
    loss = 2 * 4 * int(report.batch_size) * max(num_classes, 1) * voxels
    steps = getattr(report, "steps", {}) or {}
    gradients = max((step.gradient_bytes for step in steps.values()), default=0)
    return loss + (gradients if runtime.distributed else 0)


def gpu_budget(runtime: Runtime) -> tuple[int, int]:
    """(bytes a run may plan to use, the card's total): the memory free now less ``GPU_MARGIN`` of the total."""
    free, total = torch.cuda.mem_get_info(runtime.device)
    return max(0, int(free - GPU_MARGIN * total)), int(total)


def settle_checkpointing(report: Any, runtime: Runtime, setting: bool | str, what: str,
                         sampling: str | None = None, num_classes: int = 2) -> bool:
    """Whether to checkpoint the cells' activations, and refuse what the GPU cannot hold. ``setting``: True or
    False as asked, or "auto": on (with a note from rank 0) only when the estimate of ``report`` (a
    ``scnas_dsl.nn.cost.CostReport``) with ``step_extras`` says the step fits the GPU's budget (``gpu_budget``)
    with per-cell checkpointing but not without. Off the GPU only an explicit True turns it on. A step that fits
    neither way is refused with the smaller (checkpointed) figure, where checkpointing is allowed."""
    checkpoint = setting is True
    if runtime.device.type != "cuda":
        return checkpoint
    extras = step_extras(report, runtime, num_classes)
    need = training_memory(report, runtime, sampling) + extras
    checkpointed = training_memory(report, runtime, sampling, checkpoint=True) + extras
    suffix = " with per-cell checkpointing" if checkpoint else ""
    if setting == "auto":
        budget, total = gpu_budget(runtime)
        checkpoint = need > budget  # when neither fits, the refusal below names the smaller need
        if checkpointed > budget:
            suffix = " even with per-cell checkpointing" if checkpoint else ""
        elif checkpoint:
            suffix = " with per-cell checkpointing"
            if runtime.is_main:
                print(f"note: {what} needs about {need / 2**30:.1f} GiB without checkpointing, "
                      f"{checkpointed / 2**30:.1f} GiB with it, of {budget / 2**30:.1f} GiB usable "
                      f"({total / 2**30:.1f} GiB on the card): per-cell activation checkpointing is on (each cell "
                      "is recomputed in its backward: slower; --no-checkpoint-cells switches it off)",
                      file=sys.stderr, flush=True)
    check_gpu_memory(runtime, checkpointed if checkpoint else need, what + suffix)
    return checkpoint


def check_gpu_memory(runtime: Runtime, estimate_bytes: int | None, what: str) -> None:
    """Refuse a configuration whose estimated training memory exceeds the GPU's budget, with the figures."""
    if runtime.device.type != "cuda" or estimate_bytes is None:
        return
    budget, total = gpu_budget(runtime)
    if estimate_bytes > budget:
        raise RunError(
            f"{what} needs about {estimate_bytes / 2**30:.1f} GiB of GPU memory (estimate) but "
            f"{torch.cuda.get_device_name(runtime.device)} has {budget / 2**30:.1f} GiB usable ({total / 2**30:.1f} "
            f"GiB in all, less what is in use and a {GPU_MARGIN:.0%} margin); lower --batch-size, --patch or "
            "--stem-width, or run on several GPUs with torchrun"
        )
