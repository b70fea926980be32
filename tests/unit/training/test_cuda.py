"""The GPU path on a real GPU: mixed precision, the memory estimate against ``max_memory_allocated``,
checkpointing and ``torch.compile`` on CUDA. The CUDA cases are skipped without a CUDA device; where their logic
runs on the CPU too, the CPU case runs everywhere. On a GPU machine: ``pytest -m cuda``."""

from __future__ import annotations

import pytest
import torch

from scnas_dsl.nn import build_network, build_supernet
from scnas_dsl.nn.cost import estimate
from scnas_dsl.training.device import amp_dtype_for, setup_runtime, training_memory
from scnas_dsl.training.losses import soft_jaccard_loss
from scnas_dsl.training.search import update
from tests.unit.nn.spaces import baseline_genotype, baseline_space, unet_space

NEEDS_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
#: the GPU test and its logic on the CPU (a test that never runs is not a test)
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]


class _Stepper:
    """The trainer's search step with one pair of optimisers and scalers for all steps."""

    def __init__(self, net, runtime) -> None:  # noqa: ANN001
        self.net, self.runtime = net, runtime
        self.weights, self.logits = net.weight_parameters(), net.arch_parameters()
        self.w_opt, self.a_opt = torch.optim.Adam(self.weights), torch.optim.Adam(self.logits)
        self.w_scaler, self.a_scaler = runtime.grad_scaler(), runtime.grad_scaler()

    def warm_up(self, x, y) -> None:  # noqa: ANN001
        """Every operation of every edge once (cuDNN autotuning, every weight's Adam state), then one step."""
        for samples in self.net.every_operation_samples():
            with self.runtime.autocast():
                loss = soft_jaccard_loss(self.net(x, samples=samples), y)
            update(self.weights, self.w_opt, self.w_scaler, loss, self.runtime)
        self.step(x, y)

    def step(self, x, y) -> torch.Tensor:  # noqa: ANN001
        net, runtime = self.net, self.runtime
        with runtime.autocast():
            loss_w = soft_jaccard_loss(net(x, arch_grad=False), y)
        update(self.weights, self.w_opt, self.w_scaler, loss_w, runtime)
        with runtime.autocast():
            loss_a = soft_jaccard_loss(net(x), y)
        update(self.logits, self.a_opt, self.a_scaler, loss_a, runtime)
        return loss_a.detach()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_runtime_picks_the_native_half_precision() -> None:
    runtime = setup_runtime("cuda", amp=True)
    assert runtime.amp_dtype == amp_dtype_for(torch.cuda.get_device_capability(runtime.device))
    assert setup_runtime("cuda", amp=False).amp_dtype is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp", [True, False])
def test_a_search_step_runs_and_the_estimate_is_near_the_measured_peak(device: str, amp: bool) -> None:
    if device == "cpu" and amp:
        pytest.skip("mixed precision is CUDA's: on the CPU both cases are the same")
    runtime = setup_runtime(device, amp=amp)
    space = unet_space(dims=3, width=8 if device == "cuda" else 4, levels=2, nodes=3)
    net = build_supernet(space, in_channels=2, num_classes=3, seed=0)
    patch = (32, 32, 32) if runtime.device.type == "cuda" else (8, 8, 8)  # the CPU runs the logic, small
    need = training_memory(estimate(net, patch=patch, batch_size=2), runtime, "pair") if device == "cuda" else 0
    net.to(runtime.device).train()
    x = torch.randn(2, 2, *patch, device=runtime.device)
    y = torch.randint(0, 3, (2, *patch), device=runtime.device)
    stepper = _Stepper(net, runtime)
    stepper.warm_up(x, y)
    # every weight has its Adam state before the measured step (else its creation lands inside it)
    assert len(stepper.w_opt.state) == len(stepper.weights)
    if runtime.device.type != "cuda":
        assert torch.isfinite(stepper.step(x, y))
        return
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    loss = stepper.step(x, y)
    assert torch.isfinite(loss)
    peak = torch.cuda.max_memory_allocated()  # weights, their Adam state and the step's tensors
    assert 0.5 < need / peak < 2.0, (need, peak)


@pytest.mark.parametrize("device", DEVICES)
def test_checkpointed_cells_give_the_same_gradients_on_the_gpu(device: str) -> None:
    dev = torch.device(device)
    space = unet_space(dims=3, width=8, levels=2, nodes=3)
    x = torch.randn(1, 2, 16, 16, 16, device=dev)
    grads = []
    for checkpoint in (False, True):
        torch.manual_seed(0)  # before the build: the same initial weights both times
        net = build_supernet(space, in_channels=2, num_classes=3, seed=0).to(dev).train()
        net.checkpoint_cells = checkpoint
        samples = net.draw_samples(torch.Generator().manual_seed(1))
        net(x, samples).square().mean().backward()
        grads.append([p.grad.clone() for p in net.weight_parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_network_matches_on_the_gpu() -> None:
    from scnas_dsl.training.compiling import compile_forward

    dev = torch.device("cuda")
    torch.manual_seed(0)
    net = build_network(baseline_space(dims=3, width=8), baseline_genotype(), in_channels=1, num_classes=2).to(dev)
    x = torch.randn(2, 1, 16, 16, 16, device=dev)
    messages: list[str] = []
    run = compile_forward(net, x, train=False, what="the test", log=messages.append, backend="inductor")
    assert run is not net, messages  # compiled: it says so before and after, and nothing else
    assert len(messages) == 2 and "compiled for the test in" in messages[1], messages
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(run(x), net(x), atol=1e-4, rtol=1e-4)
