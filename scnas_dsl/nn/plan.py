"""The U-Net's wiring as plain data: levels, widths and inputs of every cell, and which nodes of a genotype
stay alive. No torch: the supernet, the fixed network, the code generator and the size check all read one
plan, so they cannot disagree.

Conventions (docs/compiler.md explains why):

* level 0 is the stem's resolution; a reduction cell goes from level l to l+1, an expansion cell from l to
  l-1. The level's width ``C_l = stem_width * width_factor**l`` is the width of a cell's *output*: with
  ``node_width split`` (the default) a cell concatenating k live nodes gives each node ``ceil(C_l / k)``
  channels, so its output has about ``C_l``; with ``node_width full`` (DARTS) every node has ``C_l`` and
  the output ``k * C_l``. Cells whose output is a sum or one node have node width ``C_l`` either way.
* a cell with n inputs reads the outputs of the n previous cells: ``in{n-1}`` is the previous cell,
  ``in{n-2}`` the one before, ...; positions before the first cell read the stem (the first cell takes the
  stem output twice, as in the paper).
* every input is resampled to the level the cell works at (up: trilinear, down: average pooling) and
  projected to the node width by LeakyReLU -> 1x1 conv -> instance norm. Reduction cells work at their input
  level with stride 2 on the edges leaving the cell inputs; expansion cells up-sample their inputs first.
* decoder: the previous cell's output is summed with the skip of its level, i.e. the output of the last
  encoder cell (or the stem, for level 0) at that level, unless the previous cell *is* that skip. At the
  bridge level the skip is the last reduction cell, so the first expansion cell reads bridge + its input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from scnas_dsl.errors import CompileError
from scnas_dsl.model import CellSpec, Genotype, SearchSpace
from scnas_dsl.model.structure import decoder_levels
from scnas_dsl.model.wiring import STEM, wiring  # STEM: the stem's index as a source in ``InputPlan.source``


@dataclass(frozen=True)
class InputPlan:
    """Where cell input ``in{j}`` comes from and how it is brought to the cell."""

    name: str
    source: int  # STEM or a cell index
    source_level: int
    source_width: int
    factor: float  # resampling factor: 2 = up-sample x2, 0.5 = down-sample x2


@dataclass(frozen=True)
class SkipPlan:
    """The decoder sum: ``input_name`` is summed with the output of ``source`` (projected if widths differ)."""

    input_name: str
    source: int
    width: int
    target_width: int


@dataclass(frozen=True)
class GatePlan:
    """The attention gate on a decoder skip (``skips attention``): the skip (``SkipPlan.source``, at the cell's
    input level) is scaled by coefficients computed from it and the gating signal ``source``, the most recent
    decoder (or bridge) output one level coarser, or the previous cell's output where there is none (the
    deepest skip). ``factor`` is 2 for a coarser gating signal, 1 for one at the skip's level."""

    source: int
    width: int
    factor: int


@dataclass(frozen=True)
class HeadPlan:
    """A deep-supervision head: the output of cell ``source`` (the last decoder cell at ``level``) to logits."""

    level: int
    source: int
    width: int


@dataclass(frozen=True)
class CellPlan:
    """One cell instance of the U-Net."""

    index: int
    instance: str  # e.g. "enc[1]"
    key: str  # structure key: owns the logits and the genotype cell
    section: str  # encoder, bridge, decoder
    spec: CellSpec
    in_level: int  # level of the previous cell's output
    work_level: int  # level the preprocessed inputs are at
    out_level: int
    width: int  # node width
    inputs: tuple[InputPlan, ...]
    skip: SkipPlan | None
    edges: tuple[tuple[str, str], ...]  # live edges (src, dst) in the spec's order
    nodes: tuple[str, ...]  # live intermediate nodes in order
    output_nodes: tuple[str, ...]  # live nodes making the output
    out_width: int
    gate: GatePlan | None = None  # the attention gate on ``skip`` (``skips attention``)

    def stride(self, src: str) -> int:
        """Stride of the operations on edges leaving ``src``: 2 from a reduction cell's inputs."""
        return 2 if self.spec.role == "reduction" and src.startswith("in") else 1

    def used_inputs(self) -> list[InputPlan]:
        srcs = {s for s, _ in self.edges}
        return [i for i in self.inputs if i.name in srcs]


@dataclass(frozen=True)
class UNetPlan:
    """The whole network: stem, cells in order, head."""

    space: SearchSpace
    dims: int
    stem_width: int
    cells: tuple[CellPlan, ...]
    levels: int  # deepest level reached
    out_source: int  # the cell whose output the head reads
    out_width: int
    notes: list[str] = field(default_factory=list)
    #: deep-supervision heads, by level (coarser levels later)
    heads: tuple[HeadPlan, ...] = ()

    def keys(self) -> list[str]:
        return self.space.structure_keys()

    def last_use(self, heads: bool = False) -> dict[int, int]:
        """For every output (STEM or a cell index), the index of the last cell that reads it; with ``heads``
        an output a deep-supervision head reads is kept to the end (index ``len(cells)``)."""
        last: dict[int, int] = {}
        for cp in self.cells:
            sources = [i.source for i in cp.inputs] + ([cp.skip.source] if cp.skip else [])
            for source in sources + ([cp.gate.source] if cp.gate else []):
                last[source] = cp.index
        for head in self.heads if heads else ():
            last[head.source] = len(self.cells)
        return last

    @property
    def deep_supervision(self) -> tuple[int, ...]:
        """The levels with a head of their own (besides level 0)."""
        return tuple(h.level for h in self.heads)


def zero_op_names(space: SearchSpace, spec: CellSpec) -> set[str]:
    """Names of the operations of the cell's set that are ``zero`` (no connection)."""
    opset = space.opset(spec.ops)
    if opset is None:
        raise CompileError(f"cell '{spec.name}' uses the operation set '{spec.ops}', which is not defined")
    return {op.name for op in opset.ops if op.call.kind == "zero"}


def live_structure(spec: CellSpec, chosen: dict[tuple[str, str], str] | None, zeros: set[str]
                   ) -> tuple[list[tuple[str, str]], list[str], list[str], list[str]]:
    """(live edges, live nodes, output nodes, report) of a cell given chosen ops (None: every edge of a
    supernet is live). A node is dead when no live edge reaches it, or when it feeds nothing that reaches
    the cell output; edges from or to dead nodes are dropped."""
    report: list[str] = []
    edges = spec.edge_list()
    if chosen is not None:
        edges = [e for e in edges if e in chosen and chosen[e] not in zeros]
    alive = set(spec.input_names())
    for node in spec.node_names():
        if any(d == node and s in alive for s, d in edges):
            alive.add(node)
        else:
            report.append(f"{node} has no incoming edge left: pruned")
    edges = [(s, d) for s, d in edges if s in alive and d in alive]
    # backwards: keep only nodes that reach the output
    wanted = {n for n in spec.output_nodes() if n in alive}
    for node in reversed(spec.node_names()):
        if node in wanted:
            wanted |= {s for s, d in edges if d == node}
    for node in spec.node_names():
        if node in alive and node not in wanted:
            alive.discard(node)
            report.append(f"{node} does not reach the cell output: pruned")
    edges = [(s, d) for s, d in edges if s in alive and d in alive]
    nodes = [n for n in spec.node_names() if n in alive]
    outputs = [n for n in spec.output_nodes() if n in alive]
    return edges, nodes, outputs, report


def node_width(level_width: int, count: int, mode: str) -> int:
    """Width of every intermediate node of a cell at a level of width ``level_width`` whose output
    concatenates ``count`` nodes (1 for sum and single-node outputs): ``ceil(level_width / count)`` with
    ``split``, ``level_width`` with ``full``."""
    return -(-level_width // count) if mode == "split" else level_width


def default_deep_supervision(space: SearchSpace) -> tuple[int, ...]:
    """The levels ``--deep-supervision`` supervises when the spec names none: every decoder level but the
    coarsest, as nnU-Net (whose coarsest output has weight 0); the one level there is, for a two-level net."""
    levels = decoder_levels(space)
    return tuple(levels[:-1] or levels)


def resolve_deep_supervision(space: SearchSpace, setting: bool | Sequence[int] | None) -> tuple[int, ...]:
    """The deep-supervision levels of a network: ``None`` the spec's, ``False`` none, ``True`` the spec's or
    (when it names none) :func:`default_deep_supervision`, or the given levels."""
    if setting is None:
        return tuple(space.unet.deep_supervision)
    if setting is False:
        return ()
    if setting is True:
        levels = tuple(space.unet.deep_supervision) or default_deep_supervision(space)
        if not levels:
            raise CompileError(f"space '{space.name}': deep supervision needs a decoder level below the stem's "
                               "resolution, and this U-Net has none")
        return levels
    return tuple(int(v) for v in setting)


def build_plan(space: SearchSpace, *, stem_width: int | None = None, genotype: Genotype | None = None,
               deep_supervision: bool | Sequence[int] | None = None) -> UNetPlan:
    """Levels, widths and inputs of every cell; with a genotype, only the live edges and nodes.
    ``deep_supervision``: see :func:`resolve_deep_supervision` (default: the spec's levels)."""
    unet = space.unet
    width0 = stem_width if stem_width is not None else unet.stem.width
    if width0 is None or width0 < 1:
        raise CompileError(
            f"space '{space.name}': the stem has no width; write 'stem ... -> 48' or pass stem_width"
        )
    factor = unet.width_factor

    def width_at(level: int) -> int:
        return width0 * factor**level

    keys = space.structure_keys()
    outs: dict[int, tuple[int, int]] = {STEM: (0, width0)}  # source -> (level, width)
    cells: list[CellPlan] = []
    notes: list[str] = []
    deepest = 0
    for wired in wiring(space):  # levels, inputs and skips: model/wiring.py; here widths and live structure
        k, instance, spec, section = wired.index, wired.instance, wired.spec, wired.section
        key = keys[k] if unet.share == "by_level" else spec.name
        prev = k - 1 if k > 0 else STEM
        in_level, out_level, role = wired.in_level, wired.out_level, spec.role
        if out_level < 0:
            raise CompileError(
                f"space '{space.name}': the expansion cell {instance} would go above the stem's resolution "
                f"(level {out_level}): add a reduction cell before it or remove an expansion cell"
            )
        deepest = max(deepest, out_level)
        work_level = out_level if role == "expansion" else in_level
        chosen = None
        if genotype is not None:
            choice = genotype.cell(key)
            if choice is None:
                raise CompileError(
                    f"genotype '{genotype.name}' has no cell '{key}' but space '{space.name}' needs one "
                    f"(it uses {', '.join(keys)})"
                )
            chosen = choice.chosen()
            unknown = [f"{s}->{d}" for s, d in chosen if (s, d) not in spec.edge_list()]
            if unknown:
                raise CompileError(
                    f"genotype '{genotype.name}', cell '{key}': edges {', '.join(unknown)} are not edges of "
                    f"cell type '{spec.name}'"
                )
            opset = space.opset(spec.ops)
            bad = sorted({op for op in chosen.values() if opset is not None and opset.get(op) is None})
            if bad:
                raise CompileError(
                    f"genotype '{genotype.name}', cell '{key}': operations {', '.join(bad)} are not in the "
                    f"set '{spec.ops}'"
                )
        edges, nodes, outputs, report = live_structure(spec, chosen, zero_op_names(space, spec))
        notes += [f"{instance}: {line}" for line in report]
        if not outputs:
            raise CompileError(
                f"cell {instance} ({key}) has no path from its inputs to its output: every edge into its "
                f"output nodes is zero; choose a non-zero operation on at least one edge"
            )
        count = len(outputs) if spec.output.kind == "concat" else 1
        width = node_width(width_at(out_level), count, unet.node_width)
        out_width = width * count
        inputs = []
        n_in = spec.inputs
        for j, src in enumerate(wired.inputs):
            level, w = outs[src]
            inputs.append(InputPlan(f"in{j}", src, level, w, 2.0 ** (level - work_level)))
        skip, gate = None, None
        if wired.skip is not None:
            skip_src = wired.skip
            skip = SkipPlan(f"in{n_in - 1}", skip_src, outs[skip_src][1], outs[prev][1])
            if unet.skips == "attention":
                gate = _gate(in_level, skip_src, prev, cells)
        cells.append(CellPlan(k, instance, key, section, spec, in_level, work_level, out_level, width,
                              tuple(inputs), skip, tuple(edges), tuple(nodes), tuple(outputs), out_width, gate))
        outs[k] = (out_level, out_width)
    last = len(cells) - 1 if cells else STEM
    if outs[last][0] != 0:
        raise CompileError(
            f"space '{space.name}': the last cell ends at level {outs[last][0]}, not at the stem's resolution; "
            f"the decoder needs as many expansion cells as the encoder has reduction cells"
        )
    heads = []
    for level in sorted(resolve_deep_supervision(space, deep_supervision)):
        at_level = [cp for cp in cells if cp.section == "decoder" and cp.out_level == level]
        if not at_level or level < 1:
            raise CompileError(
                f"space '{space.name}': deep supervision at level {level}, but no decoder cell outputs there "
                f"(decoder levels: {', '.join(map(str, decoder_levels(space))) or 'none'})")
        heads.append(HeadPlan(level, at_level[-1].index, at_level[-1].out_width))
    return UNetPlan(space, unet.dims, width0, tuple(cells), deepest, last, outs[last][1], notes, tuple(heads))


def _gate(level: int, skip_src: int, prev: int, cells: list[CellPlan]) -> GatePlan:
    """The gating signal of the skip at ``level``: the latest output after the skip's source, in the bridge or
    decoder, one level coarser; else the previous cell's output (the deepest skip, where nothing is coarser)."""
    for cp in reversed(cells):
        if cp.index <= skip_src:
            break
        if cp.section != "encoder" and cp.out_level == level + 1:
            return GatePlan(cp.index, cp.out_width, 2)
    source = cells[prev] if prev >= 0 else None
    assert source is not None  # a decoder cell with a skip always follows a cell
    return GatePlan(prev, source.out_width, 1)


def size_problem(spatial: Sequence[int], levels: int, dims: int) -> str | None:
    """Why a patch of ``spatial`` cannot go through a U-Net of ``levels`` down-samplings, or None: a wrong
    number of dimensions, a size not divisible by ``2**levels``, or one voxel at the deepest level."""
    if len(spatial) != dims:
        return (f"the network is {dims}D but the input has {len(spatial)} spatial dimensions "
                f"{tuple(spatial)}: give (B, C, {', '.join('DHW'[3 - dims:])})")
    step = 2**levels
    if any(size < 1 for size in spatial):
        return f"patch {tuple(spatial)}: every size must be a positive number of voxels (a multiple of {step})"
    for size in spatial:
        if size < step or size % step:
            lower, upper = max(step, size // step * step), (size // step + 1) * step
            hint = f"use {lower} or {upper}" if lower != upper and size >= step else f"use {upper}"
            return (f"patch {size} is not divisible by {step} = 2^{levels} levels: {hint} "
                    f"(patch {tuple(spatial)})")
    if all(size == step for size in spatial):
        # instance norm normalises over the voxels of a channel: one voxel has nothing to normalise
        example = (2 * step,) + tuple(spatial[1:])
        return (f"patch {tuple(spatial)} leaves one voxel at the deepest level (2^{levels} = {step}), and "
                f"instance norm needs more than one: use {2 * step} along at least one axis, e.g. {example}")
    return None
