"""Sliding-window inference: windows, blending, mirroring, padding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scnas_dsl.inference.sliding_window import importance_map, sliding_window_inference, window_starts


class Pointwise(nn.Module):
    """A 1x1x1 convolution: its output at a voxel depends on that voxel only, so windows must agree."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[2:] == (8, 8, 8), "the network must only ever see whole patches"
        return self.conv(x)


def test_window_starts_cover_the_volume_with_half_overlap() -> None:
    assert window_starts(8, 8, 0.5) == [0]
    assert window_starts(16, 8, 0.5) == [0, 4, 8]
    starts = window_starts(21, 8, 0.5)
    assert starts[0] == 0 and starts[-1] == 13
    assert all(b - a <= 4 for a, b in zip(starts, starts[1:], strict=False))


def test_gaussian_map_peaks_in_the_centre_and_has_no_zeros() -> None:
    w = importance_map((8, 8, 8), "gaussian")
    assert w.max() == pytest.approx(1.0) and w.min() > 0
    assert w[4, 4, 4] > w[0, 0, 0]
    assert torch.equal(importance_map((4, 4), "constant"), torch.ones(4, 4))


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("mirror", [False, True])
def test_pointwise_network_gives_the_same_probabilities_as_one_pass(blend: str, mirror: bool) -> None:
    model = Pointwise()
    image = torch.randn(2, 13, 19, 6)  # the last axis is smaller than the patch: padded
    probs = sliding_window_inference(model, image, (8, 8, 8), blend=blend, mirror=mirror,  # type: ignore[arg-type]
                                     batch_size=3)
    assert probs.shape == (3, 13, 19, 6)
    expected = torch.softmax(model.conv(image[None]), 1)[0]
    assert torch.allclose(probs, expected, atol=1e-5)
    assert torch.allclose(probs.sum(0), torch.ones(13, 19, 6), atol=1e-5)


class Flipped(nn.Module):
    """``net`` seen through a flip of ``axes`` (spatial, 0-based): flip the input, run, flip the output back."""

    def __init__(self, net: nn.Module, axes: tuple[int, ...]) -> None:
        super().__init__()
        self.net, self.dims = net, [a + 2 for a in axes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flip(self.dims)).flip(self.dims) if self.dims else self.net(x)


FLIPS = [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]


def test_mirroring_is_the_mean_of_the_eight_flips_by_hand() -> None:
    """A network that is not symmetric (a 3x3x3 convolution with random weights, then a position-dependent
    bias): a flip not undone, or undone along the wrong axis, changes the result."""

    class Lopsided(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(1)
            self.conv = nn.Conv3d(2, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            ramp = torch.linspace(-1, 1, x.shape[2])[:, None, None] * torch.linspace(0, 2, x.shape[4])
            return self.conv(x) + ramp

    model = Lopsided()
    image = torch.randn(2, 13, 19, 10)
    probs = sliding_window_inference(model, image, (8, 8, 8), mirror=True, batch_size=3)
    by_hand = torch.stack([sliding_window_inference(Flipped(model, f), image, (8, 8, 8), mirror=False, batch_size=3)
                           for f in FLIPS]).mean(0)
    assert torch.allclose(probs, by_hand, atol=1e-6)
    plain = sliding_window_inference(model, image, (8, 8, 8), mirror=False)
    assert (probs - plain).abs().max() > 0.05  # the flips matter for this network


def test_a_fixed_batch_pads_the_last_windows_and_gives_the_same_probabilities() -> None:
    """``fixed_batch`` (a compiled network): every call has the batch size, so nothing compiles again for the
    last, smaller batch; the padded windows' outputs are dropped."""
    model = Pointwise()
    batches: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    image = torch.randn(2, 13, 19, 6)  # 3 x 4 x 1 = 12 windows: batches of 5, 5 and 2
    plain = sliding_window_inference(model, image, (8, 8, 8), batch_size=5)
    assert batches == [5, 5, 2]
    batches.clear()
    fixed = sliding_window_inference(model, image, (8, 8, 8), batch_size=5, fixed_batch=True)
    assert batches == [5, 5, 5]
    assert torch.allclose(fixed, plain, atol=1e-6)


def test_out_of_memory_on_a_device_does_the_case_again_with_cpu_storage() -> None:
    """nnU-Net v2's fallback: the probabilities of a large case may not fit on the GPU beside the network."""
    from scnas_dsl.inference.sliding_window import on_device_or_cpu

    calls: list[str] = []

    def run(store: torch.device) -> torch.Tensor:
        calls.append(store.type)
        if store.type != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return torch.ones(1)

    assert on_device_or_cpu(run, torch.device("cuda")).item() == 1 and calls == ["cuda", "cpu"]
    calls.clear()

    def cpu_full(store: torch.device) -> torch.Tensor:
        calls.append(store.type)
        raise torch.OutOfMemoryError("no memory")

    with pytest.raises(torch.OutOfMemoryError):  # on the CPU nothing is left to fall back to
        on_device_or_cpu(cpu_full, torch.device("cpu"))
    assert calls == ["cpu"]
    calls.clear()
    with pytest.raises(torch.OutOfMemoryError):  # nor after the fallback
        on_device_or_cpu(cpu_full, torch.device("cuda"))
    assert calls == ["cuda", "cpu"]
    calls.clear()

    def broken(store: torch.device) -> torch.Tensor:
        calls.append(store.type)
        raise RuntimeError("a shape error")

    with pytest.raises(RuntimeError, match="a shape error"):  # only memory is retried
        on_device_or_cpu(broken, torch.device("cuda"))
    assert calls == ["cuda"]



@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])])
def test_probabilities_kept_in_cpu_memory_are_those_kept_on_the_device(device: str) -> None:
    """The fallback's storage gives the same probabilities (on a GPU: the windows there, the sums on the CPU)."""
    from scnas_dsl.inference.sliding_window import _mirror_sets, _windows

    torch.manual_seed(0)
    net = nn.Conv3d(2, 3, 3, padding=1).to(device)
    image = torch.randn(2, 20, 13, 9)
    kwargs = {"overlap": 0.5, "blend": "gaussian", "flips": _mirror_sets(3, True, None), "batch_size": 3,
              "device": torch.device(device), "autocast_dtype": None, "should_stop": None, "fixed_batch": False}
    in_cpu_memory = _windows(net, image, (8, 8, 8), store=torch.device("cpu"), **kwargs)  # type: ignore[arg-type]
    on_device = _windows(net, image, (8, 8, 8), store=torch.device(device), **kwargs)  # type: ignore[arg-type]
    assert in_cpu_memory.device.type == on_device.device.type == "cpu"
    assert torch.allclose(in_cpu_memory, on_device, atol=1e-6)
    assert torch.allclose(on_device, sliding_window_inference(net, image, (8, 8, 8), mirror=True, batch_size=3))
