"""Size, cost and training-memory estimates, computed on the meta device (no memory, no compute).

Conventions:

* FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products, with
  a multiply-add counted as two FLOPs; ``macs = flops / 2``. Element-wise work (norms, activations,
  pooling, interpolation, the sums of a cell) is not counted, as in most papers' FLOP figures.
* FLOPs and MACs are for one forward pass of one sample at the patch size, as the network trains: with its
  deep-supervision heads and attention gates (the heads are 1x1 convolutions: a fraction of a percent);
  memory is for a training step of ``batch_size`` samples.
* Training memory = activations kept for backward (the unique tensors autograd saves, found with
  ``torch.autograd.graph.saved_tensors_hooks``, parameters excluded) + weights + gradients + Adam state (two
  tensors per weight). Float32 everywhere. For a supernet the weights, gradients and Adam state are those of
  every operation (after a few steps every operation has been sampled and owns Adam state).
* For a supernet, the ``pair``, ``single`` and ``full`` rows are expected costs of one step: ``full`` is
  exact; ``pair`` and ``single`` average ``draws`` architectures sampled from the supernet's logits at its
  temperature (from a separate generator: the supernet's own draws are not disturbed).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from scnas_dsl.errors import CompileError
from scnas_dsl.model import Genotype, SearchSpace
from scnas_dsl.nn.network import FixedNetwork, UNetBase, build_network, check_input_size
from scnas_dsl.nn.supernet import Supernet, build_supernet
from scnas_dsl.ops.library import Library

FLOAT_BYTES = 4


@dataclass
class CellCost:
    """One cell instance: parameters and one forward pass of one sample."""

    index: int
    instance: str
    params: int
    macs: int
    flops: int


@dataclass
class StepCost:
    """One training step: forward cost per sample and memory for the batch, in bytes."""

    macs: int
    flops: int
    activation_bytes: int
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    #: activations kept with per-cell checkpointing (``checkpoint_cells``): what is saved outside the cells,
    #: the cells' inputs and outputs, and the activations of the largest cell (recomputed in its backward)
    checkpointed_activation_bytes: int = 0

    @property
    def memory_bytes(self) -> int:
        return self.activation_bytes + self.weight_bytes + self.gradient_bytes + self.optimizer_bytes

    @property
    def checkpointed_memory_bytes(self) -> int:
        """``memory_bytes`` with per-cell activation checkpointing."""
        return self.memory_bytes - self.activation_bytes + self.checkpointed_activation_bytes


@dataclass
class CostReport:
    """What ``scnas compile`` prints. For a supernet the top-level ``macs``/``flops``/memory are those of
    the expected ``pair`` step; ``steps`` has ``pair``, ``single`` and ``full``."""

    kind: str  # "network" or "supernet"
    patch: tuple[int, ...]
    batch_size: int
    params: int
    macs: int
    flops: int
    memory_bytes: int
    cells: list[CellCost] = field(default_factory=list)
    steps: dict[str, StepCost] = field(default_factory=dict)
    arch_logits: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["patch"] = list(self.patch)
        for name, step in self.steps.items():
            out["steps"][name]["memory_bytes"] = step.memory_bytes
            out["steps"][name]["checkpointed_memory_bytes"] = step.checkpointed_memory_bytes
        return out


@dataclass
class _Measured:
    flops: int
    by_module: dict[str, int]
    activation: int  # bytes kept for backward, with the logits and their gradient
    checkpointed: int  # the same with per-cell checkpointing


class SavedForBackward:
    """The unique storages autograd saves for backward during a forward (parameters excluded): the activations a
    training step keeps. ``with saved.recording(): module(x)`` records them (autograd on, whatever the caller's
    mode: under no_grad nothing would be saved); ``owner`` tags what is recorded from now on (the cell running)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.params = {p.untyped_storage()._cdata for p in module.parameters()}
        self.saved: dict[int, tuple[int, Any]] = {}  # storage -> (bytes, the owner when it was first saved)
        self.keep: list[torch.Tensor] = []  # keeps the storages alive, so that an id cannot be reused
        self.owner: Any = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in self.params and storage._cdata not in self.saved:
            self.saved[storage._cdata] = (storage.nbytes(), self.owner)
            self.keep.append(t)
        return t

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield

    @property
    def bytes(self) -> int:
        return sum(n for n, _ in self.saved.values())


def _measure(model: UNetBase, x: torch.Tensor, count_flops: bool = True) -> _Measured:
    """FLOPs (total and per module name) and the bytes saved for backward, without and with per-cell
    checkpointing, of one forward on the meta device. Without ``count_flops`` only the saved bytes are
    measured (much faster: no module tracking)."""
    recorder = SavedForBackward(model)
    saved = recorder.saved  # storage -> (bytes, the cell saving it first or None)
    boundary: dict[int, int] = {}  # storages of the cells' inputs and outputs (kept with checkpointing)
    keep = recorder.keep

    def enter(index: int) -> Any:
        def hook(_module: Any, inputs: Any) -> None:
            recorder.owner = index
            for t in _tensors(inputs):
                boundary[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
                keep.append(t)
        return hook

    def leave(_module: Any, _inputs: Any, output: Any) -> None:
        recorder.owner = None
        for t in _tensors(output):
            boundary[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
            keep.append(t)

    handles = [h for i, cell in enumerate(model.cells)
               for h in (cell.register_forward_pre_hook(enter(i)), cell.register_forward_hook(leave))]
    counter: Any = contextlib.nullcontext()
    if count_flops:  # depth=None: FLOPs of every module, not only the top few levels
        counter = FlopCounterMode(display=False, depth=None)  # type: ignore[arg-type]
    try:
        with counter, recorder.recording():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    # the logits (of every deep-supervision head too) and their gradients live through the loss computation
    outputs = out if isinstance(out, list) else [out]
    logits = sum(2 * y.numel() * y.element_size() for y in outputs)
    activation = recorder.bytes + logits
    # checkpointed: what is saved outside the cells, the cells' inputs and outputs, and one cell's own
    # activations at a time (its recomputation in the backward)
    outside = {k: n for k, (n, cell) in saved.items() if cell is None} | boundary
    per_cell: dict[int, int] = {}
    for k, (n, cell) in saved.items():
        if cell is not None and k not in outside:
            per_cell[cell] = per_cell.get(cell, 0) + n
    checkpointed = sum(outside.values()) + max(per_cell.values(), default=0) + logits
    if not isinstance(counter, FlopCounterMode):
        return _Measured(0, {}, activation, checkpointed)
    root = type(model).__name__
    per_module = {k[len(root) + 1:]: v for k, v in counter.get_flop_counts().items() if k.startswith(root + ".")}
    totals = {k: sum(v.values()) for k, v in per_module.items()}
    return _Measured(counter.get_total_flops(), totals, activation, checkpointed)


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a cell's arguments or output (lists and tuples one level deep)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    out: list[torch.Tensor] = []
    for item in items:
        if isinstance(item, torch.Tensor):
            out.append(item)
        elif isinstance(item, (list, tuple)):
            out += [t for t in item if isinstance(t, torch.Tensor)]
    return out


def _sampled_flops(net: Supernet, by_module: dict[str, int], total_full: int) -> int:
    """FLOPs of the architecture in ``net.last_samples``, from the per-operation FLOPs of a full pass."""
    op_flops = {k: v for k, v in by_module.items() if ".ops." in k and k.count(".") == 5}
    flops = total_full - sum(op_flops.values())
    assert net.last_samples is not None
    for cp in net.plan.cells:
        names, sample = net.last_samples[cp.key]
        for (src, dst), row in zip(cp.spec.edge_list(), sample.indices.tolist(), strict=True):
            for i in row:
                flops += op_flops.get(f"cells.{cp.index}.edges.{src}_{dst}.ops.{names[i]}", 0)
    return flops


def _cells(model: UNetBase, flops_by_module: dict[str, int], batch: int) -> list[CellCost]:
    out = []
    for cp, cell in zip(model.plan.cells, model.cells, strict=True):
        flops = flops_by_module.get(f"cells.{cp.index}", 0) // batch
        params = sum(p.numel() for p in cell.parameters())
        out.append(CellCost(cp.index, cp.instance, params, flops // 2, flops))
    return out


def _step(flops: int, activation: int, weights: int, batch: int, checkpointed: int) -> StepCost:
    per_sample = flops // batch
    return StepCost(per_sample // 2, per_sample, activation, weights * FLOAT_BYTES, weights * FLOAT_BYTES,
                    2 * weights * FLOAT_BYTES, checkpointed)


def estimate(target: SearchSpace | Supernet | FixedNetwork, *, patch: Sequence[int], batch_size: int = 1,
             genotype: Genotype | None = None, in_channels: int | None = None, num_classes: int | None = None,
             stem_width: int | None = None, library: Library | None = None, draws: int = 4,
             seed: int = 0, deep_supervision: bool | Sequence[int] | None = None) -> CostReport:
    """Parameters, MACs, FLOPs (per cell and in total) and training memory of a fixed network (a genotype,
    or a ``FixedNetwork``) or of a supernet (a space without genotype, or a ``Supernet``: then the expected
    ``pair``/``single``/``full`` steps). ``patch`` is the spatial size, e.g. ``(128, 128, 128)``.
    ``deep_supervision``: the heads of a genotype's network, as ``build_network`` takes it (a
    ``FixedNetwork`` keeps its own).

    Nothing is allocated: the network is rebuilt on the meta device."""
    if batch_size < 1:
        raise CompileError(f"batch size {batch_size}: must be at least 1")
    supernet_state: dict[str, torch.Tensor] | None = None
    temperature: float | None = None
    threshold: float | None = None
    if isinstance(target, (Supernet, FixedNetwork)):
        space = target.plan.space
        in_channels = in_channels or target.in_channels
        num_classes = num_classes or target.num_classes
        stem_width = stem_width or target.plan.stem_width
        library = library or target.library
        if isinstance(target, FixedNetwork):
            genotype = target.genotype
            deep_supervision = target.plan.deep_supervision
        else:
            supernet_state = {k: a.detach().cpu() for k, a in target.arch.items()}
            temperature = target.temperature
            threshold = target.dominant_threshold
    else:
        space = target
    if in_channels is None or num_classes is None:
        raise CompileError("estimate needs in_channels and num_classes for a space or genotype")
    shape = (batch_size, in_channels, *(int(s) for s in patch))
    check_input_size(space, patch)  # before any tensor of that shape is made (a negative size is a message)

    with torch.device("meta"):
        if genotype is not None:
            fixed = build_network(space, genotype, in_channels=in_channels, num_classes=num_classes,
                                  stem_width=stem_width, library=library, deep_supervision=deep_supervision)
            fixed.deep_supervision = True  # a training step: the deep-supervision heads run too
            net: UNetBase = fixed
        else:
            net = build_supernet(space, in_channels=in_channels, num_classes=num_classes, stem_width=stem_width,
                                 sampling="full", seed=seed, library=library)
        x = torch.empty(shape)
    check_input_size(net, patch)
    net.train()

    if genotype is not None:
        params = sum(p.numel() for p in net.parameters())
        m = _measure(net, x)
        step = _step(m.flops, m.activation, params, batch_size, m.checkpointed)
        return CostReport("network", tuple(patch), batch_size, params, step.macs, step.flops, step.memory_bytes,
                          _cells(net, m.by_module, batch_size), {"network": step})

    assert isinstance(net, Supernet)
    # the sampler needs real logits (it reads them to draw); they are tiny, so they live on the CPU
    state = supernet_state or {k: torch.zeros(a.shape) for k, a in net.arch.items()}
    net.arch = torch.nn.ParameterDict({k: torch.nn.Parameter(v.clone()) for k, v in state.items()})
    if temperature is not None:
        net.temperature = temperature
    if threshold is not None:
        net.dominant_threshold = threshold
    weights = sum(p.numel() for p in net.weight_parameters())
    steps: dict[str, StepCost] = {}
    full = _measure(net, x)
    steps["full"] = _step(full.flops, full.activation, weights, batch_size, full.checkpointed)
    cells = _cells(net, full.by_module, batch_size)
    for mode in ("pair", "single"):
        net.sampling = mode
        net.generator.manual_seed(seed)
        total_flops, total_act, total_ckpt = 0, 0, 0
        for _ in range(draws):
            m = _measure(net, x, count_flops=False)
            total_flops += _sampled_flops(net, full.by_module, full.flops)
            total_act, total_ckpt = total_act + m.activation, total_ckpt + m.checkpointed
        steps[mode] = _step(total_flops // draws, total_act // draws, weights, batch_size, total_ckpt // draws)
    pair = steps["pair"]
    arch = sum(p.numel() for p in net.arch_parameters())
    return CostReport("supernet", tuple(patch), batch_size, weights, pair.macs, pair.flops, pair.memory_bytes,
                      cells, steps, arch)


#: Patch at which :func:`memory_model` measures a network once; other patches and batches scale from it.
REFERENCE_PATCH = (32, 32, 32)


def memory_model(space: SearchSpace, genotype: Genotype | None, in_channels: int,
                 num_classes: int) -> Callable[[tuple[int, ...], int], float]:
    """The training memory of a genotype's fixed network (or, without one, of the space's supernet under pair
    sampling) as a ``(patch, batch) -> bytes`` callback for ``scnas data plan``.

    One :func:`estimate` on the meta device at :data:`REFERENCE_PATCH`, batch 1 (a build takes seconds, the plan
    asks dozens of times): weights, gradients and Adam state stay fixed, activations scale with
    ``batch * voxels``.
    """
    report = estimate(space, patch=REFERENCE_PATCH, batch_size=1, genotype=genotype, in_channels=in_channels,
                      num_classes=num_classes)
    step = report.steps["network" if genotype is not None else "pair"]
    fixed = step.weight_bytes + step.gradient_bytes + step.optimizer_bytes
    per_voxel = step.activation_bytes / float(math.prod(REFERENCE_PATCH))

    def estimator(patch: tuple[int, ...], batch: int) -> float:
        return fixed + batch * float(math.prod(patch)) * per_voxel

    return estimator


def format_bytes(n: int) -> str:
    """``1536 -> '1.5 KiB'``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} GiB"
