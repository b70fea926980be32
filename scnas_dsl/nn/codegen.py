"""A genotype as readable, standalone PyTorch source (imports torch only).

The file defines the library's operation classes it uses (their source is copied from
``scnas_dsl.ops.library``, so the two cannot drift apart; a class comes only with what refers to it), user
operation classes (copied too), one class per cell structure whose ``forward`` spells out the cell's
formula, and ``Network``, whose constructor arguments default to the values the file was compiled with.
Its ``state_dict`` keys are those of ``build_network``'s fixed network, so trained weights load into either
with ``strict=True`` and the outputs agree to floating-point precision. Class names come from user names
(cell types, user classes) through one name table: a name already taken gets a suffix (``_2``), so no two
definitions can share a name.
"""

from __future__ import annotations

import builtins
import inspect
import io
import keyword
import textwrap
import tokenize
from collections.abc import Mapping, Sequence
from typing import Any

from scnas_dsl import __version__
from scnas_dsl.errors import CompileError
from scnas_dsl.model import Genotype, SearchSpace
from scnas_dsl.nn.plan import STEM, CellPlan, build_plan, zero_op_names
from scnas_dsl.ops import library as lib
from scnas_dsl.ops.library import Library, default_library
from scnas_dsl.ops.signatures import ParamValue

# built-in operation -> (class, extra constructor keywords); pooling shares one class
_BUILTIN_CALLS: dict[str, tuple[str, dict[str, str]]] = {
    "conv": ("ConvOp", {}),
    "sep_conv": ("SepConvOp", {}),
    "dil_conv": ("ConvOp", {}),
    "max_pool": ("PoolOp", {"mode": "max"}),
    "avg_pool": ("PoolOp", {"mode": "avg"}),
    "identity": ("IdentityOp", {}),
    "zero": ("ZeroOp", {}),
    "conv_block": ("ConvBlock", {}),
    "res_block": ("ResBlock", {}),
    "logits": ("Logits", {}),
}

_HELPERS = (lib._ntuple, lib._same_padding, lib._conv, lib._norm, lib._cpu_kernels, lib._conv_call,
            lib._ChannelsLastConv, lib._depthwise_call)


_LIBRARY_DEFS: dict[str, Any] = {f.__name__: f for f in _HELPERS} | {c.__name__: c for c in lib.BUILTIN_CLASSES}
# names every generated file defines or imports (user classes and cells never take them)
_FILE_NAMES = frozenset({"annotations", "Any", "torch", "F", "nn", "LEAKY_SLOPE", "Edge", "Network"})


def _class_name(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in text.replace("[", "_").replace("]", "").split("_"))


class _Names:
    """The file's global names: a wanted name that is taken gets the first free suffix ``_2``, ``_3``, ..."""

    def __init__(self) -> None:
        self.taken = set(_FILE_NAMES) | set(_LIBRARY_DEFS) | set(dir(builtins))

    def claim(self, wanted: str) -> str:
        name, n = wanted, 2
        while name in self.taken or keyword.iskeyword(name):
            name, n = f"{wanted}_{n}", n + 1
        self.taken.add(name)
        return name


def _names_in(source: str) -> set[str]:
    """The identifiers of ``source`` (not those in strings or comments, nor attributes after a dot)."""
    found, prev = set(), ""
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and prev != ".":
            found.add(tok.string)
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            prev = tok.string
    return found


def _rename(source: str, old: str, new: str) -> str:
    """``source`` with the identifier ``old`` (not in strings, comments or after a dot) spelt ``new``."""
    if old == new:
        return source
    out, prev = [], ""
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.string == old and prev != ".":
            tok = tok._replace(string=new)  # noqa: PLW2901 - untokenize keeps the original columns
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            prev = tok.string
        out.append(tok)
    return tokenize.untokenize(out)


def _library_source(body: str) -> str:
    """The library helpers and classes that ``body`` refers to, with what they refer to in turn, in the
    library's order."""
    need, todo = set(), list(_names_in(body) & _LIBRARY_DEFS.keys())
    while todo:
        name = todo.pop()
        if name not in need:
            need.add(name)
            todo += _names_in(inspect.getsource(_LIBRARY_DEFS[name])) & _LIBRARY_DEFS.keys()
    return "\n\n".join(inspect.getsource(obj) for name, obj in _LIBRARY_DEFS.items() if name in need)


class _Emitter:
    def __init__(self, library: Library) -> None:
        self.library = library
        self.names = _Names()
        self.custom: dict[object, tuple[str, str]] = {}  # user class -> (its name in the file, source)
        self.cells: dict[str, str] = {}  # structure key -> class name

    def cell_class(self, key: str) -> str:
        if key not in self.cells:
            self.cells[key] = self.names.claim(_class_name("cell_" + key))
        return self.cells[key]

    def call(self, kind: str, params: Mapping[str, ParamValue], c_in: str, c_out: str, stride: int,
             dims: int) -> str:
        """Source of the constructor call that ``Library.build`` would make."""
        signature = self.library.signatures.get(kind)
        if signature is None:
            raise CompileError(f"no factory for operation '{kind}'")
        args = dict(signature.resolve(params))
        factory = self.library.factories[kind]
        if kind in _BUILTIN_CALLS and factory is lib.default_library().factories[kind]:
            cls, extra = _BUILTIN_CALLS[kind]
            extra_args = [f"{k}={v!r}" for k, v in extra.items()]
        else:
            if not inspect.isclass(factory):
                raise CompileError(
                    f"operation '{kind}' is registered with a function; code generation needs an nn.Module "
                    f"class taking (c_in, c_out, stride, dims, **params) whose source is self-contained"
                )
            if factory not in self.custom:
                try:
                    source = textwrap.dedent(inspect.getsource(factory))
                except (OSError, TypeError) as err:
                    raise CompileError(
                        f"cannot read the source of operation '{kind}' ({factory!r}): {err}") from err
                name = self.names.claim(factory.__name__)
                self.custom[factory] = (name, _rename(source, factory.__name__, name))
            cls, extra_args = self.custom[factory][0], []
        kwargs = [f"{k}={v!r}" for k, v in args.items()] + extra_args
        return f"{cls}({', '.join([c_in, c_out, str(stride), str(dims), *kwargs])})"


def _count(cp: CellPlan) -> int:
    return len(cp.output_nodes) if cp.spec.output.kind == "concat" else 1


def _node_width_expr(cp: CellPlan, mode: str) -> str:
    """The node width as an expression of the level widths ``w`` (the plan's ``node_width``)."""
    count = _count(cp)
    return f"-(-w[{cp.out_level}] // {count})" if mode == "split" and count > 1 else f"w[{cp.out_level}]"


def _out_width_expr(cp: CellPlan, mode: str) -> str:
    count = _count(cp)
    node = _node_width_expr(cp, mode)
    return node if count == 1 else f"{count} * {node}"


def _cell_class(cp: CellPlan, space: SearchSpace, emitter: _Emitter, dims: int, genotype: Genotype,
                gated: bool) -> list[str]:
    spec = cp.spec
    opset = space.opset(spec.ops)
    assert opset is not None
    zeros = zero_op_names(space, spec)
    chosen = genotype.cell(cp.key).chosen()  # type: ignore[union-attr]
    used = [i.name for i in cp.used_inputs()]
    last = f"in{spec.inputs - 1}"
    lines = [
        f"class {emitter.cell_class(cp.key)}(nn.Module):",
        f'    """Cell structure \'{cp.key}\' ({spec.role} cell \'{spec.name}\'): {len(cp.nodes)} live nodes, '
        f'output {spec.output.kind} of {", ".join(cp.output_nodes)}."""',
        "",
        "    def __init__(self, width: int, in_widths: tuple[int, ...], factors: tuple[float, ...],",
        "                 skip_width: int | None = None, gate: tuple[int, int] | None = None) -> None:",
        "        super().__init__()",
        "        self.pre = nn.ModuleDict({",
    ]
    for name in used:
        j = int(name[2:])
        lines.append(f'            "{name}": Resample(in_widths[{j}], width, factors[{j}], {dims}),')
    lines.append("        })")
    if last in used:
        lines += [
            "        # decoder: the previous cell's output plus the encoder output of its level",
            "        self.skip = (Projection(skip_width, in_widths[-1], 1, "
            f"{dims}) if skip_width is not None and skip_width != in_widths[-1] else None)",
        ]
        lines += [
            "        # skips attention: (gating width, factor) of the attention gate that scales the skip",
            f"        self.gate = (AttentionGate(skip_width, gate[0], gate[1], {dims})",
            "                     if gate is not None and skip_width is not None else None)",
        ] if gated else ["        self.gate = None  # no attention gate in this structure"]
    else:
        lines += ["        self.skip = None", "        self.gate = None"]
    lines.append("        self.edges = nn.ModuleDict({")
    for src, dst in cp.edges:
        op = chosen[(src, dst)]
        if op in zeros:
            continue
        call = opset.get(op).call  # type: ignore[union-attr]
        ctor = emitter.call(call.kind, call.kwargs(), "width", "width", cp.stride(src), dims)
        lines.append(f'            "{src}_{dst}": Edge({{"{op}": {ctor}}}),')
    lines += ["        })", "",
              "    def forward(self, inputs: list[torch.Tensor], skip: torch.Tensor | None,",
              "                gating: torch.Tensor | None = None) -> torch.Tensor:",
              f"        {', '.join(spec.input_names())}{',' if spec.inputs == 1 else ''} = inputs"]
    if last in used:
        lines += ["        if skip is not None:",
                  "            if self.gate is not None:",
                  "                skip = self.gate(skip, gating)",
                  f"            {last} = {last} + (skip if self.skip is None else self.skip(skip))"]
    for name in used:
        lines.append(f'        {name} = self.pre["{name}"]({name})')
    for node in cp.nodes:
        terms = [f'self.edges["{s}_{d}"].ops["{chosen[(s, d)]}"]({s})' for s, d in cp.edges if d == node]
        lines.append(f"        {node} = {' + '.join(terms)}")
    outs = list(cp.output_nodes)
    kind = spec.output.kind
    if kind == "concat" and len(outs) > 1:
        lines.append(f"        return torch.cat([{', '.join(outs)}], dim=1)")
    else:
        lines.append(f"        return {' + '.join(outs) if kind != 'node' else outs[0]}")
    return lines


def emit_torch(space: SearchSpace, genotype: Genotype, *, in_channels: int, num_classes: int,
               stem_width: int | None = None, library: Library | None = None,
               deep_supervision: bool | Sequence[int] | None = None) -> str:
    """Standalone PyTorch source for ``genotype`` of ``space``: a class ``Network`` (constructor arguments
    default to ``in_channels``, ``num_classes``, ``stem_width``) with the same ``state_dict`` keys and
    outputs as ``build_network(space, genotype, ...)``."""
    library = library or default_library()
    plan = build_plan(space, stem_width=stem_width, genotype=genotype, deep_supervision=deep_supervision)
    emitter = _Emitter(library)
    dims = plan.dims
    unet = space.unet

    cell_classes: list[str] = []
    seen: set[str] = set()
    gated = {cp.key for cp in plan.cells if cp.gate is not None}
    for cp in plan.cells:
        if cp.key not in seen:
            seen.add(cp.key)
            cell_classes += _cell_class(cp, space, emitter, dims, genotype, cp.key in gated) + ["", ""]

    stem = emitter.call(unet.stem.call.kind, unet.stem.call.kwargs(), "in_channels", "w[0]", 1, dims)
    mode = unet.node_width
    head = emitter.call(unet.head.call.kind, unet.head.call.kwargs(), _out_width_expr(plan.cells[-1], mode)
                        if plan.cells else "w[0]", "num_classes", 1, dims)
    out_names = {STEM: "stem"} | {cp.index: f"c{cp.index}" for cp in plan.cells}
    width_of = {STEM: "w[0]"} | {cp.index: _out_width_expr(cp, mode) for cp in plan.cells}
    init_cells, forward = [], ["        stem = self.stem(x)"]
    last_use = plan.last_use(heads=True)  # the deep-supervision heads read their levels at the end
    for cp in plan.cells:
        in_widths = ", ".join(width_of[i.source] for i in cp.inputs) + ("," if len(cp.inputs) == 1 else "")
        factors = ", ".join(repr(i.factor) for i in cp.inputs) + ("," if len(cp.inputs) == 1 else "")
        skip_w = width_of[cp.skip.source] if cp.skip is not None else "None"
        gate = f", ({width_of[cp.gate.source]}, {cp.gate.factor})" if cp.gate is not None else ""
        init_cells.append(
            f"            {emitter.cell_class(cp.key)}({_node_width_expr(cp, mode)}, ({in_widths}), ({factors}), "
            f"{skip_w}{gate}),  # {cp.index}: {cp.instance}, level {cp.in_level} -> {cp.out_level}"
        )
        inputs = ", ".join(out_names[i.source] for i in cp.inputs)
        skip = out_names[cp.skip.source] if cp.skip is not None else "None"
        gating = f", {out_names[cp.gate.source]}" if cp.gate is not None else ""
        forward.append(f"        c{cp.index} = self.cells[{cp.index}]([{inputs}], {skip}{gating})")
        done = [out_names[s] for s, last in last_use.items() if last == cp.index and s != plan.out_source]
        if done:  # frees memory at inference, where nothing else holds these tensors
            forward.append(f"        del {', '.join(done)}")
    forward.append(f"        logits = self.head({out_names[plan.out_source]})")
    if plan.heads:
        outs = ", ".join(f'self.ds_heads["{h.level}"]({out_names[h.source]})' for h in plan.heads)
        forward += ["        if self.deep_supervision:  # training: [logits, coarser levels' logits ...]",
                    f"            return [logits, {outs}]"]
    forward.append("        return logits")
    heads = [emitter.call(unet.head.call.kind, unet.head.call.kwargs(), width_of[h.source], "num_classes", 1, dims)
             for h in plan.heads]
    init_heads = [f'            "{h.level}": {ctor},' for h, ctor in zip(plan.heads, heads, strict=True)]

    custom = "\n\n".join(source for _, source in emitter.custom.values())
    stem_w = plan.stem_width
    header = f'''"""Network '{genotype.name}' of space '{space.name}', generated by scnas {__version__}.

Standalone PyTorch (imports torch only): ``Network()`` builds the compiled network
(in_channels={in_channels}, num_classes={num_classes}, stem_width={stem_w}); its state_dict keys are those of
scnas' fixed network, so weights load into either with strict=True.
Input (B, in_channels, {", ".join("DHW"[3 - dims:])}) with every spatial size divisible by {2 ** plan.levels}.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = {lib.LEAKY_SLOPE!r}
'''
    edge_class = '''class Edge(nn.Module):
    """One edge of a cell: its chosen operation under ``ops`` (the key layout of scnas' supernet)."""

    def __init__(self, ops: dict[str, nn.Module]) -> None:
        super().__init__()
        self.ops = nn.ModuleDict(ops)
'''
    network = [
        "class Network(nn.Module):",
        f'    """{genotype.name}: stem, {len(plan.cells)} cells, head. '
        f'(B, in_channels, *S) -> (B, num_classes, *S)."""',
        "",
        f"    def __init__(self, in_channels: int = {in_channels}, num_classes: int = {num_classes}, "
        f"stem_width: int = {stem_w}) -> None:",
        "        super().__init__()",
        f"        w = [stem_width * {unet.width_factor}**level for level in range({plan.levels + 1})]",
        f"        self.stem = {stem}",
        f"        self.head = {head}",
        "        self.cells = nn.ModuleList([",
        *init_cells,
        "        ])",
        f"        # deep supervision: a head per level{' (' + ', '.join(str(h.level) for h in plan.heads) + ')' if plan.heads else ' (none)'}; "
        "forward returns their logits too while this is True",
        "        self.ds_heads = nn.ModuleDict({",
        *init_heads,
        "        })",
        "        self.deep_supervision = False",
        "",
        "    def forward(self, x: torch.Tensor) -> Any:",
        f"        if any(s % {2 ** plan.levels} for s in x.shape[2:]):",
        f'            raise ValueError(f"spatial size {{tuple(x.shape[2:])}} is not divisible by '
        f'{2 ** plan.levels}")',
        *forward,
    ]
    body = [edge_class, "\n".join(cell_classes).rstrip() + "\n", "\n".join(network) + "\n"]
    if custom:
        body.insert(0, custom)
    parts = [header, _library_source("\n".join(body)), *body]
    return "\n\n".join(p.rstrip("\n") + "\n" for p in parts)
