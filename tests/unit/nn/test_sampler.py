"""Algorithm 1 (pair sampling), single and full sampling, and the temperature schedule."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from scnas_dsl.errors import CompileError
from scnas_dsl.nn.sampler import (
    draw,
    gumbel_softmax,
    pair_probabilities,
    pair_table,
    sample_full,
    sample_pair,
    sample_single,
)
from scnas_dsl.nn.schedule import TemperatureSchedule

ALPHA = torch.tensor([[1.5, -0.5, 0.3, 0.0, 2.0, -1.0]])
TAU = 0.7


def expected_pair_frequencies(alpha: torch.Tensor, tau: float, draws: int, seed: int) -> torch.Tensor:
    """E_eps[q(pair)] estimated from independent Gumbel draws (q averaged over the noise)."""
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(len(pair_table(alpha.shape[1])), dtype=torch.float64)
    for _ in range(draws):
        total += pair_probabilities(gumbel_softmax(alpha, tau, gen).double())[0]
    return total / draws


def empirical_pair_counts(alpha: torch.Tensor, tau: float, draws: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    pairs = [tuple(p) for p in pair_table(alpha.shape[1]).tolist()]
    counts = torch.zeros(len(pairs))
    batch = alpha.expand(draws, -1).contiguous()  # one row per draw: independent noise and pair per row
    sample = sample_pair(batch, tau, gen)
    for row in sample.indices.tolist():
        counts[pairs.index(tuple(row))] += 1
    return counts


def test_pair_probabilities_sum_to_one_and_match_formula() -> None:
    z = torch.softmax(torch.randn(3, 5), dim=1)
    q = pair_probabilities(z)
    assert torch.allclose(q.sum(dim=1), torch.ones(3))
    for p, (i, j) in enumerate(itertools.combinations(range(5), 2)):
        assert torch.allclose(q[:, p], (z[:, i] + z[:, j]) / 4)


def test_pair_frequencies_match_q_and_reject_a_wrong_q() -> None:
    draws = 20000
    counts = empirical_pair_counts(ALPHA, TAU, draws, seed=1)
    q = expected_pair_frequencies(ALPHA, TAU, 20000, seed=2)
    right = chisquare(counts.numpy(), (q * draws).numpy())
    assert right.pvalue > 1e-3, right
    # a sampler that picked pairs from the product z1 * z2 (a plausible mistake) must be rejected
    gen = torch.Generator().manual_seed(3)
    wrong = torch.zeros_like(q)
    pairs = pair_table(ALPHA.shape[1])
    for _ in range(5000):
        z = gumbel_softmax(ALPHA, TAU, gen).double()[0]
        prod = z[pairs[:, 0]] * z[pairs[:, 1]]
        wrong += prod / prod.sum()
    wrong /= 5000
    assert chisquare(counts.numpy(), (wrong * draws).numpy()).pvalue < 1e-6
    # and so must uniform pairs
    uniform = torch.full_like(q, draws / len(q))
    assert chisquare(counts.numpy(), uniform.numpy()).pvalue < 1e-6


def test_pair_weights_are_renormalised_z_bar() -> None:
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    alpha = torch.randn(7, 8)
    sample = sample_pair(alpha, 0.9, gen_a)
    z = gumbel_softmax(alpha, 0.9, gen_b)  # same noise: the first draw from an identically seeded generator
    assert sample.weights is not None
    for row, (i, j) in enumerate(sample.indices.tolist()):
        assert i != j
        expected = torch.stack([z[row, i], z[row, j]]) / (z[row, i] + z[row, j])
        assert torch.allclose(sample.weights[row], expected, atol=1e-6)
    assert torch.allclose(sample.weights.sum(dim=1), torch.ones(7))


def test_pair_weights_carry_gradient_to_every_logit() -> None:
    alpha = torch.zeros(4, 8, requires_grad=True)
    sample = sample_pair(alpha, 1.0, torch.Generator().manual_seed(0))
    (sample.weights[:, 0] * torch.arange(1.0, 5.0)).sum().backward()  # type: ignore[index]
    assert alpha.grad is not None and (alpha.grad.abs().sum(dim=1) > 0).all()


def test_single_is_hard_straight_through() -> None:
    alpha = torch.randn(6, 8, requires_grad=True)
    sample = sample_single(alpha, 1.0, torch.Generator().manual_seed(0))
    assert sample.indices.shape == (6, 1)
    assert torch.allclose(sample.weights, torch.ones(6, 1))  # type: ignore[arg-type]
    sample.weights.sum().backward()  # type: ignore[union-attr]
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0


def test_single_frequencies_follow_softmax() -> None:
    # Gumbel-max: argmax(alpha + eps) is distributed as softmax(alpha), whatever the temperature
    draws = 20000
    sample = sample_single(ALPHA.expand(draws, -1).contiguous(), 3.0, torch.Generator().manual_seed(9))
    counts = torch.bincount(sample.indices[:, 0], minlength=6).float()
    assert chisquare(counts.numpy(), (torch.softmax(ALPHA[0], 0) * draws).numpy()).pvalue > 1e-3


def test_full_is_softmax_over_all() -> None:
    alpha = torch.randn(3, 5)
    sample = sample_full(alpha)
    assert sample.indices.shape == (3, 5)
    assert torch.allclose(sample.weights, torch.softmax(alpha, 1))  # type: ignore[arg-type]


def test_same_seed_same_draws() -> None:
    alpha = torch.randn(50, 8)
    a = sample_pair(alpha, 1.0, torch.Generator().manual_seed(4))
    b = sample_pair(alpha, 1.0, torch.Generator().manual_seed(4))
    c = sample_pair(alpha, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.weights, b.weights)  # type: ignore[arg-type]
    assert not torch.equal(a.indices, c.indices)
    with pytest.raises(CompileError, match="unknown sampling"):
        draw("halves", torch.zeros(1, 2), 1.0, torch.Generator())


def test_temperature_schedules() -> None:
    lin = TemperatureSchedule(4.0, 1.0, "linear")
    assert lin.at(0) == 4.0 and lin.at(0.5) == 2.5 and lin.at(1) == 1.0 and lin.at(2) == 1.0
    exp = TemperatureSchedule(4.0, 1.0, "exponential")
    assert exp.at(0.5) == pytest.approx(2.0)
    with pytest.raises(CompileError, match="positive"):
        TemperatureSchedule(0.0, 1.0)


@settings(max_examples=40, deadline=None)
@given(edges=st.integers(1, 6), ops=st.integers(2, 12), tau=st.floats(0.05, 20.0), seed=st.integers(0, 2**31))
def test_pair_sample_properties(edges: int, ops: int, tau: float, seed: int) -> None:
    alpha = torch.randn(edges, ops, generator=torch.Generator().manual_seed(seed)) * 3
    sample = sample_pair(alpha, tau, torch.Generator().manual_seed(seed))
    assert sample.indices.shape == (edges, 2) and sample.weights is not None
    assert (sample.indices[:, 0] < sample.indices[:, 1]).all()  # two distinct operations
    assert ((sample.indices >= 0) & (sample.indices < ops)).all()
    assert (sample.weights >= 0).all() and torch.allclose(sample.weights.sum(1), torch.ones(edges))
    q = pair_probabilities(gumbel_softmax(alpha, tau, torch.Generator().manual_seed(seed)))
    assert torch.allclose(q.sum(1), torch.ones(edges), atol=1e-5)
