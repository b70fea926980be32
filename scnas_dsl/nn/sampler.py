"""Sampling an architecture from the logits alpha: Algorithm 1 (pair), single (GDAS), full (DARTS) and fair
(FairNAS: one operation per edge, every candidate equally often, independent of alpha).

Every function takes the logits of one structure, ``alpha`` of shape ``(E, O)`` (E edges, O candidate
operations), and returns an :class:`EdgeSample`: for each edge the indices of the operations to run and
their weights, differentiable with respect to alpha. Random numbers come only from the ``generator``
passed in (a CPU ``torch.Generator``), so a seed fixes every draw on every device.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch

from scnas_dsl.errors import CompileError

Sampling = Literal["pair", "single", "full", "fair"]
SAMPLINGS: tuple[str, ...] = ("pair", "single", "full", "fair")


@dataclass
class EdgeSample:
    """The operations run on each edge in one step.

    ``indices``: ``(E, k)`` long tensor on the CPU (k = 2 for pair, 1 for single and argmax, O for full);
    ``weights``: ``(E, k)`` tensor on alpha's device, or None when every chosen operation has weight one
    and is used as is (argmax / a fixed genotype).
    ``complementary``: the two weights of every row sum to one as functions of alpha (a renormalised pair),
    so an edge may compute ``w1 * a + w2 * b`` as ``b + w1 * (a - b)`` with the same gradients.
    ``values``: the weights' values as a detached ``(E, k)`` float64 tensor on the CPU (pair sampling), so
    that a cell can decide per edge without reading from the device (the dominant-operation rule).
    """

    indices: torch.Tensor
    weights: torch.Tensor | None
    complementary: bool = False
    values: torch.Tensor | None = None


def gumbel_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel(0, 1) noise of ``shape`` on the CPU, from ``generator``."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    tiny = torch.finfo(torch.float64).tiny
    return -torch.log(-torch.log(u.clamp(tiny, 1.0 - 1e-12))).float()


def gumbel_softmax(alpha: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Step 1 of Algorithm 1: ``z_bar = softmax((alpha + eps) / tau)``, eps ~ Gumbel(0, 1). ``(E, O)``."""
    eps = gumbel_noise(alpha.shape, generator).to(device=alpha.device, dtype=alpha.dtype)
    return torch.softmax((alpha + eps) / temperature, dim=-1)


@lru_cache(maxsize=64)
def pair_table(num_ops: int) -> torch.Tensor:
    """Every unordered pair {o1, o2}, o1 < o2, of ``num_ops`` operations: ``(O (O - 1) / 2, 2)`` long."""
    return torch.combinations(torch.arange(num_ops), r=2)


def pair_probabilities(z_bar: torch.Tensor) -> torch.Tensor:
    """Step 2 of Algorithm 1: ``q[e, p] = (z_bar[e, o1] + z_bar[e, o2]) / (|O| - 1)`` for every pair p of
    :func:`pair_table`; each row sums to one. ``(E, O) -> (E, P)``."""
    num_ops = z_bar.shape[-1]
    pairs = pair_table(num_ops).to(z_bar.device)
    return (z_bar[:, pairs[:, 0]] + z_bar[:, pairs[:, 1]]) / (num_ops - 1)


def sample_pair(alpha: torch.Tensor, temperature: float, generator: torch.Generator) -> EdgeSample:
    """Algorithm 1: draw one pair per edge with probability q and renormalise its two weights,
    ``z_hat[o1] = z_bar[o1] / (z_bar[o1] + z_bar[o2])``. A set of one operation gives that operation with
    weight one."""
    z_bar = gumbel_softmax(alpha, temperature, generator)
    if alpha.shape[-1] == 1:
        return EdgeSample(torch.zeros(alpha.shape[0], 1, dtype=torch.long), z_bar / z_bar.detach())
    z_cpu = z_bar.detach().double().cpu()
    q = pair_probabilities(z_cpu)
    pick = torch.multinomial(q, 1, generator=generator).squeeze(1)
    indices = pair_table(alpha.shape[-1])[pick]
    chosen = z_bar.gather(1, indices.to(alpha.device))
    values = z_cpu.gather(1, indices)
    return EdgeSample(indices, chosen / chosen.sum(dim=1, keepdim=True), complementary=True,
                      values=values / values.sum(dim=1, keepdim=True))


def sample_single(alpha: torch.Tensor, temperature: float, generator: torch.Generator) -> EdgeSample:
    """GDAS: the operation with the largest Gumbel-perturbed logit, weight one in the forward pass and the
    gradient of ``z_bar[o]`` in the backward pass (hard straight-through)."""
    z_bar = gumbel_softmax(alpha, temperature, generator)
    indices = z_bar.detach().argmax(dim=1, keepdim=True).cpu()
    chosen = z_bar.gather(1, indices.to(alpha.device))
    return EdgeSample(indices, chosen - chosen.detach() + 1.0)


def sample_full(alpha: torch.Tensor) -> EdgeSample:
    """DARTS: every operation, weighted by ``softmax(alpha)`` (no noise, no temperature)."""
    num_edges, num_ops = alpha.shape
    return EdgeSample(torch.arange(num_ops).expand(num_edges, num_ops), torch.softmax(alpha, dim=-1))


def fair_permutations(num_edges: int, num_ops: int, generator: torch.Generator) -> torch.Tensor:
    """FairNAS' strict fairness: one random order of the ``num_ops`` candidates per edge, ``(E, O)`` long.
    Step ``t`` of a cycle of ``O`` steps runs column ``t`` on every edge, so that over the cycle each candidate
    of each edge runs exactly once (Chu et al., "FairNAS", ICCV 2021)."""
    return torch.argsort(torch.rand(num_edges, num_ops, generator=generator, dtype=torch.float64), dim=1)


def sample_fair(column: torch.Tensor) -> EdgeSample:
    """One column of :func:`fair_permutations` as a sample: that operation on each edge, weight one, no
    gradient to alpha (the logits are not trained by fair sampling: it trains the shared weights only)."""
    return EdgeSample(column.reshape(-1, 1).clone(), None)


def sample_uniform(alpha: torch.Tensor, generator: torch.Generator) -> EdgeSample:
    """One operation per edge, uniformly at random, weight one (single-path one-shot sampling)."""
    num_edges, num_ops = alpha.shape
    return EdgeSample(torch.randint(num_ops, (num_edges, 1), generator=generator), None)


def argmax_sample(alpha: torch.Tensor) -> EdgeSample:
    """The most likely operation on each edge, used as is (evaluation mode)."""
    return EdgeSample(alpha.detach().argmax(dim=1, keepdim=True).cpu(), None)


def draw(sampling: str, alpha: torch.Tensor, temperature: float, generator: torch.Generator) -> EdgeSample:
    """One sample of the structure with logits ``alpha`` by the named strategy."""
    if sampling == "pair":
        return sample_pair(alpha, temperature, generator)
    if sampling == "single":
        return sample_single(alpha, temperature, generator)
    if sampling == "full":
        return sample_full(alpha)
    if sampling == "fair":  # without the supernet's cycle (a measurement's own generator): uniform draws
        return sample_uniform(alpha, generator)
    raise CompileError(f"unknown sampling '{sampling}': use one of {', '.join(SAMPLINGS)}")
