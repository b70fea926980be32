"""The search's gradient steps: only what ran is updated (issue: Adam moved unsampled operations)."""

from __future__ import annotations

import torch

from scnas_dsl.nn import build_supernet
from scnas_dsl.training.device import Runtime
from scnas_dsl.training.losses import soft_jaccard_loss
from scnas_dsl.training.search import update
from tests.unit.nn.spaces import unet_space
from tests.unit.nn.test_supernet import sampled_names


def _owned(model: torch.nn.Module, module_names: set[str]) -> dict[str, torch.nn.Parameter]:
    """The parameters of the named operation modules, by full parameter name."""
    return {name: p for name, p in model.named_parameters() if any(name.startswith(m + ".") for m in module_names)}


def test_an_operation_that_did_not_run_is_bit_identical_after_the_weight_step() -> None:
    torch.manual_seed(0)
    model = build_supernet(unet_space(levels=1, width=4), in_channels=1, num_classes=2, sampling="pair", seed=1)
    model.train()
    weights = model.weight_parameters()
    # the paper's theta betas: with them a zero-gradient step grows ~3x per step from Adam's moments
    opt = torch.optim.Adam(weights, lr=0.025, betas=(0.1, 0.001))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    runtime = Runtime(device=torch.device("cpu"))
    x = torch.randn(2, 1, 16, 16)
    y = (x[:, 0] > 0.5).long()

    update(weights, opt, scaler, soft_jaccard_loss(model(x), y), runtime)
    first = sampled_names(model, model.last_samples)
    # draw until the next step leaves out at least one parametric operation that ran in the first
    for _ in range(50):
        samples = model.draw_samples()
        second = sampled_names(model, samples)
        idle = _owned(model, first - second)
        if idle:
            break
    assert idle, "no draw left out a parametric operation of the first step"
    before = {n: p.detach().clone() for n, p in idle.items()}
    state_before = {n: {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
                    for n, p in idle.items()}
    assert all(s for s in state_before.values()), "the idle operations had optimiser state from the first step"
    ran = _owned(model, second)
    ran_before = {n: p.detach().clone() for n, p in ran.items()}

    update(weights, opt, scaler, soft_jaccard_loss(model(x, samples=samples), y), runtime)

    for name, p in idle.items():
        assert torch.equal(p.detach(), before[name]), f"{name} did not run but moved"
        state = opt.state[p]
        assert int(state["step"]) == int(state_before[name]["step"])
        assert torch.equal(state["exp_avg"], state_before[name]["exp_avg"])
        assert torch.equal(state["exp_avg_sq"], state_before[name]["exp_avg_sq"])
    # not vacuous: what ran did move
    assert any(not torch.equal(p.detach(), ran_before[n]) for n, p in ran.items())
    # gradients are released after each step
    assert all(p.grad is None for p in weights)


def test_the_architecture_step_leaves_the_weights_alone() -> None:
    model = build_supernet(unet_space(levels=1, width=4), in_channels=1, num_classes=2, sampling="pair", seed=2)
    model.train()
    logits = model.arch_parameters()
    opt = torch.optim.Adam(logits, lr=0.003, betas=(0.5, 0.999))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x = torch.randn(2, 1, 16, 16)
    y = (x[:, 0] > 0.5).long()
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("arch.")}
    alphas = {k: a.detach().clone() for k, a in model.arch.items()}
    update(logits, opt, scaler, soft_jaccard_loss(model(x), y), Runtime(device=torch.device("cpu")))
    assert all(torch.equal(p.detach(), weights[n]) for n, p in model.named_parameters() if n in weights)
    assert all(p.grad is None for n, p in model.named_parameters())
    assert any(not torch.equal(a.detach(), alphas[k]) for k, a in model.arch.items())
