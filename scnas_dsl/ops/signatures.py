"""Names and declared parameters of every library operation: the one table that the checker and the
compiler share. No torch here (the front end must stay torch-free).

A parameter value in a ``.scn`` file is an int, a float, a bool, a name (str) or a tuple of ints
(anisotropic kernels such as ``kernel=(3,3,1)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

ParamValue = int | float | bool | str | tuple[int, ...]
ParamKind = Literal["int", "float", "bool", "name", "kernel"]


@dataclass(frozen=True)
class ParamDecl:
    """One declared parameter of a library operation.

    ``kind == "kernel"`` accepts an int or a tuple of ints with one entry per spatial dimension; ``odd``
    requires every entry to be odd (so that "same" padding exists). ``default is None`` means required.
    """

    name: str
    kind: ParamKind
    default: ParamValue | None = None
    minimum: float | None = None
    maximum: float | None = None
    odd: bool = False
    choices: tuple[str, ...] | None = None
    doc: str = ""

    def check(self, value: ParamValue, dims: int | None) -> str | None:
        """The problem with ``value`` for this parameter, or None when it is fine."""
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"'{self.name}' takes true or false, not {_show(value)}"
        if self.kind == "name":
            if not isinstance(value, str):
                return f"'{self.name}' takes a name, not {_show(value)}"
            if self.choices is not None and value not in self.choices:
                return f"'{self.name}' must be one of {', '.join(self.choices)}, not '{value}'"
            return None
        if self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"'{self.name}' takes a number, not {_show(value)}"
            return self._range(float(value))
        # int and kernel
        entries: tuple[object, ...]
        if isinstance(value, tuple):
            if self.kind != "kernel":
                return f"'{self.name}' takes a whole number, not a tuple"
            if dims is not None and len(value) != dims:
                return (
                    f"'{self.name}' has {len(value)} entries but the network is {dims}D: "
                    f"give {dims} entries or a single number"
                )
            entries = value
        else:
            entries = (value,)
        for entry in entries:
            if isinstance(entry, bool) or not isinstance(entry, int):
                return f"'{self.name}' takes whole numbers, not {_show(entry)}"
            problem = self._range(entry)
            if problem:
                return problem
            if self.odd and entry % 2 == 0:
                return f"'{self.name}' must be odd (got {entry}): an even {self.name} has no centred padding"
        return None

    def _range(self, number: float) -> str | None:
        if self.minimum is not None and number < self.minimum:
            return f"'{self.name}' must be at least {_num(self.minimum)} (got {_num(number)})"
        if self.maximum is not None and number > self.maximum:
            return f"'{self.name}' must be at most {_num(self.maximum)} (got {_num(number)})"
        return None


@dataclass(frozen=True)
class OpSignature:
    """A library operation's name, parameters and one-line description.

    ``parametric``: whether the operation has weights (False for pooling, identity and zero); the
    compiler uses it to decide when a width change needs a projection.
    ``block``: a fixed U-Net block (a stem or a head), never a candidate on a cell's edge.
    """

    name: str
    params: tuple[ParamDecl, ...] = ()
    doc: str = ""
    parametric: bool = True
    block: bool = False

    def param(self, name: str) -> ParamDecl | None:
        for decl in self.params:
            if decl.name == name:
                return decl
        return None

    def problems(self, args: Mapping[str, ParamValue], dims: int | None = None) -> list[tuple[str | None, str]]:
        """Every problem of ``args`` against this signature, as (parameter name or None, message)."""
        found: list[tuple[str | None, str]] = []
        for name, value in args.items():
            decl = self.param(name)
            if decl is None:
                known = ", ".join(d.name for d in self.params) or "none"
                found.append((name, f"'{self.name}' has no parameter '{name}' (its parameters: {known})"))
                continue
            problem = decl.check(value, dims)
            if problem:
                found.append((name, problem))
        for decl in self.params:
            if decl.default is None and decl.name not in args:
                found.append((None, f"'{self.name}' needs the parameter '{decl.name}'"))
        return found

    def resolve(self, args: Mapping[str, ParamValue]) -> dict[str, ParamValue]:
        """``args`` completed with the declared defaults (call only on checked arguments)."""
        out: dict[str, ParamValue] = {d.name: d.default for d in self.params if d.default is not None}
        out.update(args)
        return out


@dataclass(frozen=True)
class Signatures:
    """An immutable table of operation signatures. ``extend`` returns a new table (no global registry)."""

    ops: tuple[OpSignature, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [op.name for op in self.ops]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"operation names declared twice: {', '.join(dupes)}")

    def get(self, name: str) -> OpSignature | None:
        for op in self.ops:
            if op.name == name:
                return op
        return None

    def __contains__(self, name: object) -> bool:
        return any(op.name == name for op in self.ops)

    def __iter__(self) -> Iterator[OpSignature]:
        return iter(self.ops)

    def names(self) -> list[str]:
        return [op.name for op in self.ops]

    def extend(self, extra: Iterable[OpSignature]) -> Signatures:
        return Signatures(self.ops + tuple(extra))


_KERNEL = ParamDecl("kernel", "kernel", default=3, minimum=1, maximum=15, odd=True,
                    doc="window size: an odd number, or one odd number per dimension such as (3,3,1)")
_DILATION = ParamDecl("dilation", "kernel", default=1, minimum=1, maximum=16,
                      doc="spacing between kernel taps: a number, or one per dimension")

LIBRARY_SIGNATURES = Signatures(
    (
        OpSignature(
            "conv", (_KERNEL, _DILATION),
            "LeakyReLU -> convolution -> instance norm (the paper's 3x3x3 convolution with kernel=3)",
        ),
        OpSignature(
            "sep_conv", (_KERNEL, _DILATION),
            "LeakyReLU -> depthwise convolution (dilated) -> pointwise 1x1 convolution -> instance norm",
        ),
        OpSignature(
            "dil_conv",
            (_KERNEL, ParamDecl("dilation", "kernel", default=2, minimum=1, maximum=16,
                                doc="spacing between kernel taps")),
            "LeakyReLU -> dilated (full, not separable) convolution -> instance norm",
        ),
        OpSignature("max_pool", (_KERNEL,), "max pooling (followed by a 1x1 projection if widths differ)",
                    parametric=False),
        OpSignature("avg_pool", (_KERNEL,), "average pooling (followed by a 1x1 projection if widths differ)",
                    parametric=False),
        OpSignature("identity", (), "the input itself (a strided 1x1 projection on resizing edges)",
                    parametric=False),
        OpSignature("zero", (), "no connection: the edge is cut", parametric=False),
        OpSignature(
            "conv_block",
            (_KERNEL, ParamDecl("repeats", "int", default=2, minimum=1, maximum=8,
                                doc="how many convolution -> norm -> LeakyReLU layers")),
            "fixed block for stems: (convolution -> instance norm -> LeakyReLU) x repeats", block=True,
        ),
        OpSignature(
            "res_block", (_KERNEL,),
            "fixed residual block for stems: two conv-norm layers with a 1x1 shortcut", block=True,
        ),
        OpSignature(
            "logits", (ParamDecl("kernel", "kernel", default=1, minimum=1, maximum=15, odd=True,
                                 doc="window size of the final convolution"),),
            "fixed block for heads: one convolution with bias giving the class scores", block=True,
        ),
    )
)
"""The operations scnas ships. ``scnas_dsl.ops.library`` has one factory for each name here."""


def _show(value: object) -> str:
    if isinstance(value, str):
        return f"the name '{value}'"
    if isinstance(value, bool):  # as written in a .scn file, not Python's True/False
        return "true" if value else "false"
    return repr(value)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
