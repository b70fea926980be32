"""The supernet: every candidate operation on every edge, architecture logits per structure key, and a
sampler that runs only the sampled operations.

One sample per structure key per step: with ``share by_type`` all cells of a type use the same sampled
structure in a step (the paper's shared cells), with ``by_level`` every cell instance draws its own. The
draws come from the supernet's own seeded CPU ``torch.Generator``, so every DDP rank that starts from the
same seed draws the same architecture at each step.

Modes: ``train()`` draws a sample per forward by the chosen strategy; ``eval()`` uses the argmax
architecture deterministically (each edge runs its most likely operation with weight one, a zero cuts it).
``forward(x, samples=...)`` runs any given architecture, e.g. ``genotype_samples(genotype)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from scnas_dsl.errors import CompileError
from scnas_dsl.model import Genotype, SearchSpace
from scnas_dsl.nn.cells import DOMINANT_THRESHOLD, Cell, MixedEdge, run_unet
from scnas_dsl.nn.derive import derive_genotype
from scnas_dsl.nn.network import UNetBase, build_blocks
from scnas_dsl.nn.plan import build_plan, zero_op_names
from scnas_dsl.nn.sampler import (
    SAMPLINGS,
    EdgeSample,
    Sampling,
    argmax_sample,
    draw,
    fair_permutations,
    sample_fair,
)
from scnas_dsl.nn.schedule import TemperatureSchedule
from scnas_dsl.ops.library import Library, default_library

Samples = dict[str, tuple[list[str], EdgeSample]]
"""structure key -> (operation names of its set, the sample)."""


class Supernet(UNetBase):
    """A search space as one network. ``forward: (B, in_channels, *S) -> (B, num_classes, *S)``."""

    def __init__(self, space: SearchSpace, *, in_channels: int, num_classes: int, stem_width: int | None = None,
                 sampling: Sampling = "pair", temperature: TemperatureSchedule | None = None, seed: int = 0,
                 library: Library | None = None) -> None:
        super().__init__()
        if sampling not in SAMPLINGS:
            raise CompileError(f"unknown sampling '{sampling}': use one of {', '.join(SAMPLINGS)}")
        library = library or default_library()
        self.space = space
        self.library = library
        self.sampling = sampling
        self.schedule = temperature or TemperatureSchedule()
        self.temperature: float = self.schedule.at(0.0)
        self.plan = build_plan(space, stem_width=stem_width, deep_supervision=False)  # the search: main head only
        self.in_channels, self.num_classes = in_channels, num_classes
        self.stem, self.head = build_blocks(self.plan, library, in_channels, num_classes)
        self.op_names: dict[str, list[str]] = {}
        self.edge_lists: dict[str, list[tuple[str, str]]] = {}
        self.zero_names: dict[str, set[str]] = {}
        cells = []
        for cell_plan in self.plan.cells:
            spec = cell_plan.spec
            names = space.opset(spec.ops).names()  # type: ignore[union-attr]
            self.op_names[cell_plan.key] = names
            self.edge_lists[cell_plan.key] = spec.edge_list()
            self.zero_names[cell_plan.key] = zero_op_names(space, spec)
            cells.append(Cell(cell_plan, space, library, self.plan.dims, {e: names for e in cell_plan.edges}))
        self.cells = nn.ModuleList(cells)
        init = torch.Generator().manual_seed(seed)
        # DARTS' initialisation: small random logits, so that no operation is favoured at the start
        self.arch = nn.ParameterDict({
            key: nn.Parameter(1e-3 * torch.randn(len(self.edge_lists[key]), len(names), generator=init))
            for key, names in self.op_names.items()
        })
        self.generator = torch.Generator().manual_seed(seed)
        self._counts = {key: torch.zeros(p.shape, dtype=torch.long) for key, p in self.arch.items()}
        #: fair sampling: each structure's current orders of its candidates and the step within the cycle
        self._fair: dict[str, torch.Tensor] = {}
        self._fair_step = 0
        self.last_samples: Samples | None = None
        #: pair sampling: a pair whose smaller renormalised weight is below this runs only its dominant
        #: operation, with weight one (0 switches it off; docs/compiler.md says what it does to gradients)
        self.dominant_threshold: float = DOMINANT_THRESHOLD

    # parameters -------------------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture logits alpha, one ``(E, O)`` tensor per structure key."""
        return list(self.arch.values())

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every weight theta (operations, projections, stem, head): everything but alpha."""
        arch = {id(p) for p in self.arch.values()}
        return [p for p in self.parameters() if id(p) not in arch]

    # temperature ------------------------------------------------------------------------------------
    def set_progress(self, fraction: float) -> None:
        """Set the temperature from the schedule after ``fraction`` (0..1) of the search."""
        self.temperature = self.schedule.at(fraction)

    # sampling ---------------------------------------------------------------------------------------
    def draw_samples(self, generator: torch.Generator | None = None, *, arch_grad: bool = True) -> Samples:
        """One sample per structure key by the supernet's strategy. Without ``generator``: from the
        supernet's own generator (advanced), counted in the sample counts. With one (e.g. to measure the
        supernet without disturbing the search's random stream): from it, not counted. ``arch_grad=False``:
        the weights are drawn from the detached logits (the same draws, no graph to alpha)."""
        out: Samples = {}
        if self.sampling == "fair" and generator is None:
            return self._draw_fair()
        for key, alpha in self.arch.items():
            logits = alpha if arch_grad else alpha.detach()
            sample = draw(self.sampling, logits, self.temperature, generator or self.generator)
            if generator is None:
                self._counts[key].scatter_add_(1, sample.indices, torch.ones_like(sample.indices))
            out[key] = (self.op_names[key], sample)
        return out

    def _draw_fair(self) -> Samples:
        """The next step of the fair cycle (new orders from the supernet's generator at each cycle's start)."""
        out: Samples = {}
        for key, alpha in self.arch.items():
            num_edges, num_ops = alpha.shape
            step = self._fair_step % num_ops
            if step == 0 or key not in self._fair:
                self._fair[key] = fair_permutations(num_edges, num_ops, self.generator)
            sample = sample_fair(self._fair[key][:, step])
            self._counts[key].scatter_add_(1, sample.indices, torch.ones_like(sample.indices))
            out[key] = (self.op_names[key], sample)
        self._fair_step += 1
        return out

    def every_operation_samples(self) -> list[Samples]:
        """Architectures that together run every candidate of every edge exactly once (one fair cycle from a
        generator of their own; the search's draws are not disturbed): warming up on these runs every
        convolution shape once (cuDNN's autotuning) and gives every weight its optimiser state, so that a
        measurement afterwards sees the steady state."""
        generator = torch.Generator().manual_seed(0)
        orders = {key: fair_permutations(alpha.shape[0], alpha.shape[1], generator) for key, alpha in self.arch.items()}
        steps = max(alpha.shape[1] for alpha in self.arch.values())
        return [{key: (self.op_names[key], sample_fair(order[:, step % order.shape[1]]))
                 for key, order in orders.items()} for step in range(steps)]

    def parameter_free(self) -> dict[str, set[str]]:
        """structure key -> the operations of its set that have no parameters where they keep the resolution
        (zero, identity, pooling; on a stride-2 edge an identity may carry a projection): the ones
        differentiable NAS is known to collapse to."""
        out: dict[str, set[str]] = {}
        for cell_plan, cell in zip(self.plan.cells, self.cells, strict=True):
            if cell_plan.key in out:
                continue
            free = set(self.zero_names[cell_plan.key])
            assert isinstance(cell, Cell)
            for edge in cell.edges.values():
                assert isinstance(edge, MixedEdge)
                free |= {name for name, op in edge.ops.items() if not any(True for _ in op.parameters())}
            out[cell_plan.key] = free
        return out

    def argmax_samples(self) -> Samples:
        """The most likely operation on every edge, with weight one."""
        return {key: (self.op_names[key], argmax_sample(alpha)) for key, alpha in self.arch.items()}

    def genotype_samples(self, genotype: Genotype) -> Samples:
        """The architecture of ``genotype`` as samples: the chosen operation with weight one on each chosen
        edge, nothing on the others. With these the supernet computes what ``build_network(space,
        genotype)`` computes."""
        out: Samples = {}
        for key, names in self.op_names.items():
            choice = genotype.cell(key)
            if choice is None:
                raise CompileError(f"genotype '{genotype.name}' has no cell '{key}'")
            chosen = choice.chosen()
            zero = next((n for n in names if n in self.zero_names[key]), None)
            rows = []
            for edge in self.edge_lists[key]:
                op = chosen.get(edge, zero)
                if op is None:
                    raise CompileError(
                        f"genotype '{genotype.name}', cell '{key}': edge {edge[0]}->{edge[1]} is left out, "
                        f"but the operation set has no zero to cut it with"
                    )
                rows.append([names.index(op)])
            out[key] = (names, EdgeSample(torch.tensor(rows, dtype=torch.long), None))
        return out

    def forward(self, x: torch.Tensor, samples: Samples | None = None, *, arch_grad: bool = True
                ) -> torch.Tensor:
        """``(B, in_channels, *S) -> (B, num_classes, *S)`` logits. Without ``samples``: a fresh draw in
        training mode, the argmax architecture in evaluation mode. ``arch_grad=False`` (the search's weight
        step): the draw's weights are detached from alpha, so autograd keeps nothing that only alpha's
        gradient needs (the same draws, the same weight gradients)."""
        self.check_input(x)
        # the dominant-operation rule applies to the search's own draws; given samples run exactly
        threshold = self.dominant_threshold if samples is None and self.training else 0.0
        if samples is None:
            samples = self.draw_samples(arch_grad=arch_grad) if self.training else self.argmax_samples()
        self.last_samples = samples
        return run_unet(self.stem, self.cells, self.head, self.plan, x, samples,
                        share_activations=self.share_activations, dominant_threshold=threshold,
                        checkpoint_cells=self.checkpoint_cells)[0]

    # reading the architecture -----------------------------------------------------------------------
    def _nest(self, values: dict[str, torch.Tensor]) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for key, table in values.items():
            names = self.op_names[key]
            out[key] = {
                f"{s}->{d}": {op: table[r, c].item() for c, op in enumerate(names)}
                for r, (s, d) in enumerate(self.edge_lists[key])
            }
        return out

    def arch_probabilities(self) -> dict[str, dict[str, dict[str, float]]]:
        """structure key -> ``"src->dst"`` -> operation -> softmax(alpha)."""
        # in the U-Net's order (nn.ParameterDict keeps its keys sorted)
        return self._nest({k: torch.softmax(self.arch[k].detach().cpu(), dim=-1) for k in self.op_names})

    def sample_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """How often each operation ran on each edge since the last reset (same nesting)."""
        return self._nest(self._counts)

    def reset_sample_counts(self) -> None:
        for counts in self._counts.values():
            counts.zero_()

    def derive(self, name: str = "derived") -> tuple[Genotype, list[str]]:
        """The genotype of the largest logit on each edge (zero cuts the edge, dead nodes pruned) and a
        readable report of what was cut and pruned."""
        return derive_genotype(self.space, {k: a.detach() for k, a in self.arch.items()}, name)

    # exact resume -----------------------------------------------------------------------------------
    def sampler_state_dict(self) -> dict[str, Any]:
        """Generator state, temperature and sample counts: with ``state_dict()`` this resumes exactly."""
        return {
            "generator": self.generator.get_state(),
            "temperature": self.temperature,
            "sampling": self.sampling,
            "counts": {k: v.clone() for k, v in self._counts.items()},
            "fair": {"step": self._fair_step, "orders": {k: v.clone() for k, v in self._fair.items()}},
        }

    def load_sampler_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.temperature = float(state["temperature"])
        for key, counts in state.get("counts", {}).items():
            if key in self._counts:
                self._counts[key].copy_(counts)
        fair = state.get("fair", {"step": 0, "orders": {}})
        self._fair_step = int(fair["step"])
        self._fair = {k: v.clone() for k, v in fair["orders"].items()}


def build_supernet(space: SearchSpace, *, in_channels: int, num_classes: int, stem_width: int | None = None,
                   sampling: Sampling = "pair", temperature: TemperatureSchedule | None = None, seed: int = 0,
                   library: Library | None = None) -> Supernet:
    """The supernet of ``space`` with ``sampling`` = ``pair`` (Algorithm 1), ``single`` (GDAS), ``full``
    (DARTS) or ``fair`` (FairNAS: the weights only, every candidate of an edge equally often). ``seed`` fixes the initial logits and every draw."""
    return Supernet(space, in_channels=in_channels, num_classes=num_classes, stem_width=stem_width,
                    sampling=sampling, temperature=temperature, seed=seed, library=library)
