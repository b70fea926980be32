"""The operation library: one torch module class (the factory) per name in ``signatures.LIBRARY_SIGNATURES``.

Every factory is called as ``factory(c_in, c_out, stride, dims, **params)`` where ``params`` are the
operation's declared parameters completed with their defaults, and returns an ``nn.Module`` mapping
``(B, c_in, *spatial)`` to ``(B, c_out, *ceil(spatial / stride))``. One definition serves 2D and 3D: the
class picks ``Conv2d``/``Conv3d`` (and the matching norm and pooling) from ``dims``.

The classes here import only torch and refer only to each other and to the helpers of this module, because
``scnas_dsl.nn.codegen`` copies their source into standalone generated files.

An operation that starts with ``leaky_relu(x, LEAKY_SLOPE)`` declares ``activates_input = True`` and takes
``forward(h, activated=True)`` with ``h`` already activated: a cell computes the activation once per state
for all such operations on its outgoing edges (one copy kept for backward instead of one per operation).
Operations without the attribute are always called as ``op(x)``.

Users add an operation without editing scnas: ``default_library().register(signature, factory)`` returns a
new library (there is no global registry), which ``build_supernet``/``build_network`` accept as
``library=`` and whose ``signatures`` the ``.scn`` checker reads. See ``examples/custom_operation.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scnas_dsl.errors import CompileError
from scnas_dsl.ops.signatures import LIBRARY_SIGNATURES, OpSignature, ParamValue, Signatures

LEAKY_SLOPE = 0.01


def _ntuple(value: Any, dims: int) -> tuple[int, ...]:
    """An int or a per-dimension tuple as a tuple of ``dims`` ints."""
    if isinstance(value, (tuple, list)):
        return tuple(int(v) for v in value)
    return (int(value),) * dims


def _same_padding(kernel: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...]:
    # odd kernels only (the signature table enforces it), so this padding keeps the size at stride 1
    return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))


def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv3d if dims == 3 else nn.Conv2d


def _norm(dims: int, channels: int) -> nn.Module:
    # affine=True: the per-channel scale and shift are part of the operation's weights
    return (nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d)(channels, affine=True)


def _cpu_kernels(x: torch.Tensor) -> bool:
    """Whether ``x`` takes the CPU kernels of :func:`_conv_call` and :func:`_depthwise_call`: a float32 5-D
    (3D) tensor on the CPU with oneDNN built in, outside autocast, tracing, scripting, ONNX export,
    ``torch.compile`` and dispatch modes (e.g. the FLOP counter, which counts ``aten.convolution`` only).
    Everywhere else (CUDA, 2D, other dtypes) the plain torch call runs."""
    if x.dim() != 5 or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return False
    from torch.utils._python_dispatch import is_in_torch_dispatch_mode

    try:
        autocast = torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device
        autocast = torch.is_autocast_cpu_enabled()
    compiling = getattr(torch.compiler, "is_compiling", lambda: False)()
    mkldnn = torch.backends.mkldnn.is_available() and bool(torch.backends.mkldnn.enabled)  # a user's switch kept
    return mkldnn and not (autocast or compiling or is_in_torch_dispatch_mode())


def _conv_call(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``; on the CPU (see :func:`_cpu_kernels`) straight through oneDNN: for 3D convolutions with
    few channels ATen picks its im2col ``slow_conv3d`` (a size threshold written for 2D), 4x slower forward
    here. Same result up to the summation order (about 1e-6), same autograd. Modules with hooks, and cases
    oneDNN refuses, take the plain call."""
    if (_cpu_kernels(x) and isinstance(conv, nn.Conv3d) and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple) and conv.weight.dtype == torch.float32
            and not (conv._forward_hooks or conv._forward_pre_hooks)):
        try:
            return torch.mkldnn_convolution(x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation,
                                            conv.groups)
        except RuntimeError:  # a case this build of oneDNN does not support
            pass
    return conv(x)  # type: ignore[no-any-return]


class _ChannelsLastConv(torch.autograd.Function):
    """A 3D convolution run on ``channels_last_3d`` (NDHWC) copies, result and gradients in the standard
    layout: oneDNN's depthwise kernels are about 2x faster on NDHWC than on NCDHW at few channels. Only the
    NCDHW input is kept for backward (in a cell, the shared activation, kept anyway), and backward makes its
    NDHWC copy again, so the layout costs no memory beyond the step's transients.
    ``apply(x, weight, stride, padding, dilation, groups)``, no bias."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, stride: Any, padding: Any, dilation: Any,
                groups: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups)
        nhwc = x.contiguous(memory_format=torch.channels_last_3d)
        return F.conv3d(nhwc, weight, None, stride, padding, dilation, groups).contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        layout = torch.channels_last_3d
        gx, gw, _ = torch.ops.aten.convolution_backward(
            grad.contiguous(memory_format=layout), x.contiguous(memory_format=layout), weight, None, stride,
            padding, dilation, False, [0] * len(stride), groups, [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                                                                  False])
        gx = None if gx is None else gx.contiguous()
        gw = None if gw is None else gw.contiguous()
        return gx, gw, None, None, None, None


def _depthwise_call(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a depthwise convolution; on the CPU (see :func:`_cpu_kernels`) computed on
    ``channels_last_3d`` copies (:class:`_ChannelsLastConv`), identical result. Modules with hooks take the
    plain call."""
    if (_cpu_kernels(x) and isinstance(conv, nn.Conv3d) and conv.padding_mode == "zeros" and conv.bias is None
            and isinstance(conv.padding, tuple) and conv.weight.dtype == torch.float32
            and not (conv._forward_hooks or conv._forward_pre_hooks)):
        return _ChannelsLastConv.apply(x, conv.weight, conv.stride, conv.padding, conv.dilation,  # type: ignore[no-any-return]
                                       conv.groups)
    return conv(x)  # type: ignore[no-any-return]


class Projection(nn.Module):
    """LeakyReLU -> 1x1 convolution (with ``stride``) -> instance norm: brings a tensor to ``c_out``
    channels. Used for cell inputs, decoder skip sums, identity on resizing edges and pooling with a width
    change. ``(B, c_in, *S) -> (B, c_out, *ceil(S / stride))``."""

    #: starts with LeakyReLU of its input: ``forward(h, activated=True)`` takes the input already activated
    #: (a cell computes it once per state for every operation that starts so, instead of one copy each)
    activates_input = True

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dims: int = 3) -> None:
        super().__init__()
        self.conv = _conv(dims)(c_in, c_out, 1, stride=stride, bias=False)
        self.norm = _norm(dims, c_out)

    def forward(self, x: torch.Tensor, activated: bool = False) -> torch.Tensor:
        """``activated``: ``x`` is already ``leaky_relu(input, LEAKY_SLOPE)`` (see ``activates_input``)."""
        h = x if activated else F.leaky_relu(x, LEAKY_SLOPE)
        return self.norm(self.conv(h))


class ConvOp(nn.Module):
    """``conv`` / ``dil_conv``: LeakyReLU -> convolution (any odd kernel, dilation, stride) -> instance
    norm. ``(B, c_in, *S) -> (B, c_out, *ceil(S / stride))``."""

    activates_input = True  # see Projection

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dims: int = 3, kernel: Any = 3,
                 dilation: Any = 1) -> None:
        super().__init__()
        k, d = _ntuple(kernel, dims), _ntuple(dilation, dims)
        self.conv = _conv(dims)(c_in, c_out, k, stride=stride, padding=_same_padding(k, d), dilation=d,
                                bias=False)
        self.norm = _norm(dims, c_out)

    def forward(self, x: torch.Tensor, activated: bool = False) -> torch.Tensor:
        """``activated``: ``x`` is already ``leaky_relu(input, LEAKY_SLOPE)`` (see ``activates_input``)."""
        h = x if activated else F.leaky_relu(x, LEAKY_SLOPE)
        return self.norm(_conv_call(self.conv, h))


class SepConvOp(nn.Module):
    """``sep_conv``: LeakyReLU -> depthwise convolution (dilated, strided) -> pointwise 1x1 convolution ->
    instance norm. ``(B, c_in, *S) -> (B, c_out, *ceil(S / stride))``."""

    activates_input = True  # see Projection

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dims: int = 3, kernel: Any = 3,
                 dilation: Any = 1) -> None:
        super().__init__()
        k, d = _ntuple(kernel, dims), _ntuple(dilation, dims)
        conv = _conv(dims)
        self.depthwise = conv(c_in, c_in, k, stride=stride, padding=_same_padding(k, d), dilation=d,
                              groups=c_in, bias=False)
        self.pointwise = conv(c_in, c_out, 1, bias=False)
        self.norm = _norm(dims, c_out)

    def forward(self, x: torch.Tensor, activated: bool = False) -> torch.Tensor:
        """``activated``: ``x`` is already ``leaky_relu(input, LEAKY_SLOPE)`` (see ``activates_input``)."""
        h = x if activated else F.leaky_relu(x, LEAKY_SLOPE)
        return self.norm(self.pointwise(_depthwise_call(self.depthwise, h)))


class PoolOp(nn.Module):
    """``max_pool`` / ``avg_pool``: pooling over a ``kernel`` window with ``stride`` (so on a reduction
    edge it pools with stride 2), then a 1x1 projection only if the widths differ. Average pooling ignores
    the padding. ``(B, c_in, *S) -> (B, c_out, *ceil(S / stride))``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dims: int = 3, kernel: Any = 3,
                 mode: str = "max") -> None:
        super().__init__()
        k = _ntuple(kernel, dims)
        pad = _same_padding(k, (1,) * dims)
        pool: Any
        if mode == "max":
            pool = nn.MaxPool3d if dims == 3 else nn.MaxPool2d
            self.pool: nn.Module = pool(k, stride, pad)
        else:
            pool = nn.AvgPool3d if dims == 3 else nn.AvgPool2d
            self.pool = pool(k, stride, pad, count_include_pad=False)
        self.project = Projection(c_in, c_out, 1, dims) if c_in != c_out else None
        self.window, self.stride, self.pad, self.average = k, stride, pad, mode != "max"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.average and x.dim() == 5 and any(s < k for s, k in zip(x.shape[2:], self.window, strict=True)):
            x = self._small_average(x)
        else:
            x = self.pool(x)
        return x if self.project is None else self.project(x)

    def _small_average(self, x: torch.Tensor) -> torch.Tensor:
        # avg_pool3d refuses inputs smaller than the window even when the padding covers it (avg_pool2d
        # and max pooling accept them): pad by hand and divide by the count of real voxels instead
        pad = [p for q in reversed(self.pad) for p in (q, q)]
        total = F.avg_pool3d(F.pad(x, pad), self.window, self.stride, divisor_override=1)
        ones = F.pad(x.new_ones((1, 1, *x.shape[2:])), pad)
        return total / F.avg_pool3d(ones, self.window, self.stride, divisor_override=1)


class IdentityOp(nn.Module):
    """``identity``: the input itself; on a resizing edge (stride 2) or a width change, a strided 1x1
    projection instead. ``(B, c_in, *S) -> (B, c_out, *ceil(S / stride))``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dims: int = 3) -> None:
        super().__init__()
        self.project = Projection(c_in, c_out, stride, dims) if (stride != 1 or c_in != c_out) else None
        # only the projection starts with LeakyReLU (see Projection); the plain identity does not
        self.activates_input = self.project is not None

    def forward(self, x: torch.Tensor, activated: bool = False) -> torch.Tensor:
        """``activated`` (only with a projection, see ``activates_input``): ``x`` is already activated."""
        return x if self.project is None else self.project(x, activated)


class ZeroOp(nn.Module):
    """``zero``: no connection. Networks never call it (a zero edge is cut and costs nothing); the module
    exists so that the operation behaves like any other when used alone. Returns zeros of shape
    ``(B, c_out, *ceil(S / stride))``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dims: int = 3) -> None:
        super().__init__()
        self.c_out, self.stride = c_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = [-(-s // self.stride) for s in x.shape[2:]]
        return x.new_zeros((x.shape[0], self.c_out, *spatial))


class ConvBlock(nn.Module):
    """``conv_block`` (stems): ``repeats`` x (convolution -> instance norm -> LeakyReLU); the first
    convolution carries the stride. ``(B, c_in, *S) -> (B, c_out, *ceil(S / stride))``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dims: int = 3, kernel: Any = 3,
                 repeats: int = 2) -> None:
        super().__init__()
        k = _ntuple(kernel, dims)
        pad = _same_padding(k, (1,) * dims)
        layers: list[nn.Module] = []
        for i in range(repeats):
            layers += [
                _conv(dims)(c_in if i == 0 else c_out, c_out, k, stride=stride if i == 0 else 1, padding=pad,
                            bias=False),
                _norm(dims, c_out),
                # in place: the norm's output is a fresh tensor its backward does not need (saves one
                # full-resolution activation per repeat)
                nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:  # the convolutions through _conv_call (oneDNN on the CPU)
            x = _conv_call(layer, x) if isinstance(layer, nn.Conv3d) else layer(x)
        return x


class ResBlock(nn.Module):
    """``res_block`` (stems, U-ResNet): conv -> norm -> LeakyReLU -> conv -> norm, plus a shortcut (a 1x1
    convolution -> norm when the width or size changes), then LeakyReLU.
    ``(B, c_in, *S) -> (B, c_out, *ceil(S / stride))``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dims: int = 3, kernel: Any = 3) -> None:
        super().__init__()
        k = _ntuple(kernel, dims)
        pad = _same_padding(k, (1,) * dims)
        conv = _conv(dims)
        self.conv1 = conv(c_in, c_out, k, stride=stride, padding=pad, bias=False)
        self.norm1 = _norm(dims, c_out)
        self.conv2 = conv(c_out, c_out, k, padding=pad, bias=False)
        self.norm2 = _norm(dims, c_out)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(conv(c_in, c_out, 1, stride=stride, bias=False), _norm(dims, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place on fresh tensors whose producers' backward does not need them (less memory kept)
        y = F.leaky_relu(self.norm1(self.conv1(x)), LEAKY_SLOPE, inplace=True)
        y = self.norm2(self.conv2(y))
        return F.leaky_relu(y + (x if self.shortcut is None else self.shortcut(x)), LEAKY_SLOPE, inplace=True)


class Logits(nn.Module):
    """``logits`` (heads): one convolution with bias giving the class scores (no norm, no activation).
    ``(B, c_in, *S) -> (B, c_out, *ceil(S / stride))``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dims: int = 3, kernel: Any = 1) -> None:
        super().__init__()
        k = _ntuple(kernel, dims)
        self.conv = _conv(dims)(c_in, c_out, k, stride=stride, padding=_same_padding(k, (1,) * dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Resample(nn.Module):
    """Brings a cell input from the level it was made at to the level the cell reads it at, then to the
    cell's node width: ``factor > 1`` up-samples (trilinear / bilinear, align_corners=False), ``factor < 1``
    down-samples by average pooling over 1/factor windows; then a :class:`Projection`.
    ``(B, c_in, *S) -> (B, c_out, *(S * factor))``."""

    def __init__(self, c_in: int, c_out: int, factor: float = 1, dims: int = 3) -> None:
        super().__init__()
        self.factor, self.dims = factor, dims
        self.project = Projection(c_in, c_out, 1, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factor > 1:
            mode = "trilinear" if self.dims == 3 else "bilinear"
            x = F.interpolate(x, scale_factor=float(self.factor), mode=mode, align_corners=False)
        elif self.factor < 1:
            window = round(1 / self.factor)
            x = (F.avg_pool3d if self.dims == 3 else F.avg_pool2d)(x, window)
        return self.project(x)


class AttentionGate(nn.Module):
    """An additive attention gate on a decoder skip (Oktay et al. 2018, "Attention U-Net"): coefficients
    ``a = sigmoid(psi(relu(theta(x) + phi(g))))`` in (0, 1), one per voxel, scale the skip ``x``. ``theta`` is a
    convolution of kernel and stride ``factor`` that brings ``x`` to the resolution of the gating signal ``g``
    (``factor`` 2: ``g`` is one level coarser; 1: the same level), ``phi`` and ``psi`` are 1x1 convolutions,
    the intermediate width is half the skip's, and ``a`` is up-sampled (trilinear / bilinear) back to ``x``'s
    size. ``(x: (B, c_skip, *S), g: (B, c_gate, *S / factor)) -> (B, c_skip, *S)``."""

    def __init__(self, c_skip: int, c_gate: int, factor: int = 2, dims: int = 3) -> None:
        super().__init__()
        inner = max(1, c_skip // 2)
        conv = _conv(dims)
        self.theta = conv(c_skip, inner, factor, stride=factor, bias=False)
        self.phi = conv(c_gate, inner, 1)
        self.psi = conv(inner, 1, 1)
        self.dims = dims

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(self.psi(F.relu(self.theta(x) + self.phi(g))))
        if a.shape[2:] != x.shape[2:]:
            mode = "trilinear" if self.dims == 3 else "bilinear"
            a = F.interpolate(a, size=x.shape[2:], mode=mode, align_corners=False)
        return x * a


def _max_pool(c_in: int, c_out: int, stride: int = 1, dims: int = 3, kernel: Any = 3) -> PoolOp:
    return PoolOp(c_in, c_out, stride, dims, kernel, mode="max")


def _avg_pool(c_in: int, c_out: int, stride: int = 1, dims: int = 3, kernel: Any = 3) -> PoolOp:
    return PoolOp(c_in, c_out, stride, dims, kernel, mode="avg")


Factory = Callable[..., nn.Module]
"""``factory(c_in, c_out, stride, dims, **params) -> nn.Module`` (see module docstring)."""


@dataclass(frozen=True)
class Library:
    """Operation signatures plus one factory per name. Immutable: ``register`` returns a new library."""

    signatures: Signatures
    factories: Mapping[str, Factory]

    def __post_init__(self) -> None:
        missing = [n for n in self.signatures.names() if n not in self.factories]
        if missing:
            raise CompileError(f"operations declared without a factory: {', '.join(missing)}")

    def register(self, signature: OpSignature, factory: Factory) -> Library:
        """A new library with one more operation. ``factory(c_in, c_out, stride, dims, **params)`` must
        return a module mapping ``(B, c_in, *S)`` to ``(B, c_out, *ceil(S / stride))``."""
        if signature.name in self.signatures:
            raise CompileError(
                f"operation '{signature.name}' exists already in the library: register it under another name"
            )
        return Library(self.signatures.extend([signature]), {**self.factories, signature.name: factory})

    def build(self, kind: str, params: Mapping[str, ParamValue], c_in: int, c_out: int, stride: int,
              dims: int) -> nn.Module:
        """The module for ``kind(**params)`` (declared defaults filled in)."""
        signature = self.signatures.get(kind)
        if signature is None:
            known = ", ".join(self.signatures.names())
            raise CompileError(
                f"no factory for operation '{kind}' (known: {known}); register it with Library.register"
            )
        return self.factories[kind](c_in, c_out, stride, dims, **signature.resolve(params))


_BUILTIN: dict[str, Factory] = {
    "conv": ConvOp,
    "sep_conv": SepConvOp,
    "dil_conv": ConvOp,
    "max_pool": _max_pool,
    "avg_pool": _avg_pool,
    "identity": IdentityOp,
    "zero": ZeroOp,
    "conv_block": ConvBlock,
    "res_block": ResBlock,
    "logits": Logits,
}


def default_library() -> Library:
    """The library scnas ships: the paper's operations, plain dilated convolutions, pooling with any odd
    (also anisotropic) kernel, and the fixed stem and head blocks."""
    return Library(LIBRARY_SIGNATURES, dict(_BUILTIN))


BUILTIN_CLASSES: tuple[type[nn.Module], ...] = (
    Projection, ConvOp, SepConvOp, PoolOp, IdentityOp, ZeroOp, ConvBlock, ResBlock, Logits, Resample,
    AttentionGate,
)
"""Classes whose source ``scnas_dsl.nn.codegen`` copies into generated files."""
