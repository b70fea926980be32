"""The architecture step moves the logits towards the operation that lowers the loss, through the samplers'
gradient estimators: on one edge with fixed operation outputs, where one operation gives the target exactly,
Adam on alpha alone (the search's architecture step) must make that operation the most likely."""

from __future__ import annotations

import pytest
import torch

from scnas_dsl.nn.sampler import draw

OPS = 5
BEST = 3  # the operation whose output is the target


def _search_one_edge(sampling: str, seed: int, steps: int = 300, temperature: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    target = torch.randn(64, generator=generator)
    outputs = torch.randn(OPS, 64, generator=generator)  # the other operations: unrelated outputs
    outputs[BEST] = target
    alpha = torch.nn.Parameter(1e-3 * torch.randn(1, OPS, generator=generator))
    opt = torch.optim.Adam([alpha], lr=0.05, betas=(0.5, 0.999))
    for _ in range(steps):
        sample = draw(sampling, alpha, temperature, generator)
        index = sample.indices[0]
        weights = sample.weights[0] if sample.weights is not None else torch.ones(len(index))
        edge = (weights[:, None] * outputs[index]).sum(0)
        loss = ((edge - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.softmax(alpha.detach()[0], dim=0)


@pytest.mark.parametrize("sampling", ["pair", "single", "full"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_architecture_step_prefers_the_operation_that_fits(sampling: str, seed: int) -> None:
    p = _search_one_edge(sampling, seed)
    assert int(p.argmax()) == BEST, p
    assert float(p[BEST]) > 0.5, p  # from 0.2: a clear preference, not a near-tie
