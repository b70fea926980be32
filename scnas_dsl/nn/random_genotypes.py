"""Random genotypes of a space: the random-search baseline of NAS papers, optionally matched in FLOPs or
parameters to a given genotype (``scnas sample``; docs/training.md, "Random baselines").

Sampling: every edge of every structure key's cell draws one operation of its set uniformly (``zero``
included); a cell that is left without a live path from its inputs to its output is drawn again (only that
cell: the cells are independent, so this is the uniform distribution over valid genotypes). The drawn
operations become a genotype through :func:`derive_genotype` (one-hot logits), so dead nodes are pruned and
the result has the form of a searched genotype. With ``like`` and ``match``, a genotype is kept only if its
FLOPs (or parameters) are within ``tolerance`` (relative) of the ``like`` genotype's, at the same patch,
channels, classes and stem width (rejection sampling, at most ``max_draws`` genotypes drawn). One
``random.Random(seed)`` stream drives every draw, so a seed gives the same genotypes, and asking for more
genotypes with the same seed keeps the first ones.

Costs are those of :func:`scnas_dsl.nn.cost.estimate` (parameters of the fixed network; FLOPs of one forward
pass of one sample, convolutions only, 2 per multiply-add) but counted without running every network:
see :class:`CostCounter`.
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from scnas_dsl.errors import CompileError, RunError, ScnasError
from scnas_dsl.files import write_text
from scnas_dsl.folders import holding
from scnas_dsl.graph.scn_text import genotype_text, space_text
from scnas_dsl.model import CellSpec, Genotype, SearchSpace
from scnas_dsl.nn.cost import estimate
from scnas_dsl.nn.derive import derive_genotype
from scnas_dsl.nn.network import build_network, check_input_size
from scnas_dsl.nn.plan import build_plan, live_structure, zero_op_names
from scnas_dsl.nn.supernet import build_supernet
from scnas_dsl.ops.library import Library, default_library
from scnas_dsl.ops.signatures import Signatures
from scnas_dsl.stopping import check_stop

Match = Literal["flops", "params"]

#: Draws of one cell before giving up on it (only reached by a cell that is valid in well under 0.1% of
#: its draws; a cell with no valid choice at all is refused before sampling).
MAX_CELL_DRAWS = 10_000
#: Default bound on the genotypes drawn: this many per requested genotype.
DRAWS_PER_SAMPLE = 200
#: Cost the supernet first (``CostCounter.warm_up``) from this many genotypes on, or when matching.
WARM_UP_FROM = 8
#: Default patch per spatial dimension (the same as ``scnas compile``'s).
DEFAULT_PATCH = 128
SPACE_FILE = "space.scn"
SUMMARY_FILE = "samples.json"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SamplingError(ScnasError):
    """A sampling request that cannot be met: no valid genotype, a target out of reach, bad settings."""


@dataclass(frozen=True)
class SampleSettings:
    """What a set of samples was drawn with; shared by every :class:`SampledGenotype` of one call."""

    space: str
    seed: int
    patch: tuple[int, ...]
    in_channels: int
    num_classes: int
    stem_width: int
    max_draws: int
    unique: bool
    match: Match | None = None
    like: str | None = None  # the genotype's name
    target: int | None = None  # its FLOPs or parameters
    tolerance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "seed": self.seed, "patch": list(self.patch), "in_channels": self.in_channels,
                "num_classes": self.num_classes, "stem_width": self.stem_width, "max_draws": self.max_draws,
                "unique": self.unique, "match": self.match, "like": self.like, "target": self.target,
                "tolerance": self.tolerance}


@dataclass(frozen=True)
class SampledGenotype:
    """One random genotype with its cost. ``flops``: one forward pass of one sample at ``settings.patch``;
    ``draws``: genotypes drawn to find it (rejected ones and duplicates since the previous sample, and it)."""

    genotype: Genotype
    flops: int
    params: int
    draws: int
    settings: SampleSettings

    @property
    def relative_difference(self) -> float | None:
        """(value - target) / target of the matched quantity, or None when nothing was matched."""
        s = self.settings
        if s.match is None or not s.target:
            return None
        return (getattr(self, s.match) - s.target) / s.target


_CONVS = (nn.Conv2d, nn.Conv3d)
# Instance norms keep the shape and count no FLOPs, but on the meta device torch runs them through Python
# decompositions: half the time of a run. The networks run to record voxels are thrown away, so their norms
# are skipped.
_NORMS = (nn.modules.instancenorm._InstanceNorm,)


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


class CostCounter:
    """Parameters and FLOPs of genotypes of one space, equal to ``estimate(...).params`` and ``.flops`` but
    about ten times faster per genotype once warm: ``estimate`` runs the network on the meta device (~0.5-1 s
    for the paper's space, whatever the patch), which is the bulk of its time.

    A convolution's FLOPs are ``2 * weight.numel() * output voxels`` (torch's flop counter), and the output
    voxels of a module depend only on where it sits in the U-Net (its name, such as
    ``cells.3.edges.in0_n2.ops.dil2.depthwise``), not on the widths a genotype gives it. So a genotype's
    network is only built (on the meta device: no memory) and its convolutions summed, with voxels recorded
    by running the networks that bring a module name not seen before (the first draws of a sampling run do,
    then fewer and fewer). Each such run also checks that its counted FLOPs are exactly the convolutions'
    sum; if not (an operation with other counted work, e.g. a custom one with a matrix product), every
    genotype from then on is costed by ``estimate`` itself.
    """

    def __init__(self, space: SearchSpace, patch: Sequence[int], *, in_channels: int = 1, num_classes: int = 2,
                 stem_width: int | None = None, library: Library | None = None) -> None:
        self.space, self.patch, self.library = space, tuple(int(s) for s in patch), library
        self.in_channels, self.num_classes, self.stem_width = in_channels, num_classes, stem_width
        self.voxels: dict[str, int] = {}  # convolution name -> output voxels of one sample
        self.known: set[str] = set()  # every module name of a network that has run
        self.exact = True  # False: a network's FLOPs were not its convolutions' sum: use estimate
        self.runs = 0  # networks run to record voxels (for the curious and the tests)
        check_input_size(space, self.patch)
        self.resolved_stem_width = build_plan(space, stem_width=stem_width).stem_width

    def warm_up(self) -> None:
        """Record every operation of every edge at once by running the supernet, which holds them all. Worth it
        when many genotypes will be costed: for the paper's space it takes about as long as six runs of a
        genotype's network, while costing genotypes one by one runs ~33 networks before every name is known."""
        with torch.device("meta"):
            supernet = build_supernet(self.space, in_channels=self.in_channels, num_classes=self.num_classes,
                                      stem_width=self.stem_width, sampling="full", library=self.library)
        # the sampler reads the logits to draw: give it real (CPU) ones, as estimate does
        supernet.arch = nn.ParameterDict({k: nn.Parameter(torch.zeros(a.shape)) for k, a in supernet.arch.items()})
        self._record(supernet)

    def _record(self, net: nn.Module) -> None:
        """Run ``net`` once on the meta device at the patch; keep each convolution's output voxels."""
        seen: dict[str, int] = {}
        hooks = []
        for name, module in net.named_modules():
            if isinstance(module, _CONVS):
                def hook(_m: nn.Module, _x: Any, y: torch.Tensor, name: str = name) -> None:
                    seen[name] = seen.get(name, 0) + y[0, 0].numel()  # a module may run more than once
                hooks.append(module.register_forward_hook(hook))
        for module in net.modules():
            if isinstance(module, _NORMS):  # see _NORMS
                module.forward = _same  # type: ignore[method-assign,assignment]
        x = torch.empty((1, self.in_channels, *self.patch), device="meta")
        net.train()
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                net(x)
        finally:
            for h in hooks:
                h.remove()
        self.runs += 1
        self.voxels.update(seen)
        self.known.update(name for name, _ in net.named_modules())
        if counter.get_total_flops() != self._conv_flops(net):
            self.exact = False

    def _conv_flops(self, net: nn.Module) -> int:
        return sum(2 * m.weight.numel() * self.voxels.get(name, 0)
                   for name, m in net.named_modules() if isinstance(m, _CONVS))

    def __call__(self, genotype: Genotype) -> tuple[int, int]:
        """(FLOPs, parameters) of ``genotype``'s fixed network."""
        if not self.exact:
            report = estimate(self.space, patch=self.patch, genotype=genotype, in_channels=self.in_channels,
                              num_classes=self.num_classes, stem_width=self.stem_width, library=self.library)
            return report.flops, report.params
        with torch.device("meta"):
            net = build_network(self.space, genotype, in_channels=self.in_channels, num_classes=self.num_classes,
                                stem_width=self.stem_width, library=self.library)
        net.deep_supervision = True  # costed as it trains, as estimate does
        if any(name not in self.known for name, m in net.named_modules() if isinstance(m, _CONVS)):
            self._record(net)
            if not self.exact:
                return self(genotype)
        return self._conv_flops(net), sum(p.numel() for p in net.parameters())


@dataclass(frozen=True)
class _CellDraw:
    key: str
    spec: CellSpec
    names: list[str]
    zeros: set[str]


def _cells(space: SearchSpace) -> list[_CellDraw]:
    """What each structure key draws from; SamplingError if a cell has no valid choice at all."""
    specs = dict(space.instances())
    out = []
    for key in space.structure_keys():
        spec = specs[key] if key in specs else space.cell(key)
        assert spec is not None  # structure keys come from the space itself
        opset = space.opset(spec.ops)
        if opset is None:
            raise SamplingError(f"space '{space.name}': cell '{key}' uses the undefined operation set '{spec.ops}'")
        names, zeros = opset.names(), zero_op_names(space, spec)
        live = [op for op in names if op not in zeros]
        # a non-zero operation on every edge is the best chance of a path: if even that has none, nothing has
        if not live or not live_structure(spec, {e: live[0] for e in spec.edge_list()}, zeros)[2]:
            why = (f"every operation of its set '{spec.ops}' is zero" if not live else
                   "no edge path leads from its inputs to its output nodes")
            raise SamplingError(
                f"space '{space.name}' has no valid genotype: cell '{key}' can never reach its output ({why}); "
                f"add a non-zero operation to '{spec.ops}' or edges from the inputs to "
                f"{', '.join(spec.output_nodes())}")
        out.append(_CellDraw(key, spec, names, zeros))
    return out


def _draw(space: SearchSpace, cells: list[_CellDraw], rng: random.Random, name: str) -> Genotype:
    """One genotype: a uniform operation on every edge, each cell redrawn until its output is reachable."""
    logits: dict[str, torch.Tensor] = {}
    for cell in cells:
        edges = cell.spec.edge_list()
        for _ in range(MAX_CELL_DRAWS):
            picks = [rng.randrange(len(cell.names)) for _ in edges]
            chosen = {e: cell.names[i] for e, i in zip(edges, picks, strict=True)}
            if live_structure(cell.spec, chosen, cell.zeros)[2]:
                break
        else:
            raise SamplingError(f"space '{space.name}': cell '{cell.key}' had no live path in {MAX_CELL_DRAWS} "
                                "draws; give its edges fewer zero operations")
        one_hot = torch.zeros(len(edges), len(cell.names), device="cpu")  # even under a meta device context
        one_hot[range(len(edges)), picks] = 1.0
        logits[cell.key] = one_hot
    return derive_genotype(space, logits, name=name)[0]


def draw_genotypes(space: SearchSpace, *, seed: int = 0, name: str = "random") -> Iterator[Genotype]:
    """An endless stream of valid genotypes of ``space`` (all called ``name``), uniform over the valid
    choices of every cell, repeats included: the draws :func:`sample_genotypes` filters. SamplingError at
    once if a cell has no valid choice at all."""
    cells = _cells(space)
    rng = random.Random(seed)

    def stream() -> Iterator[Genotype]:
        while True:
            yield _draw(space, cells, rng, name)

    return stream()


def quantity(match: Match) -> str:
    """``'FLOPs'`` or ``'parameters'``: the matched quantity in words."""
    return "FLOPs" if match == "flops" else "parameters"


def _flops_text(value: float) -> str:
    return f"{value / 1e9:,.2f} GFLOPs"


def _params_text(value: float) -> str:
    return f"{value / 1e6:,.3f} M parameters"


def describe(match: Match, value: float) -> str:
    """``'591.46 GFLOPs'`` or ``'2.292 M parameters'``."""
    return _flops_text(value) if match == "flops" else _params_text(value)


def sample_names(n: int, name_prefix: str = "random") -> list[str]:
    """The names of ``n`` samples: ``random_000``, ``random_001``, ... (more digits from 1000 on)."""
    digits = max(3, len(str(n - 1)))
    return [f"{name_prefix}_{i:0{digits}d}" for i in range(n)]


def sample_genotypes(space: SearchSpace, n: int, *, seed: int = 0, like: Genotype | None = None,
                     match: Match | None = None, tolerance: float = 0.1, patch: Sequence[int] | None = None,
                     in_channels: int = 1, num_classes: int = 2, stem_width: int | None = None,
                     max_draws: int | None = None, name_prefix: str = "random", unique: bool = True,
                     library: Library | None = None, give_up_early: bool = False) -> list[SampledGenotype]:
    """``n`` random valid genotypes of ``space``, named ``{name_prefix}_000``, ``..._001``, ...

    ``like`` with ``match`` ("flops", the default when ``like`` is given, or "params"): keep only genotypes
    whose FLOPs/parameters are within ``tolerance`` (relative) of ``like``'s. ``patch`` (default 128 per
    dimension), ``in_channels``, ``num_classes`` and ``stem_width`` (default: the space's) fix the networks
    costs are counted on. ``unique``: no two samples are the same architecture. At most ``max_draws``
    (default ``200 * n``) genotypes are drawn; SamplingError says why when ``n`` are not found.
    ``give_up_early`` (when matching): stop as soon as even an optimistic acceptance rate cannot find ``n`` in
    the draws left (:func:`_hopeless`); a caller with a fallback need not wait for all ``max_draws``.
    """
    if n < 1:
        raise SamplingError(f"n={n}: ask for at least one genotype")
    if like is None and match is not None:
        raise SamplingError(f"matching {match} needs a genotype to match (like)")
    if like is not None:
        match = match or "flops"
        if like.space != space.name:
            raise SamplingError(f"genotype '{like.name}' is of space '{like.space}', not '{space.name}': give a "
                                f"genotype of '{space.name}' to match, or sample from '{like.space}'")
    if match not in (None, "flops", "params"):
        raise SamplingError(f"match '{match}': choose flops or params")
    if not math.isfinite(tolerance) or tolerance < 0:  # NaN would match nothing and write a bare NaN as JSON
        raise SamplingError(f"tolerance {tolerance}: a relative tolerance is at least 0 (0.1 is 10%)")
    if not _NAME.fullmatch(name_prefix):
        raise SamplingError(f"name prefix '{name_prefix}': a genotype name starts with a letter or '_' and "
                            "has only letters, digits and '_'")
    max_draws = DRAWS_PER_SAMPLE * n if max_draws is None else max_draws
    if max_draws < n:
        raise SamplingError(f"max draws {max_draws}: at least n={n} draws are needed")
    dims = space.unet.dims
    spatial = tuple(int(s) for s in patch) if patch is not None else (DEFAULT_PATCH,) * dims
    stream = draw_genotypes(space, seed=seed)
    counter = CostCounter(space, spatial, in_channels=in_channels, num_classes=num_classes,
                          stem_width=stem_width, library=library)
    if match is not None or n >= WARM_UP_FROM:  # many genotypes will be costed
        counter.warm_up()
    target = None
    if like is not None and match is not None:
        try:
            flops, params = counter(like)
        except CompileError as err:
            raise SamplingError(f"genotype '{like.name}' does not fit space '{space.name}': {err}") from err
        target = flops if match == "flops" else params
    settings = SampleSettings(space.name, seed, spatial, in_channels, num_classes, counter.resolved_stem_width,
                              max_draws, unique, match, like.name if like is not None else None, target,
                              tolerance if match is not None else None)
    names = sample_names(n, name_prefix)
    samples: list[SampledGenotype] = []
    seen: set[Any] = set()  # the cells of every sample
    costs: dict[Any, tuple[int, int]] = {}  # (FLOPs, params) by cells: a repeated draw is not costed again
    values: list[int] = []  # the matched quantity of every costed draw, for the error message
    since, duplicates = 0, 0
    stopped: int | None = None  # draws made when the rest were judged hopeless
    for drawn in range(max_draws):
        if give_up_early and match is not None and _hopeless(len(samples), drawn, max_draws, n):
            stopped = drawn
            break
        check_stop()  # a stop signal during the search's choice of genotype (its self-check draws)
        genotype = next(stream)
        since += 1
        if unique and genotype.cells in seen:
            duplicates += 1
            continue
        if genotype.cells not in costs:
            costs[genotype.cells] = counter(genotype)
        flops, params = costs[genotype.cells]
        if match is not None and target is not None:
            value = flops if match == "flops" else params
            values.append(value)
            if abs(value - target) > tolerance * target:
                continue
        seen.add(genotype.cells)
        named = genotype.model_copy(update={"name": names[len(samples)]})
        samples.append(SampledGenotype(named, flops, params, since, settings))
        since = 0
        if len(samples) == n:
            return samples
    raise SamplingError(_shortfall(space, settings, len(samples), n, values, duplicates, stopped))


#: Draws before :func:`_hopeless` judges an acceptance rate.
HOPELESS_AFTER = 100


def _hopeless(found: int, drawn: int, max_draws: int, n: int) -> bool:
    """Whether ``n`` samples are out of reach: ``found`` in ``drawn`` draws, and even the rate
    ``(found + 3) / drawn`` (with no acceptance at all, the 95% upper bound of the rule of three) would not
    bring the rest in the ``max_draws - drawn`` draws left. Never before :data:`HOPELESS_AFTER` draws."""
    if drawn < HOPELESS_AFTER:
        return False
    return found + (found + 3) / drawn * (max_draws - drawn) < n


def _shortfall(space: SearchSpace, s: SampleSettings, found: int, n: int, values: list[int], duplicates: int,
               stopped: int | None = None) -> str:
    """Why ``n`` samples were not found in ``s.max_draws`` draws (or in ``stopped``, judged hopeless), and what
    to change."""
    head = f"found {found} of {n} genotypes of space '{space.name}' in {s.max_draws} draws"
    if stopped is not None:
        head = (f"found {found} of {n} genotypes of space '{space.name}' in {stopped} draws (stopped there: at "
                f"that rate, {s.max_draws} draws would not find {n})")
    if s.match is None or s.target is None or s.tolerance is None:
        return (f"{head}: the other draws repeated earlier samples; the space has few distinct valid "
                "architectures: ask for fewer, or allow duplicates (--allow-duplicates)")
    target, tol = s.target, s.tolerance
    seen = (f"the draws' {quantity(s.match)} ranged {describe(s.match, min(values))} to {describe(s.match, max(values))} "
            f"(median {describe(s.match, statistics.median(values))})" if values else "no draw was costed")
    misses = sorted(abs(v - target) / target for v in values)
    hint = "use a larger tolerance (--tolerance)"
    if len(misses) >= n:
        hint = f"a tolerance of {misses[n - 1] + 0.005:.2f} would have accepted {n} of these draws (--tolerance)"
    repeats = f"; {duplicates} draws repeated earlier samples" if duplicates else ""
    return (f"{head} with {quantity(s.match)} within {tol:.0%} of '{s.like}' ({describe(s.match, target)} at patch "
            f"{'x'.join(map(str, s.patch))}): {seen}{repeats}; {hint}, or draw more (--max-draws)")


def _space_text(space: SearchSpace, space_file: Path | None, signatures: Signatures) -> str:
    """The file's own text when it holds just this space (comments kept), else the canonical print."""
    from scnas_dsl.loader import load

    if space_file is None:
        return space_text(space, None, False)
    document = load(space_file, signatures).document
    alone = not document.imports and not document.genotypes and [s.name for s in document.spaces] == [space.name]
    return space_text(space, space_file.read_text(encoding="utf-8-sig"), alone)


def _genotype_file_text(sample: SampledGenotype, index: int, count: int) -> str:
    s, name = sample.settings, sample.genotype.name
    lines = [f"Random genotype {index + 1} of {count} of space '{s.space}', drawn by `scnas sample` (seed {s.seed}):",
             "one operation per edge, uniform over the edge's set; a cell without a live path was drawn again.",
             f"{_flops_text(sample.flops)} at patch {'x'.join(map(str, s.patch))}, {sample.params:,} parameters "
             f"(in_channels {s.in_channels}, classes {s.num_classes}, stem width {s.stem_width})."]
    if s.match is not None and s.tolerance is not None:
        lines.append(f"Matched to '{s.like}': {quantity(s.match)} within {s.tolerance:.0%} of "
                     f"{describe(s.match, s.target or 0)} ({sample.relative_difference:+.1%}).")
    lines.append(f"Train it with: scnas train {name}.scn --data DATA")
    return genotype_text(sample.genotype, "\n".join(lines), SPACE_FILE)


def _remove_earlier_samples(out: Path, kept: set[Path]) -> None:
    """With ``force``: the genotype files an earlier ``samples.json`` of ``out`` lists and this call does not
    rewrite are removed, so that the folder holds one sample set (a glob over it must not mix two)."""
    summary = out / SUMMARY_FILE
    if not summary.is_file():
        return
    try:
        earlier = json.loads(summary.read_text(encoding="utf-8")).get("samples", [])
    except (json.JSONDecodeError, AttributeError, OSError):
        return
    for entry in earlier:
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".scn"):
            continue  # only plain file names of this folder, never a path elsewhere
        path = out / name
        if path not in kept and path.is_file():
            path.unlink()


@holding("out_dir", "scnas sample")
def write_samples(space_file_or_space: str | Path | SearchSpace, samples: Sequence[SampledGenotype],
                  out_dir: str | Path, force: bool = False, library: Library | None = None) -> list[Path]:
    """Write ``samples`` into ``out_dir``: ``space.scn`` (the space: the file's own text when it holds only
    that space, else its canonical print), one ``<genotype name>.scn`` per sample importing it, and
    ``samples.json`` (settings, and each file with its FLOPs and parameters). Returns the genotype files.
    ``library``: the one the space needs (custom operations), so that the files are checked with it.

    Refuses (RunError) to replace any of these files unless ``force``; other files in ``out_dir`` stay."""
    from scnas_dsl.loader import load

    signatures = (library or default_library()).signatures

    if not samples:
        raise SamplingError("no samples to write")
    settings = samples[0].settings
    if isinstance(space_file_or_space, SearchSpace):
        space, space_file = space_file_or_space, None
    else:
        space_file = Path(space_file_or_space)
        space = load(space_file, signatures).space(settings.space)
    if space.name != settings.space:
        raise SamplingError(f"the samples are of space '{settings.space}', not '{space.name}'")
    out = Path(out_dir)
    files = {out / f"{s.genotype.name}.scn": s for s in samples}
    if len(files) < len(samples):
        raise SamplingError("two samples have the same genotype name: give each a name of its own")
    targets = [out / SPACE_FILE, *files, out / SUMMARY_FILE]
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        shown = ", ".join(p.name for p in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise RunError(f"{out}: {shown} exist{'s' if len(existing) == 1 else ''} already; pass --force "
                       "(force=True) to overwrite, or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    _remove_earlier_samples(out, set(files))
    write_text(out / SPACE_FILE, _space_text(space, space_file, signatures))
    for index, (path, sample) in enumerate(files.items()):
        write_text(path, _genotype_file_text(sample, index, len(samples)))
        try:
            loaded = load(path, signatures).genotype(sample.genotype.name)[1]
        except ScnasError as err:  # a bug of ours, not the user's: say so plainly
            raise ScnasError(f"{path}: the written genotype does not load back ({err}); please report this") from err
        if loaded != sample.genotype:
            raise ScnasError(f"{path}: the written genotype reads back differently; please report this")
    summary = {**settings.to_dict(), "space_file": SPACE_FILE,
               "flops": "one forward pass of one sample at the patch: convolutions, 2 FLOPs per multiply-add",
               "draws": sum(s.draws for s in samples),
               "samples": [{"file": p.name, "genotype": s.genotype.name, "flops": s.flops, "params": s.params,
                            "draws": s.draws, "relative_difference": s.relative_difference}
                           for p, s in files.items()]}
    write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return list(files)
