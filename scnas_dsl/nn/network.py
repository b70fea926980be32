"""The fixed network a genotype compiles to, and the input-size check shared with the supernet."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from scnas_dsl.errors import CompileError
from scnas_dsl.model import Genotype, SearchSpace
from scnas_dsl.nn.cells import Cell, run_unet
from scnas_dsl.nn.plan import UNetPlan, build_plan, size_problem
from scnas_dsl.ops.library import Library, default_library


def build_blocks(plan: UNetPlan, library: Library, in_channels: int, num_classes: int
                 ) -> tuple[nn.Module, nn.Module]:
    """The fixed stem (``in_channels -> stem_width``) and head (``last width -> num_classes``) blocks."""
    if in_channels < 1 or num_classes < 1:
        raise CompileError(
            f"in_channels={in_channels}, num_classes={num_classes}: both must be at least 1"
        )
    unet = plan.space.unet
    stem = library.build(unet.stem.call.kind, unet.stem.call.kwargs(), in_channels, plan.stem_width, 1,
                         plan.dims)
    head = library.build(unet.head.call.kind, unet.head.call.kwargs(), plan.out_width, num_classes, 1,
                         plan.dims)
    return stem, head


class UNetBase(nn.Module):
    """What the supernet and the fixed network share: stem, cells, head, the plan and the size check."""

    plan: UNetPlan
    in_channels: int
    num_classes: int
    stem: nn.Module
    head: nn.Module
    cells: nn.ModuleList
    #: compute each cell state's LeakyReLU once for all the operations that start with it (same outputs
    #: and gradients, less memory kept); off: every operation activates its own input (as before)
    share_activations: bool = True
    #: activation checkpointing per cell while autograd is on: keep only the cells' inputs and outputs and
    #: recompute a cell's activations in its backward (less memory, about one more forward pass of time)
    checkpoint_cells: bool = False

    def check_input(self, x: torch.Tensor) -> None:
        """Cheap shape check at the start of forward (Python ints only, no computation)."""
        if x.dim() != self.plan.dims + 2:
            raise CompileError(
                f"input of shape {tuple(x.shape)}: a {self.plan.dims}D network takes (B, C, "
                f"{', '.join('DHW'[3 - self.plan.dims:])})"
            )
        if x.shape[1] != self.in_channels:
            raise CompileError(
                f"input has {x.shape[1]} channels but the network was built for in_channels="
                f"{self.in_channels}: rebuild it with in_channels={x.shape[1]}"
            )
        problem = size_problem(tuple(x.shape[2:]), self.plan.levels, self.plan.dims)
        if problem:
            raise CompileError(problem)


class FixedNetwork(UNetBase):
    """A genotype compiled to a network that holds only the chosen operations.
    ``forward: (B, in_channels, *S) -> (B, num_classes, *S)``; with deep-supervision heads and
    ``deep_supervision = True`` (set by the trainer while it trains, as nnU-Net's switch of the same name) a
    list ``[logits, logits at level l1, ...]``, finest first."""

    def __init__(self, space: SearchSpace, genotype: Genotype, *, in_channels: int, num_classes: int,
                 stem_width: int | None = None, library: Library | None = None,
                 deep_supervision: bool | Sequence[int] | None = None) -> None:
        super().__init__()
        library = library or default_library()
        self.plan = build_plan(space, stem_width=stem_width, genotype=genotype, deep_supervision=deep_supervision)
        self.genotype = genotype
        self.library = library
        self.in_channels, self.num_classes = in_channels, num_classes
        self.stem, self.head = build_blocks(self.plan, library, in_channels, num_classes)
        cells = []
        for cell_plan in self.plan.cells:
            chosen = genotype.cell(cell_plan.key).chosen()  # type: ignore[union-attr]
            cells.append(Cell(cell_plan, space, library, self.plan.dims,
                              {e: [chosen[e]] for e in cell_plan.edges}))
        self.cells = nn.ModuleList(cells)
        call = space.unet.head.call
        self.ds_heads = nn.ModuleDict({
            str(h.level): library.build(call.kind, call.kwargs(), h.width, num_classes, 1, self.plan.dims)
            for h in self.plan.heads
        })
        #: return the deep-supervision outputs too (only where there are heads); off: prediction, export
        self.deep_supervision = False

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``(B, in_channels, *S) -> (B, num_classes, *S)`` logits (a list with the deep-supervision outputs
        when ``deep_supervision`` is on and the network has heads)."""
        self.check_input(x)
        heads = self.ds_heads if self.deep_supervision and len(self.ds_heads) else None
        outs = run_unet(self.stem, self.cells, self.head, self.plan, x, None, heads,
                        share_activations=self.share_activations, checkpoint_cells=self.checkpoint_cells)
        return outs if heads is not None else outs[0]


def build_network(space: SearchSpace, genotype: Genotype, *, in_channels: int, num_classes: int,
                  stem_width: int | None = None, library: Library | None = None,
                  deep_supervision: bool | Sequence[int] | None = None) -> FixedNetwork:
    """Compile ``genotype`` (of ``space``) into a fixed network with only the chosen operations. Dead
    nodes (no incoming edge left, or not reaching the cell output) are left out; ``network.plan.notes``
    lists them. ``in_channels`` and ``num_classes`` are free, so a genotype transfers to another task.
    ``deep_supervision``: heads on the spec's levels (None), none (False), the spec's or nnU-Net-like default
    levels (True), or these levels; ``network.plan.deep_supervision`` says which were built."""
    return FixedNetwork(space, genotype, in_channels=in_channels, num_classes=num_classes,
                        stem_width=stem_width, library=library, deep_supervision=deep_supervision)


def check_input_size(model_or_space: UNetBase | SearchSpace, spatial: Sequence[int]) -> None:
    """Raise :class:`CompileError` if a patch of size ``spatial`` (e.g. ``(128, 128, 128)``) cannot go
    through the network: wrong number of dimensions, or a size not divisible by ``2**levels``."""
    if isinstance(model_or_space, SearchSpace):
        plan = build_plan(model_or_space, stem_width=model_or_space.unet.stem.width or 1)
    else:
        plan = model_or_space.plan
    problem = size_problem(tuple(int(s) for s in spatial), plan.levels, plan.dims)
    if problem:
        raise CompileError(problem)
