"""Algorithm 1 against references computed here, independently of the sampler's own helpers.

* A renormalised pair on an edge is ``w1 * op1(x) + w2 * op2(x)`` for the drawn pair, with the weights
  computed by hand (numpy, float64) from the same uniform numbers the sampler turns into Gumbel noise; the
  edge computes it as ``b + w1 * (a - b)``, so swapped weights or operations must show.
* The temperature changes the draws as numpy's own Gumbel Monte Carlo says it should (pair frequencies
  ``E[q]`` and the mean of the renormalised weights ``z_hat``), and at a temperature near zero as the
  Gumbel-max limit says (z_bar one-hot at argmax(alpha + eps), q of a pair ``(z1 + z2) / (|O| - 1)``).
  A sampler that ignored the temperature would be far outside the tolerances (asserted too).

Every draw is seeded; tolerances are several standard errors wide (measured values in the comments).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from scnas_dsl.nn import build_supernet
from scnas_dsl.nn.cells import MixedEdge
from scnas_dsl.nn.sampler import sample_pair
from scnas_dsl.ops.library import default_library
from tests.unit.nn.spaces import unet_space


def uniforms(shape: tuple[int, int], seed: int) -> np.ndarray:
    """The first uniform numbers a generator seeded with ``seed`` gives (float64), from which the sampler
    makes its Gumbel noise (the documented contract: every draw comes from the generator passed in)."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()


def z_bar_by_hand(alpha: np.ndarray, tau: float, u: np.ndarray) -> np.ndarray:
    """softmax((alpha + eps) / tau) with eps = -log(-log(u)), in float64. ``(E, O)``."""
    eps = -np.log(-np.log(u))
    s = (alpha + eps) / tau
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- a renormalised pair on an edge --------------------------------------------------------------------

def test_a_pair_edge_is_w1_op1_plus_w2_op2() -> None:
    library = default_library()
    torch.manual_seed(0)
    names = ["conv3", "dil2", "maxpool", "skip"]
    calls = {"conv3": ("conv", {"kernel": 3}), "dil2": ("sep_conv", {"kernel": 3, "dilation": 2}),
             "maxpool": ("max_pool", {"kernel": 3}), "skip": ("identity", {})}
    edge = MixedEdge({n: library.build(k, p, 3, 3, 1, 2) for n, (k, p) in calls.items()})
    with torch.no_grad():
        for p in edge.parameters():  # random affine norms too: no operation is near another by chance
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, 3, 8, 8)
    alpha = torch.tensor([[1.2, -0.4, 0.3, 0.9], [0.0, 2.0, -1.0, 0.5], [0.7, 0.7, -0.2, -1.5]])
    tau, seed = 0.7, 11
    sample = sample_pair(alpha, tau, torch.Generator().manual_seed(seed))
    assert sample.complementary and sample.weights is not None
    z = z_bar_by_hand(alpha.double().numpy(), tau, uniforms(tuple(alpha.shape), seed))
    informative = 0
    for row, (i, j) in enumerate(sample.indices.tolist()):
        w_i, w_j = z[row, i] / (z[row, i] + z[row, j]), z[row, j] / (z[row, i] + z[row, j])
        with torch.no_grad():
            a, b = edge.ops[names[i]](x), edge.ops[names[j]](x)
            expected = w_i * a + w_j * b
            # the pair as the supernet's cells hand it to the edge: (operation, its weight) in the drawn order
            got = edge(x, [(names[i], sample.weights[row, 0]), (names[j], sample.weights[row, 1])], True)
        assert got is not None
        assert torch.allclose(got, expected.float(), atol=1e-5, rtol=1e-5), (row, (got - expected).abs().max())
        # a draw tells a swap apart only if the weights differ and the operations do
        if abs(w_i - w_j) > 0.2 and (a - b).abs().max() > 0.5:
            informative += 1
    assert informative >= 2  # measured: all three rows (|w1 - w2| = 0.33, 0.51, 0.75)


def test_pair_edges_in_a_supernet_forward_are_the_hand_computed_sums() -> None:
    """Through the supernet's own wiring (sample -> cell -> edge), every edge of every cell outputs
    ``w1 * op1(x) + w2 * op2(x)`` with a zero contributing nothing; weights by hand from the noise."""
    space = unet_space(levels=1, nodes=2, width=4, dims=2)
    net = build_supernet(space, in_channels=1, num_classes=2, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.weight_parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    tau = 0.8
    samples, by_hand = {}, {}
    for k, (key, alpha) in enumerate(net.arch.items()):
        logits = torch.randn(alpha.shape, generator=gen) * 1.5
        samples[key] = (net.op_names[key], sample_pair(logits, tau, torch.Generator().manual_seed(100 + k)))
        by_hand[key] = z_bar_by_hand(logits.double().numpy(), tau, uniforms(tuple(logits.shape), 100 + k))
    seen: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    handles = []
    for name, module in net.named_modules():
        if isinstance(module, MixedEdge):
            def hook(_m, inputs, output, name=name) -> None:
                seen[name] = (inputs[0], output)
            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        net(torch.randn(1, 1, 8, 8, generator=gen), samples=samples)
    for h in handles:
        h.remove()
    checked = both_ops = 0
    for cell_plan, cell in zip(net.plan.cells, net.cells, strict=True):
        names, sample = samples[cell_plan.key]
        z = by_hand[cell_plan.key]
        for row, edge in enumerate(cell_plan.spec.edge_list()):
            i, j = sample.indices[row].tolist()
            module = cell.edges[f"{edge[0]}_{edge[1]}"]
            x, out = seen[f"cells.{cell_plan.index}.edges.{edge[0]}_{edge[1]}"]
            expected = None
            with torch.no_grad():
                for o in (i, j):
                    if names[o] in cell.zeros:
                        continue
                    term = z[row, o] / (z[row, i] + z[row, j]) * module.ops[names[o]](x)
                    expected = term if expected is None else expected + term
            if expected is None:
                assert out is None
                continue
            assert out is not None
            assert torch.allclose(out, expected.float(), atol=1e-4, rtol=1e-5), (cell_plan.instance, edge)
            checked += 1
            both_ops += not ({names[i], names[j]} & cell.zeros)
    assert checked >= 12 and both_ops >= 8  # 4 cells x 5 edges; measured 20 checked, 15 without a zero


# --- the temperature ------------------------------------------------------------------------------------

ALPHA = np.array([1.0, -0.5, 0.3, 0.0, 1.6])
PAIRS = list(itertools.combinations(range(len(ALPHA)), 2))
DRAWS = 40000


def drawn(tau: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pair frequencies, max weight per draw, first weight per draw) of DRAWS independent draws."""
    alpha = torch.tensor(ALPHA, dtype=torch.float32).expand(DRAWS, -1).contiguous()
    sample = sample_pair(alpha, tau, torch.Generator().manual_seed(seed))
    assert sample.weights is not None
    index = {p: k for k, p in enumerate(PAIRS)}
    counts = np.bincount([index[(i, j)] for i, j in sample.indices.tolist()], minlength=len(PAIRS))
    w = sample.weights.double().numpy()
    return counts / DRAWS, w.max(axis=1), w[:, 0]


def numpy_reference(tau: float, draws: int = 200000, seed: int = 0) -> tuple[np.ndarray, float, float]:
    """Independent Monte Carlo with numpy's Gumbel: E[q] per pair, E[max z_hat], E[z_hat of the first
    operation of the drawn pair], the pair's draw averaged exactly (weights q) and the noise by sampling."""
    eps = np.random.default_rng(seed).gumbel(size=(draws, len(ALPHA)))
    s = (ALPHA + eps) / tau
    z = np.exp(s - s.max(axis=1, keepdims=True))
    z /= z.sum(axis=1, keepdims=True)
    zi, zj = z[:, [i for i, _ in PAIRS]], z[:, [j for _, j in PAIRS]]
    q = (zi + zj) / (len(ALPHA) - 1)
    return q.mean(0), float((q * np.maximum(zi, zj) / (zi + zj)).sum(1).mean()), \
        float((q * zi / (zi + zj)).sum(1).mean())


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum())


@pytest.mark.parametrize("tau", [0.3, 3.0])
def test_draws_follow_an_independent_monte_carlo_at_each_temperature(tau: float) -> None:
    freq, max_w, first_w = drawn(tau, seed=int(tau * 10))
    q, ref_max, ref_first = numpy_reference(tau)
    # measured: TV 0.007 (0.3) / 0.006 (3.0), sampling noise at 40000 draws; mean max weight 0.9555 / 0.6403
    # against 0.9553 / 0.6407; mean first weight 0.394 / 0.469 against 0.393 / 0.470
    assert total_variation(freq, q) < 0.025
    assert abs(max_w.mean() - ref_max) < 0.01
    assert abs(first_w.mean() - ref_first) < 0.01
    # a sampler that used temperature 1 whatever it is told would be far outside these bounds
    q1, ref_max1, _ = numpy_reference(1.0)
    assert total_variation(q, q1) > 0.045  # measured 0.052 (0.3), 0.079 (3.0)
    assert abs(ref_max - ref_max1) > 0.1  # measured 0.132, 0.183


def test_near_zero_temperature_is_the_gumbel_max_limit() -> None:
    tau = 0.01
    freq, max_w, _ = drawn(tau, seed=5)
    softmax = np.exp(ALPHA) / np.exp(ALPHA).sum()
    analytic = np.array([(softmax[i] + softmax[j]) / (len(ALPHA) - 1) for i, j in PAIRS])
    assert total_variation(freq, analytic) < 0.025  # measured 0.006; at temperature 1: 0.059
    assert max_w.mean() > 0.98  # measured 0.9987 (0.825 at temperature 1); one-hot z_bar: the pair's argmax gets (almost) all the weight
    # draw by draw: the pair holds argmax(alpha + eps) of the very noise the sampler used, with weight ~1
    alpha = torch.tensor(ALPHA, dtype=torch.float32).expand(2000, -1).contiguous()
    sample = sample_pair(alpha, tau, torch.Generator().manual_seed(6))
    assert sample.weights is not None
    best = (ALPHA - np.log(-np.log(uniforms((2000, len(ALPHA)), 6)))).argmax(axis=1)
    rows = sample.indices.numpy()
    holds = (rows == best[:, None]).any(axis=1)
    assert holds.mean() > 0.97  # measured 0.996; at temperature 1: 0.71
    weight_of_best = np.where(rows[:, 0] == best, sample.weights[:, 0].numpy(), sample.weights[:, 1].numpy())
    assert np.median(weight_of_best[holds]) > 0.999
