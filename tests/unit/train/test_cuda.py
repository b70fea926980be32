"""The GPU path on a real GPU: mixed precision, the memory estimate against ``max_memory_allocated``,
checkpointing and ``torch.compile`` on CUDA. Skipped without a CUDA device (the CPU tests cover the same
code with the CPU standing in); run them on a GPU machine with ``pytest -m cuda``."""

from __future__ import annotations

import pytest
import torch

from scnas_dsl.nn import build_network, build_supernet
from scnas_dsl.nn.cost import estimate
from scnas_dsl.train.device import amp_dtype_for, setup_runtime, training_memory
from scnas_dsl.train.losses import soft_jaccard_loss
from scnas_dsl.train.search import update
from tests.unit.nn.spaces import baseline_genotype, baseline_space, unet_space

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _search_step(net, runtime, x, y) -> torch.Tensor:  # noqa: ANN001
    weights, logits = net.weight_parameters(), net.arch_parameters()
    w_opt, a_opt = torch.optim.Adam(weights), torch.optim.Adam(logits)
    with runtime.autocast():
        loss_w = soft_jaccard_loss(net(x, arch_grad=False), y)
    update(weights, w_opt, runtime.grad_scaler(), loss_w, runtime)
    with runtime.autocast():
        loss_a = soft_jaccard_loss(net(x), y)
    update(logits, a_opt, runtime.grad_scaler(), loss_a, runtime)
    return loss_a.detach()


def test_the_runtime_picks_the_native_half_precision() -> None:
    runtime = setup_runtime("cuda", amp=True)
    assert runtime.amp_dtype == amp_dtype_for(torch.cuda.get_device_capability(runtime.device))
    assert setup_runtime("cuda", amp=False).amp_dtype is None


@pytest.mark.parametrize("amp", [True, False])
def test_a_search_step_runs_and_the_estimate_is_near_the_measured_peak(amp: bool) -> None:
    runtime = setup_runtime("cuda", amp=amp)
    space = unet_space(dims=3, width=8, levels=2, nodes=3)
    net = build_supernet(space, in_channels=2, num_classes=3, seed=0)
    patch = (32, 32, 32)
    need = training_memory(estimate(net, patch=patch, batch_size=2), runtime, "pair")
    net.to(runtime.device).train()
    x = torch.randn(2, 2, *patch, device=runtime.device)
    y = torch.randint(0, 3, (2, *patch), device=runtime.device)
    _search_step(net, runtime, x, y)  # warm-up: Adam state
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    loss = _search_step(net, runtime, x, y)
    assert torch.isfinite(loss)
    peak = torch.cuda.max_memory_allocated()  # weights, their Adam state and the step's tensors
    assert 0.5 < need / peak < 2.0, (need, peak)


def test_checkpointed_cells_give_the_same_gradients_on_the_gpu() -> None:
    dev = torch.device("cuda")
    space = unet_space(dims=3, width=8, levels=2, nodes=3)
    x = torch.randn(1, 2, 16, 16, 16, device=dev)
    grads = []
    for checkpoint in (False, True):
        net = build_supernet(space, in_channels=2, num_classes=3, seed=0).to(dev).train()
        torch.manual_seed(0)
        net.checkpoint_cells = checkpoint
        samples = net.draw_samples(torch.Generator().manual_seed(1))
        net(x, samples).square().mean().backward()
        grads.append([p.grad.clone() for p in net.weight_parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_compiled_network_matches_on_the_gpu() -> None:
    from scnas_dsl.train.compiling import compile_forward

    dev = torch.device("cuda")
    torch.manual_seed(0)
    net = build_network(baseline_space(dims=3, width=8), baseline_genotype(), in_channels=1, num_classes=2).to(dev)
    x = torch.randn(2, 1, 16, 16, 16, device=dev)
    messages: list[str] = []
    run = compile_forward(net, x, train=False, what="the test", log=messages.append, backend="inductor")
    assert not messages, messages
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(run(x), net(x), atol=1e-4, rtol=1e-4)
