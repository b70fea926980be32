"""Search under a budget: a limit on FLOPs, parameters or training memory, the architecture's expected cost
under the logits (differentiable in alpha), the penalty the search adds to its architecture loss, and fitting a
chosen genotype into the limit.

Every cost is the one ``scnas compile`` reports (:func:`scnas_dsl.nn.cost.estimate`): FLOPs of one forward pass
of one sample at the patch, parameters, and the memory of a training step of ``batch_size`` samples, of the
genotype's fixed network at the budget's stem width, with the spec's deep-supervision heads.

**Expected cost.** Per edge, the probabilities of its candidate operations times their exact cost at that
edge's shape, summed over the network, taken around the current most likely genotype ``g*`` (the largest logit
on every edge, derived as ``scnas search`` derives it)::

    E(alpha) = C(g*) + sum_edges sum_ops (softmax(alpha)[e, o] - [o chosen in g*]) * c[e, o]

``C(g*)`` is the exact cost of ``g*``; ``c[e, o]`` is the cost of operation ``o`` alone at edge ``e`` of every
cell instance of the edge's structure, at the widths, strides and sizes of ``g*``'s network (a zero costs
nothing; an edge from or into a node that ``g*`` prunes costs nothing: changing it alone changes nothing). So
``E`` equals the exact cost when alpha is one-hot (its ``g*`` is that genotype and the sum is zero), and its
gradient is the cost of each operation where it would run. What the linear term leaves out (a node pruned or
revived changes the widths of a ``node_width split`` cell, the projections a used input needs) is in ``C(g*)``
as soon as the most likely genotype changes. Memory per operation is its weights with their gradients and Adam
state plus the activations it keeps for backward at the batch (activations shared between operations are
counted for each: the linear term's one approximation; ``C(g*)`` counts them once).

**Penalty.** ``weight * sum_limits max(0, E / limit - 1)``: zero inside the budget, the relative overshoot
outside it (docs/training.md: the weight and its schedule).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from scnas_dsl.errors import CompileError
from scnas_dsl.model import Genotype, SearchSpace
from scnas_dsl.nn.cost import FLOAT_BYTES, SavedForBackward, estimate
from scnas_dsl.nn.derive import derive_genotype
from scnas_dsl.nn.plan import build_plan, zero_op_names
from scnas_dsl.ops.library import Library, default_library
from scnas_dsl.stopping import check_stop

#: what a budget can limit, in the order reports show them
METRICS: tuple[str, ...] = ("flops", "params", "memory")

_SCALE = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_BYTES = {"B": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
          "KIB": 2.0**10, "MIB": 2.0**20, "GIB": 2.0**30, "TIB": 2.0**40}
_QUANTITY = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")

_EXAMPLE = {"flops": "flops=40G", "params": "params=5M", "memory": "memory=12GB"}

#: Adam keeps two tensors per weight, and each weight has a gradient: 4 tensors of its size in a training step
_BYTES_PER_WEIGHT = 4 * FLOAT_BYTES


def parse_quantity(metric: str, text: str | float | int) -> float:
    """``"40G"`` -> 4e10 FLOPs, ``"5M"`` -> 5e6 parameters, ``"12GB"`` -> 1.2e10 bytes (``"12GiB"``: 12 * 2**30).
    A plain number is taken as it is. ValueError with what to write otherwise."""
    units = ("B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (of 1024)" if metric == "memory"
             else "K, M, G or T (powers of 1000)")
    if isinstance(text, bool):
        raise ValueError(f"{metric}: give a number with a unit, e.g. {_EXAMPLE[metric]}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _QUANTITY.match(str(text))
        if match is None:
            raise ValueError(f"{metric}={text}: not a number with a unit; write e.g. {_EXAMPLE[metric]} (units: "
                             f"{units})")
        number, unit = float(match.group(1)), match.group(2).upper()
        table = _BYTES if metric == "memory" else _SCALE
        if metric == "flops" and unit.endswith(("FLOPS", "FLOP")):
            unit = unit[:-5] if unit.endswith("FLOPS") else unit[:-4]
        if metric == "memory" and unit == "":
            unit = "B"
        if unit not in table:
            raise ValueError(f"{metric}={text}: unknown unit '{match.group(2)}'; use {units}")
        value = number * table[unit]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{metric}={text}: a budget must be a positive, finite number, e.g. {_EXAMPLE[metric]}")
    return value


def parse_budget(text: str | Sequence[str]) -> dict[str, str]:
    """``"flops=40G,params=5M"`` (or several such strings, as a repeated option gives them) -> ``{"flops": "40G",
    "params": "5M"}``; the keys are checked by the settings' model. ValueError on a piece without ``=``."""
    items = [text] if isinstance(text, str) else list(text)
    out: dict[str, str] = {}
    for item in items:
        for piece in (p.strip() for p in item.split(",")):
            if not piece:
                continue
            key, sep, value = piece.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise ValueError(f"'{piece}': write KEY=VALUE, e.g. flops=40G, params=5M or memory=12GB")
            key = key.strip().lower()
            if key in out:
                raise ValueError(f"'{key}' is given twice")
            out[key] = value.strip()
    if not out:
        raise ValueError("an empty budget: write e.g. --budget flops=40G")
    return out


def format_quantity(metric: str, value: float) -> str:
    """``4e10`` FLOPs -> ``'40 GFLOPs'``, ``5e6`` parameters -> ``'5 M params'``, ``1.2e10`` bytes -> ``'12 GB'``."""
    if metric == "memory":  # powers of 1000, as a budget is written (12GB); docs/training.md
        return si(value, "B")
    if metric == "flops":
        return si(value, "FLOPs")
    unit = next((u for u in ("T", "G", "M", "K") if abs(value) >= _SCALE[u]), "")
    return f"{value / _SCALE[unit]:.3g}{(' ' + unit) if unit else ''} params"


def si(value: float, unit: str) -> str:
    """``value`` with a power-of-1000 prefix and three significant digits: ``si(2.0166e7, 'FLOPs')`` is
    ``'20.2 MFLOPs'`` (what the budget and ``scnas compile`` print)."""
    prefix = next((u for u in ("T", "G", "M", "K") if abs(value) >= _SCALE[u]), "")
    return f"{value / _SCALE[prefix]:.3g} {prefix}{unit}"


Costs = dict[str, float]
"""metric -> value (FLOPs, parameters, bytes)."""


@dataclass(frozen=True)
class Fitted:
    """A genotype fitted into a budget: the genotype, its exact costs, whether it is within every limit, and
    the operations given up for it (one line each)."""

    genotype: Genotype
    costs: Costs
    within: bool
    gave_up: list[str]


def _genotype_key(genotype: Genotype) -> tuple[Any, ...]:
    return tuple((c.cell, tuple(sorted(c.chosen().items()))) for c in genotype.cells)


class CostModel:
    """Exact costs of a space's genotypes and the expected cost of the architecture under its logits.

    ``patch``: the spatial size; ``batch_size``: the training step's batch (memory); ``stem_width``: the width the
    costs are measured at (None: the space's). Exact costs and the operations' costs are cached."""

    def __init__(self, space: SearchSpace, *, patch: Sequence[int], batch_size: int, in_channels: int,
                 num_classes: int, stem_width: int | None = None, library: Library | None = None) -> None:
        self.space = space
        self.patch = tuple(int(p) for p in patch)
        self.batch_size = batch_size
        self.in_channels, self.num_classes = in_channels, num_classes
        self.stem_width = stem_width
        self.library = library or default_library()
        self._exact: dict[tuple[Any, ...], Costs] = {}
        self._ops: dict[tuple[Any, ...], Costs] = {}
        self._tables: dict[tuple[Any, ...], dict[str, dict[str, torch.Tensor]]] = {}
        self.keys = space.structure_keys()
        specs = dict(space.instances())
        self.specs = {k: (specs[k] if k in specs else space.cell(k)) for k in self.keys}
        self.op_names = {k: space.opset(s.ops).names() for k, s in self.specs.items()}  # type: ignore[union-attr]
        self.edges = {k: s.edge_list() for k, s in self.specs.items()}  # type: ignore[union-attr]
        self.zeros = {k: zero_op_names(space, s) for k, s in self.specs.items()}  # type: ignore[arg-type]

    # exact ------------------------------------------------------------------------------------------
    def exact(self, genotype: Genotype) -> Costs:
        """FLOPs, parameters and training memory of ``genotype``'s network, as ``scnas compile`` counts them."""
        key = _genotype_key(genotype)
        if key not in self._exact:
            report = estimate(self.space, patch=self.patch, batch_size=self.batch_size, genotype=genotype,
                              in_channels=self.in_channels, num_classes=self.num_classes,
                              stem_width=self.stem_width, library=self.library)
            self._exact[key] = {"flops": float(report.flops), "params": float(report.params),
                                "memory": float(report.memory_bytes)}
        return self._exact[key]

    # the operations' costs at a genotype's shapes ----------------------------------------------------
    def _op_cost(self, key: str, op: str, width: int, stride: int, spatial: tuple[int, ...]) -> Costs:
        cache = (key, op, width, stride, spatial)
        if cache not in self._ops:
            call = self.space.opset(self.specs[key].ops).get(op).call  # type: ignore[union-attr]
            dims = self.space.unet.dims
            with torch.device("meta"):
                module = self.library.build(call.kind, call.kwargs(), width, width, stride, dims)
                x = torch.empty(self.batch_size, width, *spatial, requires_grad=True)
            saved = SavedForBackward(module)  # the activations this operation keeps in a training step
            counter = FlopCounterMode(display=False)
            with counter, saved.recording():
                module(x)
            weights = sum(p.numel() for p in module.parameters())
            self._ops[cache] = {"flops": float(counter.get_total_flops() // self.batch_size),
                                "params": float(weights),
                                "memory": float(saved.bytes + _BYTES_PER_WEIGHT * weights)}
        return self._ops[cache]

    def tables(self, genotype: Genotype | None) -> dict[str, dict[str, torch.Tensor]]:
        """metric -> structure key -> ``(E, O)`` costs of every candidate on every edge, summed over the key's
        cell instances, at the widths, strides and sizes of ``genotype``'s network (module docstring); None: the
        supernet's (every node alive)."""
        plan = build_plan(self.space, stem_width=self.stem_width, genotype=genotype)
        shape = tuple((cp.width, cp.work_level, tuple(cp.nodes)) for cp in plan.cells)
        if shape in self._tables:
            return self._tables[shape]
        out = {m: {k: torch.zeros(len(self.edges[k]), len(self.op_names[k]), dtype=torch.float64)
                   for k in self.keys} for m in METRICS}
        for cp in plan.cells:
            alive = set(cp.spec.input_names()) | set(cp.nodes)
            spatial = tuple(-(-p // 2**cp.work_level) for p in self.patch)
            for row, (src, dst) in enumerate(self.edges[cp.key]):
                if src not in alive or dst not in alive:
                    continue  # changing this edge alone changes nothing: a pruned node's edge
                for col, op in enumerate(self.op_names[cp.key]):
                    if op in self.zeros[cp.key]:
                        continue
                    cost = self._op_cost(cp.key, op, cp.width, cp.stride(src), spatial)
                    for m in METRICS:
                        out[m][cp.key][row, col] += cost[m]
        self._tables[shape] = out
        return out

    # the expected cost ------------------------------------------------------------------------------
    def anchor(self, alphas: Mapping[str, torch.Tensor]) -> Genotype:
        """The most likely genotype under ``alphas``, derived as the search derives it."""
        return derive_genotype(self.space, {k: a.detach() for k, a in alphas.items()}, "anchor")[0]

    def chosen_columns(self, genotype: Genotype) -> dict[str, torch.Tensor]:
        """structure key -> ``(E,)`` the column ``genotype`` chose on each edge: its operation, or a zero where the
        genotype does not hold the edge (cut, or pruned: a dead node's edge, whose cost row is zero anyway)."""
        out = {}
        for key in self.keys:
            chosen = genotype.cell(key).chosen()  # type: ignore[union-attr]
            names = self.op_names[key]
            zero = next((i for i, n in enumerate(names) if n in self.zeros[key]), 0)
            out[key] = torch.tensor([names.index(chosen[edge]) if edge in chosen else zero
                                     for edge in self.edges[key]], dtype=torch.long)
        return out

    def expected(self, alphas: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Genotype]:
        """metric -> expected cost (a scalar tensor, differentiable in ``alphas``), and the genotype it is
        taken around (module docstring)."""
        anchor = self.anchor(alphas)
        exact = self.exact(anchor)
        tables = self.tables(anchor)
        columns = self.chosen_columns(anchor)
        # per structure key, the probabilities minus the anchor's one-hot choices: the same for every metric
        shift = {}
        for key in self.keys:
            p = torch.softmax(alphas[key].double(), dim=-1)
            onehot = torch.zeros_like(p)
            onehot[torch.arange(p.shape[0]), columns[key].to(p.device)] = 1.0
            shift[key] = p - onehot
        out = {m: exact[m] + torch.stack([(shift[k] * tables[m][k].to(shift[k].device)).sum() for k in self.keys]).sum()
               for m in METRICS}
        return out, anchor

    # fitting a genotype into a budget ---------------------------------------------------------------
    def fit(self, genotype: Genotype, preference: Mapping[str, torch.Tensor], limits: Mapping[str, float],
            name: str | None = None, exhaust: bool = False) -> Fitted:
        """``genotype`` changed one edge at a time until its exact costs are within ``limits``: each change puts
        on an edge a cheaper candidate, the one giving up the least ``preference`` (``(E, O)`` per structure key,
        larger is better: the selection method's own scores) per unit of cost saved; a change that does not
        lower the exact cost is not taken. ``exhaust``: go on while anything lowers the cost (the cheapest
        genotype this search finds)."""
        pref = {k: torch.nan_to_num(preference[k].detach().cpu().double(), nan=-1e9, posinf=1e9, neginf=-1e9)
                for k in self.keys}
        current = genotype
        costs = self.exact(current)
        gave_up: list[str] = []
        refused: set[tuple[str, int, int]] = set()
        for _ in range(sum(len(e) * len(self.op_names[k]) for k, e in self.edges.items())):
            over = {m: costs[m] / lim for m, lim in limits.items() if costs[m] > lim or exhaust}
            if not over:
                break
            check_stop()  # a stop signal while a search fits its choice into the budget
            tables = self.tables(current)
            columns = self.chosen_columns(current)
            best: tuple[float, str, int, int] | None = None
            for key in self.keys:
                for row, col in enumerate(columns[key].tolist()):
                    for other in range(len(self.op_names[key])):
                        if other == col or (key, row, other) in refused:
                            continue
                        saving = sum((float(tables[m][key][row, col]) - float(tables[m][key][row, other]))
                                     / limits[m] for m in over)
                        if saving <= 0:
                            continue
                        loss = max(float(pref[key][row, col] - pref[key][row, other]), 0.0)
                        ratio = loss / saving
                        if best is None or ratio < best[0]:
                            best = (ratio, key, row, other)
            if best is None:  # no edge alone lowers the cost: removing a whole node or input may (_remove_part)
                pruned = self._remove_part(current, columns, pref, limits, over, costs, name or genotype.name)
                if pruned is None:
                    break
                current, new, line = pruned
                gave_up.append(_given_up(line, costs, new, over))
                costs = new
                refused.clear()
                continue
            _, key, row, other = best
            candidate = derive_genotype(self.space, self._changed(columns, pref, {(key, row): other}),
                                        name or genotype.name)[0]
            new = self.exact(candidate)
            if _load(new, limits, over) >= _load(costs, limits, over):
                refused.add((key, row, other))
                continue
            src, dst = self.edges[key][row]
            names = self.op_names[key]
            was = names[columns[key][row]]
            gave_up.append(_given_up(f"{key} {src}->{dst}: {was} -> {names[other]}", costs, new, over))
            current, costs = candidate, new
            refused.clear()
        within = all(costs[m] <= lim for m, lim in limits.items())
        return Fitted(current, costs, within, gave_up)

    def _changed(self, columns: Mapping[str, torch.Tensor], pref: Mapping[str, torch.Tensor],
                 changes: Mapping[tuple[str, int], int]) -> dict[str, torch.Tensor]:
        """Logits whose argmax is the current choices (``columns``) with ``changes`` ((key, edge row) ->
        operation column) made, ties broken by ``pref``."""
        table = {k: v.clone() for k, v in pref.items()}
        for k in self.keys:
            for r, c in enumerate(columns[k].tolist()):
                table[k][r, c] += 1e12
        for (k, r), c in changes.items():
            table[k][r, c] += 4e12
        return table

    def _remove_part(self, current: Genotype, columns: Mapping[str, torch.Tensor], pref: Mapping[str, torch.Tensor],
                    limits: Mapping[str, float], over: Mapping[str, float], costs: Costs, name: str
                    ) -> tuple[Genotype, Costs, str] | None:
        """The removal of one node (every edge into it set to the zero operation) or one input (every edge out of
        it) that lowers the exact cost and gives up the least preference per unit saved, or None. The edges may
        each cost nothing (pooling, identity) while the node costs the cells after it their input width, and the
        input its preprocessing: no single edge shows that."""
        before = _load(costs, limits, over)
        best: tuple[float, Genotype, Costs, str] | None = None
        for key in self.keys:
            zero = next((i for i, op in enumerate(self.op_names[key]) if op in self.zeros[key]), None)
            if zero is None:
                continue
            chosen = columns[key].tolist()
            spec = self.specs[key]
            assert spec is not None  # structure keys come from the space itself
            parts = [(node, [r for r, (_, dst) in enumerate(self.edges[key]) if dst == node])
                     for node in spec.node_names()]  # a node: every edge into it
            parts += [(source, [r for r, (src, _) in enumerate(self.edges[key]) if src == source])
                      for source in spec.input_names()]  # an input: every edge out of it (its preprocessing)
            for part, edges in parts:
                rows = [r for r in edges if chosen[r] != zero]
                if not rows:
                    continue
                candidate = derive_genotype(self.space, self._changed(columns, pref, {(key, r): zero for r in rows}),
                                            name)[0]
                if _genotype_key(candidate) == _genotype_key(current):  # the cell needs the node: not removable
                    continue
                new = self.exact(candidate)
                saving = before - _load(new, limits, over)
                if saving <= 0:
                    continue
                loss = sum(max(float(pref[key][r, chosen[r]] - pref[key][r, zero]), 0.0) for r in rows)
                if best is None or loss / saving < best[0]:
                    best = (loss / saving, candidate, new, f"{key} {part}: removed (its {len(rows)} edge(s) zero)")
        return None if best is None else best[1:]

    def cheapest(self, limits: Mapping[str, float], starts: int = 3, enough: bool = False) -> Fitted:
        """The cheapest genotype this model finds in the limited metrics (their sum, each relative to its limit):
        edges changed while that lowers the exact cost (:meth:`fit`), from the cheapest operation on every edge
        and from ``starts`` random genotypes (seeded); the best of these descents. An upper bound of the space's
        minimum: a greedy descent can stop above it. ``enough``: stop at the first genotype within ``limits``
        (all the impossible-budget check needs)."""
        from scnas_dsl.nn.random_genotypes import draw_genotypes

        full = self.tables(None)  # every candidate's cost in the supernet: the cheapest start is their minimum
        start_pref = {k: -torch.stack([full[m][k] / lim for m, lim in limits.items()]).sum(dim=0) for k in self.keys}
        zero = {k: torch.zeros_like(v) for k, v in start_pref.items()}
        stream = draw_genotypes(self.space, seed=0, name="cheapest")
        candidates = [derive_genotype(self.space, start_pref, "cheapest")[0], *(next(stream) for _ in range(starts))]
        found = []
        for genotype in candidates:
            found.append(self.fit(genotype, zero, limits, "cheapest", exhaust=not enough))
            if enough and found[-1].within:
                break
        return min(found, key=lambda f: _load(f.costs, limits, limits))


def _load(costs: Costs, limits: Mapping[str, float], metrics: Iterable[str]) -> float:
    """The ``metrics`` of ``costs``, each relative to its limit, summed: what the descents lower."""
    return sum(costs[m] / limits[m] for m in metrics)


def _given_up(change: str, before: Costs, after: Costs, metrics: Iterable[str]) -> str:
    """One line of what a fitting gave up: the change and the limited costs before and after it."""
    return (f"{change} (" + ", ".join(f"{m} {format_quantity(m, before[m])} -> {format_quantity(m, after[m])}"
                                      for m in metrics) + ")")


def penalty(expected: Mapping[str, torch.Tensor], limits: Mapping[str, float], weight: float) -> torch.Tensor:
    """``weight * sum max(0, expected / limit - 1)`` over the limited metrics: zero inside the budget."""
    terms = [torch.relu(expected[m] / float(lim) - 1.0) for m, lim in limits.items()]
    return weight * torch.stack(terms).sum()


def describe_costs(costs: Costs, limits: Mapping[str, float]) -> str:
    """``'flops 38.2 GFLOPs of 40 GFLOPs (96%)'``, one item per limited metric."""
    return "; ".join(f"{m} {format_quantity(m, costs[m])} of {format_quantity(m, lim)} "
                     f"({100 * costs[m] / lim:.0f}%)" for m, lim in limits.items())


def check_reachable(model: CostModel, limits: Mapping[str, float], where: str, width: str = "stem width") -> None:
    """A CompileError when the cheapest genotype found is above a limit: the budget cannot be met. ``width``: what
    sets the width the costs are measured at, in words."""
    cheapest = model.cheapest(limits, enough=True)
    short = [m for m, lim in limits.items() if cheapest.costs[m] > lim]
    if short:
        # what each limited quantity depends on: parameters on the width only, FLOPs on the patch too, memory also
        # on the batch
        levers = {"params": width, "flops": f"patch or {width}", "memory": f"patch, batch or {width}"}
        raise CompileError(
            f"{where}: " + "; ".join(f"the {m} limit of {format_quantity(m, limits[m])} is below the cheapest genotype "
                                     f"found in the space ({format_quantity(m, cheapest.costs[m])}; found by greedy "
                                     "descents, the true cheapest may be a little lower)" for m in short)
            + f", at patch {'x'.join(map(str, model.patch))}, batch {model.batch_size}, {width} "
            f"{model.stem_width}: raise the budget, or search at a smaller {levers[short[0]]}")
