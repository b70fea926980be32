"""The CPU kernels of the operation library (issue 10): 3D convolutions straight through oneDNN
(``_conv_call``) and depthwise convolutions on ``channels_last_3d`` copies (``_depthwise_call``) give the
plain ``F.conv3d`` result and gradients, in the standard layout; everywhere else the plain call runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scnas_dsl.ops import library as lib

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")

# oneDNN and ATen's im2col sum in different orders: relative to the largest value of each tensor
TOL = 1e-5
SIZE = (7, 9, 11)  # odd, and unequal per axis


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= TOL * max(b.abs().max().item(), 1.0)


def _grads(y: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(1)
    return torch.autograd.grad((y * torch.randn_like(y)).sum(), inputs)


def _plain(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    return F.conv3d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _conv(c_in: int, c_out: int, stride: int | tuple[int, int, int], dilation: int, groups: int = 1, bias: bool = False) -> nn.Conv3d:
    torch.manual_seed(0)
    return nn.Conv3d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=bias)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2, 3, 4])
@pytest.mark.parametrize("stride", [1, 2, (2, 1, 1)])  # per-axis strides: a reversed order shows
def test_conv_call_equals_plain(stride: int | tuple[int, int, int], dilation: int, batch: int) -> None:
    conv = _conv(3, 5, stride, dilation, bias=batch == 2)  # with and without a bias
    x = torch.randn(batch, 3, *SIZE, requires_grad=True)
    y, ref = lib._conv_call(conv, x), _plain(conv, x)
    assert y.grad_fn is not None and "Mkldnn" in type(y.grad_fn).__name__  # the oneDNN path ran
    assert y.is_contiguous()
    _close(y, ref)
    params = [x, conv.weight] + ([conv.bias] if conv.bias is not None else [])
    for a, b in zip(_grads(y, *params), _grads(ref, *params), strict=True):
        _close(a, b)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2, 3, 4])
@pytest.mark.parametrize("stride", [1, 2, (2, 1, 1)])  # per-axis strides: a reversed order shows
def test_depthwise_call_equals_plain(stride: int | tuple[int, int, int], dilation: int, batch: int) -> None:
    conv = _conv(4, 4, stride, dilation, groups=4)
    x = torch.randn(batch, 4, *SIZE, requires_grad=True)
    y, ref = lib._depthwise_call(conv, x), _plain(conv, x)
    assert type(y.grad_fn).__name__.startswith("_ChannelsLastConv")  # the NDHWC path ran
    assert y.is_contiguous()  # back in the standard layout
    _close(y, ref)
    gx, gw = _grads(y, x, conv.weight)
    rx, rw = _grads(ref, x, conv.weight)
    assert gx.is_contiguous() and gw.shape == conv.weight.shape
    _close(gx, rx)
    _close(gw, rw)


def test_depthwise_keeps_only_the_ncdhw_input() -> None:
    # the NDHWC copy is made again in backward instead of being kept: the saved tensors are the input itself
    conv = _conv(4, 4, 1, 2, groups=4)
    x = torch.randn(1, 4, *SIZE, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lib._depthwise_call(conv, x)
    assert any(t is x for t in saved)
    assert all(t.is_contiguous() and t.untyped_storage().nbytes() <= x.untyped_storage().nbytes() for t in saved)
    assert sum(t.numel() for t in saved) == x.numel() + conv.weight.numel()


@pytest.mark.parametrize("activated", [False, True])
def test_operations_equal_their_plain_composition(activated: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, *SIZE, requires_grad=True)
    h = x if activated else F.leaky_relu(x, lib.LEAKY_SLOPE)
    for stride in (1, 2):
        op = lib.ConvOp(4, 6, stride, 3, kernel=3, dilation=2)
        _close(op(x, activated), op.norm(_plain(op.conv, h)))
        sep = lib.SepConvOp(4, 6, stride, 3, kernel=5, dilation=3)
        _close(sep(x, activated), sep.norm(sep.pointwise(_plain(sep.depthwise, h))))
    block = lib.ConvBlock(4, 6, 2, 3)
    y = block(x)
    ref = x
    for layer in block.layers:
        ref = _plain(layer, ref) if isinstance(layer, nn.Conv3d) else layer(ref)
    _close(y, ref)
    ops = [lib.ConvOp(4, 6, 1, 3), lib.SepConvOp(4, 6, 1, 3), block]
    # the module structure (and so checkpoints) is unchanged
    assert [list(o.state_dict()) for o in ops] == [
        ["conv.weight", "norm.weight", "norm.bias"],
        ["depthwise.weight", "pointwise.weight", "norm.weight", "norm.bias"],
        ["layers.0.weight", "layers.1.weight", "layers.1.bias", "layers.3.weight", "layers.4.weight",
         "layers.4.bias"],
    ]


def _plain_kind(y: torch.Tensor) -> str:
    return type(y.grad_fn).__name__


def test_fallbacks_take_the_plain_call() -> None:
    conv, dw = _conv(3, 5, 1, 2), _conv(4, 4, 1, 2, groups=4)
    x, xd = torch.randn(1, 3, *SIZE, requires_grad=True), torch.randn(1, 4, *SIZE, requires_grad=True)
    # float64
    conv64, dw64 = _conv(3, 5, 1, 2).double(), _conv(4, 4, 1, 2, groups=4).double()
    assert _plain_kind(lib._conv_call(conv64, x.double())) == "ConvolutionBackward0"
    assert _plain_kind(lib._depthwise_call(dw64, xd.double())) == "ConvolutionBackward0"
    # 2D
    conv2 = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    assert _plain_kind(lib._conv_call(conv2, torch.randn(1, 3, 9, 9, requires_grad=True))) == "ConvolutionBackward0"
    # autocast on the CPU
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not lib._cpu_kernels(x)
    # a module with a hook: the hook still runs
    seen: list[int] = []
    handle = conv.register_forward_hook(lambda *_: seen.append(1))
    assert _plain_kind(lib._conv_call(conv, x)) == "ConvolutionBackward0" and seen == [1]
    handle.remove()
    # a dispatch mode (the FLOP counter counts aten.convolution only): counted as the plain call
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        lib._conv_call(conv, x)
        lib._depthwise_call(dw, xd)
    assert counter.get_total_flops() == 2 * (5 * 3 * 27 + 4 * 27) * x[0, 0].numel()
    # oneDNN unavailable
    available = torch.backends.mkldnn.is_available
    torch.backends.mkldnn.is_available = lambda: False  # type: ignore[assignment]
    try:
        assert _plain_kind(lib._conv_call(conv, x)) == "ConvolutionBackward0"
    finally:
        torch.backends.mkldnn.is_available = available  # type: ignore[assignment]


def test_tracing_takes_the_plain_call() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 4, *SIZE)
    for op in (lib.ConvOp(4, 6, 1, 3), lib.SepConvOp(4, 6, 2, 3, dilation=2), lib.ConvBlock(4, 6, 1, 3)):
        op.eval()
        traced = torch.jit.trace(op, x)
        graph = str(traced.inlined_graph)
        assert "mkldnn" not in graph and "_convolution" in graph
        _close(traced(x), op(x))


def test_unsupported_case_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> torch.Tensor:
        raise RuntimeError("unsupported")

    monkeypatch.setattr(torch, "mkldnn_convolution", refuse)
    conv = _conv(3, 5, 2, 3)
    x = torch.randn(2, 3, *SIZE)
    _close(lib._conv_call(conv, x), _plain(conv, x))


def test_a_user_who_switched_onednn_off_gets_the_plain_call() -> None:
    conv = _conv(3, 5, 1, 1)
    x = torch.randn(1, 3, *SIZE, requires_grad=True)
    with torch.backends.mkldnn.flags(enabled=False):
        y = lib._conv_call(conv, x)
    assert "Mkldnn" not in type(y.grad_fn).__name__
