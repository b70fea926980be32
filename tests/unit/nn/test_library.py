"""Every library operation, from the signature table, at stride 1 and 2 in 2D and 3D."""

from __future__ import annotations

import pytest
import torch

from scnas_dsl.errors import CompileError
from scnas_dsl.ops.library import default_library
from scnas_dsl.ops.signatures import LIBRARY_SIGNATURES, OpSignature

LIBRARY = default_library()
CASES = [(op.name, stride, dims) for op in LIBRARY_SIGNATURES for stride in (1, 2) for dims in (2, 3)]


@pytest.mark.parametrize(("name", "stride", "dims"), CASES)
def test_operation_shape_finite_gradients(name: str, stride: int, dims: int) -> None:
    torch.manual_seed(0)
    op = LIBRARY.build(name, {}, 3, 5, stride, dims)
    x = torch.randn(2, 3, *([8] * dims), requires_grad=True)
    y = op(x)
    assert y.shape == (2, 5, *([8 // stride] * dims))
    assert torch.isfinite(y).all()
    if name == "zero":
        assert not y.any() and not list(op.parameters())
        return
    (y * torch.randn_like(y)).sum().backward()
    for pname, p in op.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient for {pname}"
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("kernel", [1, 5, (3, 3, 1), (1, 3, 5)])
@pytest.mark.parametrize("name", ["conv", "sep_conv", "dil_conv", "max_pool", "avg_pool"])
def test_odd_and_anisotropic_kernels_keep_the_size(name: str, kernel: object) -> None:
    op = LIBRARY.build(name, {"kernel": kernel}, 4, 4, 1, 3)
    y = op(torch.randn(1, 4, 6, 8, 10))
    assert y.shape == (1, 4, 6, 8, 10)


def test_dilation_per_dimension() -> None:
    op = LIBRARY.build("sep_conv", {"kernel": 3, "dilation": (1, 2, 4)}, 2, 2, 2, 3)
    assert op.depthwise.dilation == (1, 2, 4)  # type: ignore[union-attr]
    assert op(torch.randn(1, 2, 8, 8, 8)).shape == (1, 2, 4, 4, 4)


def test_identity_is_the_input_at_stride_one() -> None:
    x = torch.randn(1, 3, 4, 4)
    assert LIBRARY.build("identity", {}, 3, 3, 1, 2)(x) is x
    assert len(list(LIBRARY.build("identity", {}, 3, 3, 2, 2).parameters())) > 0


def test_register_returns_a_new_library() -> None:
    sig = OpSignature("double", (), "twice the input", parametric=False)
    extended = LIBRARY.register(sig, lambda c_in, c_out, stride, dims: torch.nn.Identity())
    assert "double" in extended.signatures and "double" not in LIBRARY.signatures
    with pytest.raises(CompileError, match="exists already"):
        extended.register(sig, lambda *a: torch.nn.Identity())
    with pytest.raises(CompileError, match="no factory for operation 'tripple'"):
        LIBRARY.build("tripple", {}, 1, 1, 1, 2)


def test_average_pooling_of_inputs_smaller_than_the_window() -> None:
    # the deepest level of a U-Net can be smaller than the pooling window; avg_pool3d refuses that, so
    # the operation pads by hand: the result must equal torch's pooling where torch accepts the input
    op = LIBRARY.build("avg_pool", {"kernel": 3}, 2, 2, 1, 3)
    x = torch.randn(1, 2, 5, 4, 3)
    assert torch.allclose(op._small_average(x), op.pool(x), atol=1e-6)  # type: ignore[operator]
    tiny = torch.randn(1, 2, 1, 2, 4)
    y = op(tiny)
    assert y.shape == tiny.shape
    # along a 1-voxel axis the window holds one real voxel: pooling reduces to the 2D pooling of each slice
    flat = torch.nn.functional.avg_pool2d(tiny[:, :, 0], 3, 1, 1, count_include_pad=False)
    assert torch.allclose(y[:, :, 0], flat, atol=1e-6)
