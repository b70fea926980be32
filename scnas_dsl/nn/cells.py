"""Cells and edges as torch modules, shared by the supernet and the fixed network.

Module keys are stable names: ``cells.3.pre.in0``, ``cells.3.skip``, ``cells.3.edges.in0_n2.ops.dil2``.
A supernet edge holds every candidate operation; a fixed-network edge holds only the chosen one, under the
same key, so weights move between them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from scnas_dsl.errors import CompileError
from scnas_dsl.model import SearchSpace
from scnas_dsl.nn.plan import STEM, CellPlan, UNetPlan, zero_op_names
from scnas_dsl.nn.sampler import EdgeSample
from scnas_dsl.ops.library import LEAKY_SLOPE, AttentionGate, Library, Projection, Resample

EdgeChoice = Sequence[tuple[str, torch.Tensor | None]]
"""The operations to run on one edge and their weights (None: weight one, output used as is)."""

DOMINANT_THRESHOLD = 1e-3
"""Pair sampling: when the smaller of a pair's two renormalised weights is below this, only the dominant
operation runs, with weight one (the supernet's ``dominant_threshold``; docs/compiler.md)."""

Activated = Callable[[], torch.Tensor]
"""Gives the LeakyReLU of an edge's source state, computed once per state for every operation that asks."""


def activates_input(op: nn.Module) -> bool:
    """Whether ``op`` starts with ``leaky_relu(x, LEAKY_SLOPE)`` and takes ``op(h, activated=True)`` with
    ``h`` already activated (library convolutions and projections; operations without the attribute, e.g.
    plugins, are called as ``op(x)``)."""
    return bool(getattr(op, "activates_input", False))


def edge_name(src: str, dst: str) -> str:
    """Module key of the edge ``src -> dst``."""
    return f"{src}_{dst}"


class MixedEdge(nn.Module):
    """One edge ``src -> dst``: candidate operations under ``ops`` (all of them in a supernet, the chosen one
    in a fixed network). Only the operations named in a choice run."""

    def __init__(self, ops: dict[str, nn.Module]) -> None:
        super().__init__()
        self.ops = nn.ModuleDict(ops)

    def forward(self, x: torch.Tensor, choice: EdgeChoice | None, complementary: bool = False,
                activated: Activated | None = None) -> torch.Tensor | None:
        """``sum_o w_o * o(x)`` over the chosen operations; ``choice=None`` runs every held operation with
        weight one (a fixed network). Returns None when nothing runs (a zero). ``(B, C, *S) -> (B, C, *S')``.

        ``complementary``: the choice is a pair whose weights sum to one (``w2 = 1 - w1`` as functions of
        alpha), computed as ``b + w1 * (a - b)``: autograd then keeps one tensor (``a - b``) for the weight's
        gradient instead of ``a`` and ``b``, and the gradient with respect to alpha is the same.

        ``activated``: gives ``leaky_relu(x)`` shared with the cell's other edges from the same state; an
        operation that starts with it (:func:`activates_input`) then runs on it (``op(h, activated=True)``),
        so one copy is kept for backward instead of one per operation. Without it each operation activates
        its own input (the same values)."""
        if complementary and choice is not None and len(choice) == 2 and choice[0][1] is not None:
            (first, w1), (second, _) = choice
            assert w1 is not None
            a, b = self._run(first, x, activated), self._run(second, x, activated)
            return b + w1 * (a - b)
        out: torch.Tensor | None = None
        items = [(name, None) for name in self.ops] if choice is None else choice
        for name, weight in items:
            y = self._run(name, x, activated)
            if weight is not None:
                y = weight * y
            out = y if out is None else out + y
        return out

    def _run(self, name: str, x: torch.Tensor, activated: Activated | None) -> torch.Tensor:
        op = self.ops[name]
        if activated is not None and activates_input(op):
            return op(activated(), activated=True)  # type: ignore[no-any-return]
        return op(x)  # type: ignore[no-any-return]


class Cell(nn.Module):
    """A cell instance: input projections (``pre``), the decoder skip projection (``skip``, when widths
    differ), and its edges. Each intermediate node is the sum of its incoming edges; the output is the
    concatenation (or sum) of the output nodes, or one node."""

    def __init__(self, plan: CellPlan, space: SearchSpace, library: Library, dims: int,
                 candidates: dict[tuple[str, str], list[str]]) -> None:
        super().__init__()
        self.plan = plan
        self.zeros = zero_op_names(space, plan.spec)
        opset = space.opset(plan.spec.ops)
        if opset is None:
            raise CompileError(f"cell '{plan.spec.name}' uses the undefined operation set '{plan.spec.ops}'")
        self.pre = nn.ModuleDict({
            i.name: Resample(i.source_width, plan.width, i.factor, dims) for i in plan.used_inputs()
        })
        skip = plan.skip
        # the skip is summed into an input before its projection: only if that input is used at all
        self.skip = (Projection(skip.width, skip.target_width, 1, dims)
                     if skip is not None and skip.width != skip.target_width and skip.input_name in self.pre
                     else None)
        # ``skips attention``: the gate scales the skip before the sum (and its projection)
        gate = plan.gate
        self.gate = (AttentionGate(skip.width, gate.width, gate.factor, dims)
                     if gate is not None and skip is not None and skip.input_name in self.pre else None)
        edges = {}
        for src, dst in plan.edges:
            ops = {}
            for name in candidates[(src, dst)]:
                if name in self.zeros:
                    continue  # a zero is never computed: it has no module at all
                call = opset.get(name).call  # type: ignore[union-attr]
                ops[name] = library.build(call.kind, call.kwargs(), plan.width, plan.width, plan.stride(src),
                                          dims)
            edges[edge_name(src, dst)] = MixedEdge(ops)
        self.edges = nn.ModuleDict(edges)
        # rows of the structure's logits, in the spec's full edge order
        self.rows = {e: r for r, e in enumerate(plan.spec.edge_list())}

    def forward(self, inputs: Sequence[torch.Tensor], skip: torch.Tensor | None,
                sample: tuple[list[str], EdgeSample] | None = None,
                gating: torch.Tensor | None = None, share_activations: bool = True,
                dominant_threshold: float = 0.0) -> torch.Tensor:
        """``inputs``: the cell's input tensors ``(B, C_j, *S_j)`` in order; ``skip``: the decoder skip
        tensor or None; ``sample``: (operation names, sample of the structure) or None for a fixed network;
        ``gating``: the attention gate's gating signal (``skips attention``). Returns ``(B, out_width, *S_out)``.

        ``share_activations``: the LeakyReLU of each state is computed once for all the operations on its
        outgoing edges that start with it (same values as each computing its own, less memory kept).
        ``dominant_threshold``: a pair whose smaller renormalised weight is below it runs only its dominant
        operation, with weight one (0: both always run)."""
        plan = self.plan
        states: dict[str, torch.Tensor] = {}
        for j, x in enumerate(inputs):
            name = f"in{j}"
            if name not in self.pre:
                continue
            if plan.skip is not None and plan.skip.input_name == name and skip is not None:
                if self.gate is not None:
                    assert gating is not None  # run_unet passes it whenever the plan has a gate
                    skip = self.gate(skip, gating)
                x = x + (skip if self.skip is None else self.skip(skip))
            states[name] = self.pre[name](x)
        choices = None if sample is None else _choices(sample, dominant_threshold)
        complementary = sample is not None and sample[1].complementary
        shared = _SharedActivations(states, plan.edges) if share_activations else None
        # nodes that received nothing (every operation into them a zero): their outgoing edges are cut too,
        # as in the fixed network, which prunes such a node (an operation on zeros is not zero: a convolution
        # gives its norm's shift)
        dead: set[str] = set()
        for node in plan.nodes:
            total: torch.Tensor | None = None
            for src, dst in plan.edges:
                if dst != node or src in dead:
                    continue
                choice = None
                if choices is not None:
                    choice = [(op, w) for op, w in choices[self.rows[(src, dst)]] if op not in self.zeros]
                y = self.edges[edge_name(src, dst)](states[src], choice, complementary,
                                                    None if shared is None else shared.of(src))
                if shared is not None:
                    shared.done(src)
                if y is not None:
                    total = y if total is None else total + y
            if total is None:
                dead.add(node)
                total = self._zeros_like_node(states)
            states[node] = total
        outs = [states[n] for n in plan.output_nodes]
        kind = plan.spec.output.kind
        if kind == "concat":
            return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        out = outs[0]
        for y in outs[1:]:
            out = out + y
        return out

    def _zeros_like_node(self, states: dict[str, torch.Tensor]) -> torch.Tensor:
        # every sampled operation into this node was a zero: the node is zeros (no compute spent)
        ref = next(iter(states.values()))
        stride = 2 if self.plan.spec.role == "reduction" else 1
        spatial = [-(-s // stride) for s in ref.shape[2:]]
        return ref.new_zeros((ref.shape[0], self.plan.width, *spatial))


class _SharedActivations:
    """``leaky_relu`` of each source state, computed when an operation first asks for it and dropped after
    the state's last outgoing edge ran (so that, without autograd, it is not kept longer than before)."""

    def __init__(self, states: dict[str, torch.Tensor], edges: Sequence[tuple[str, str]]) -> None:
        self.states = states
        self.cache: dict[str, torch.Tensor] = {}
        self.left: dict[str, int] = {}
        for src, _ in edges:
            self.left[src] = self.left.get(src, 0) + 1

    def of(self, src: str) -> Activated:
        def get() -> torch.Tensor:
            if src not in self.cache:
                self.cache[src] = F.leaky_relu(self.states[src], LEAKY_SLOPE)
            return self.cache[src]
        return get

    def done(self, src: str) -> None:
        self.left[src] -= 1
        if not self.left[src]:
            self.cache.pop(src, None)


def _choices(sample: tuple[list[str], EdgeSample], dominant_threshold: float = 0.0
             ) -> list[list[tuple[str, torch.Tensor | None]]]:
    """Per edge row: the operations to run and their weights. A renormalised pair whose smaller weight is
    below ``dominant_threshold`` gives its dominant operation alone, with weight one (its output as is)."""
    names, edge_sample = sample
    rows = edge_sample.indices.tolist()
    weights = edge_sample.weights
    values = edge_sample.values if edge_sample.complementary and dominant_threshold > 0 else None
    out: list[list[tuple[str, torch.Tensor | None]]] = []
    for r, row in enumerate(rows):
        if values is not None and len(row) == 2 and float(values[r].min()) < dominant_threshold:
            out.append([(names[row[int(values[r].argmax())]], None)])
            continue
        out.append([(names[i], None if weights is None else weights[r, c]) for c, i in enumerate(row)])
    return out


def run_unet(stem: nn.Module, cells: nn.ModuleList, head: nn.Module, plan: UNetPlan, x: torch.Tensor,
             samples: dict[str, tuple[list[str], EdgeSample]] | None,
             heads: nn.ModuleDict | None = None, *, share_activations: bool = True,
             dominant_threshold: float = 0.0, checkpoint_cells: bool = False) -> list[torch.Tensor]:
    """Stem, cells in order (each reading the outputs of the cells before it), head: ``[logits]``; with
    ``heads`` (the deep-supervision heads by level, as strings) ``[logits, logits at plan.heads[0].level,
    ...]``, finest first, as nnU-Net's deep supervision.

    ``checkpoint_cells`` (with autograd on): each cell's forward runs under activation checkpointing, so
    only the cells' inputs and outputs are kept and a cell's activations are recomputed in its backward.
    The samples are drawn before, and the operations hold no random state (no dropout; instance norms keep
    no running statistics), so the recomputation is exact. ``share_activations`` and
    ``dominant_threshold``: see :meth:`Cell.forward`."""
    last_use = plan.last_use(heads=heads is not None)
    outs: dict[int, torch.Tensor] = {STEM: stem(x)}
    for cell_plan, cell in zip(plan.cells, cells, strict=True):
        inputs = [outs[i.source] for i in cell_plan.inputs]
        skip = outs[cell_plan.skip.source] if cell_plan.skip is not None else None
        gating = outs[cell_plan.gate.source] if cell_plan.gate is not None else None
        sample = None if samples is None else samples[cell_plan.key]
        if checkpoint_cells and torch.is_grad_enabled():
            outs[cell_plan.index] = checkpoint(cell, inputs, skip, sample, gating, share_activations,
                                               dominant_threshold, use_reentrant=False)
        else:
            outs[cell_plan.index] = cell(inputs, skip, sample, gating, share_activations, dominant_threshold)
        # drop outputs no later cell reads: under no_grad (inference) nothing else keeps them alive
        for source in [s for s in outs if last_use.get(s, -2) <= cell_plan.index and s != plan.out_source]:
            del outs[source]
    logits = head(outs[plan.out_source])
    if heads is None:
        return [logits]
    return [logits, *(heads[str(h.level)](outs[h.source]) for h in plan.heads)]
