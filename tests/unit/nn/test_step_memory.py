"""The memory savings of the search step (issue 10): detached logits in the weight step, one LeakyReLU per
cell state shared by the operations that start with it, only the dominant operation of a lopsided pair, and
per-cell activation checkpointing. Each must keep outputs and gradients (or, for the dominant operation,
stay within its stated bound) and keep less for backward."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from scnas_dsl import model as m
from scnas_dsl.nn import build_network, build_supernet
from scnas_dsl.nn.cells import MixedEdge
from scnas_dsl.nn.cost import estimate
from scnas_dsl.nn.supernet import Supernet
from tests.unit.nn.spaces import unet_space


def saved_bytes(params: list[nn.Parameter], run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """``run()`` and the bytes of the distinct storages autograd saved for backward (parameters excluded)."""
    skip = {p.untyped_storage()._cdata for p in params}
    saved: dict[int, int] = {}
    keep: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s._cdata not in skip:
            saved[s._cdata] = s.nbytes()
            keep.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return out, sum(saved.values())


def supernet(levels: int = 1, nodes: int = 3, width: int = 4, seed: int = 0) -> Supernet:
    net = build_supernet(unet_space(levels=levels, nodes=nodes, width=width, dims=2), in_channels=1,
                         num_classes=2, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # random affine norms too: no two operations agree by chance
        for p in net.weight_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return net


def grads(net: nn.Module, out: torch.Tensor, target: torch.Tensor,
          params: list[nn.Parameter] | None = None) -> list[torch.Tensor | None]:
    params = params if params is not None else list(net.parameters())
    return list(torch.autograd.grad((out * target).sum(), params, allow_unused=True))


Run = tuple[torch.Tensor, list[torch.Tensor | None], list[torch.Tensor | None], int]


def runs_with(net: Supernet, setting: str, values: tuple[object, ...], x: torch.Tensor, target: torch.Tensor
              ) -> list[Run]:
    """For each value of the supernet's ``setting``: the same fresh draw in forward (the sampler's state
    restored), then (output, weight gradients, logit gradients, bytes saved for backward)."""
    start = net.sampler_state_dict()
    out_runs = []
    for value in values:
        setattr(net, setting, value)
        net.load_sampler_state_dict(start)
        out, kept = saved_bytes(list(net.parameters()), lambda: net(x))
        weights, arch = net.weight_parameters(), net.arch_parameters()
        g = grads(net, out, target, weights + arch)
        out_runs.append((out.detach(), g[:len(weights)], g[len(weights):], kept))
    return out_runs


def same(a: list[torch.Tensor | None], b: list[torch.Tensor | None], rel: float = 0.0) -> bool:
    """The same gradients (None for the same parameters), each within ``rel`` of its largest magnitude."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        if (x is None) != (y is None):
            return False
        if x is not None and y is not None:
            scale = max(float(x.abs().max()), 1.0)
            if float((x - y).abs().max()) > rel * scale:
                return False
    return True


# --- 1. the weight step draws with detached logits ----------------------------------------------------------

def test_weight_step_with_detached_logits_draws_the_same_and_keeps_less() -> None:
    net = supernet()
    net.temperature = 1.0
    x, target = torch.randn(2, 1, 8, 8), torch.randn(2, 2, 8, 8)
    start = net.sampler_state_dict()
    weights = net.weight_parameters()
    runs = []
    for arch_grad in (True, False):
        net.load_sampler_state_dict(start)
        out, kept = saved_bytes(list(net.parameters()), lambda arch_grad=arch_grad: net(x, arch_grad=arch_grad))
        assert net.last_samples is not None
        indices = {k: s.indices.clone() for k, (_, s) in net.last_samples.items()}
        runs.append((out.detach(), grads(net, out, target, weights), indices, kept,
                     net.generator.get_state(), net.sample_counts()))
    (out_a, g_a, idx_a, kept_a, gen_a, counts_a), (out_b, g_b, idx_b, kept_b, gen_b, counts_b) = runs
    # the same draws, in the same order, counted the same; the random stream ends in the same state
    assert all(torch.equal(idx_a[k], idx_b[k]) for k in idx_a)
    assert torch.equal(gen_a, gen_b) and counts_a == counts_b
    # the same output and exactly the same weight gradients
    assert torch.equal(out_a, out_b) and same(g_a, g_b)
    # nothing alpha's gradient alone needs is kept: one (a - b) per pair edge fewer (and the Gumbel graph)
    assert kept_b < kept_a, (kept_a, kept_b)
    assert all(not s.weights.requires_grad for _, s in net.last_samples.values() if s.weights is not None)


# --- 2. one LeakyReLU per cell state ------------------------------------------------------------------------

def test_shared_activation_gives_the_same_outputs_and_gradients_and_keeps_less_in_the_supernet() -> None:
    # in float64: shared, the operations' gradients are summed before the one LeakyReLU's backward instead
    # of after each copy's, which in float32 differs by rounding (measured: up to 1e-5 of the largest
    # gradient); in float64 any real difference would stand out
    net = supernet(levels=2).double()
    net.temperature = 2.0
    gen = torch.Generator().manual_seed(5)
    x, target = (torch.randn(2, c, 8, 8, generator=gen, dtype=torch.float64) for c in (1, 2))
    (out_s, g_s, a_s, kept_s), (out_u, g_u, a_u, kept_u) = runs_with(net, "share_activations", (True, False),
                                                                       x, target)
    assert torch.equal(out_s, out_u)  # the same operations on the same values
    assert same(g_s, g_u, rel=1e-12) and same(a_s, a_u, rel=1e-12)
    assert all(g is not None for g in a_s)  # alpha gets its gradient through both forms
    # several edges leave each state and a pair runs two operations on each: each kept its own copy
    assert kept_s < 0.95 * kept_u, (kept_s, kept_u)


def all_conv_genotype(space: m.SearchSpace) -> m.Genotype:
    """Every edge of every cell a convolution: each state feeds two or more operations that start with
    LeakyReLU."""
    cells = []
    instances = dict(space.instances())
    for key in space.structure_keys():
        spec = instances.get(key) or space.cell(key)
        assert spec is not None
        nodes = tuple(
            m.NodeChoice(node=node, edges=tuple(m.ChosenEdge(op="conv3", src=s) for s, d in spec.edge_list()
                                                if d == node))
            for node in spec.node_names())
        cells.append(m.CellChoice(cell=key, nodes=nodes))
    return m.Genotype(name="convs", space=space.name, cells=tuple(cells))


def test_shared_activation_gives_the_same_outputs_and_gradients_and_keeps_less_in_a_fixed_network() -> None:
    space = unet_space(levels=1, nodes=3, width=4, dims=2)
    torch.manual_seed(0)
    net = build_network(space, all_conv_genotype(space), in_channels=1, num_classes=2).double()
    x, target = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.randn(2, 2, 8, 8, dtype=torch.float64)
    runs = []
    for share in (True, False):
        net.share_activations = share
        out, kept = saved_bytes(list(net.parameters()), lambda: net(x))  # type: ignore[arg-type,return-value]
        runs.append((out.detach(), grads(net, out, target), kept))
    (out_s, g_s, kept_s), (out_u, g_u, kept_u) = runs
    assert torch.equal(out_s, out_u) and same(g_s, g_u, rel=1e-12)
    assert kept_s < 0.9 * kept_u, (kept_s, kept_u)


def test_an_operation_without_the_attribute_is_called_as_before() -> None:
    calls: list[tuple[int, ...]] = []

    class Plain(nn.Module):  # a plugin's operation: no activates_input, a forward(x) only
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(x.shape))
            return x * 2

    edge = MixedEdge({"plain": Plain()})
    x = torch.randn(1, 2, 4, 4)
    shared = torch.full_like(x, float("nan"))  # would poison the output if the plugin got it
    out = edge(x, [("plain", None)], False, lambda: shared)
    assert out is not None and torch.equal(out, x * 2) and calls == [(1, 2, 4, 4)]


# --- 3. only the dominant operation of a lopsided pair ------------------------------------------------------

def test_a_lopsided_pair_runs_its_dominant_operation_only_within_the_bound() -> None:
    net = supernet(levels=1, nodes=3)
    net.temperature = 0.1  # late in annealing: most pairs are lopsided
    calls: dict[str, int] = {}
    seen: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    handles = []
    for name, module in net.named_modules():
        if isinstance(module, MixedEdge):
            handles.append(module.register_forward_hook(
                lambda _m, i, o, name=name: seen.__setitem__(name, (i[0], o))))
            for op_name, op in module.ops.items():
                handles.append(op.register_forward_hook(
                    lambda *_, key=f"{name}.{op_name}": calls.__setitem__(key, calls.get(key, 0) + 1)))
    x = torch.randn(1, 1, 8, 8)
    start = net.sampler_state_dict()
    with torch.no_grad():
        net(x)
    counts_after = net.sample_counts()
    checked_single = checked_both = 0
    assert net.last_samples is not None
    for cp, cell in zip(net.plan.cells, net.cells, strict=True):
        names, sample = net.last_samples[cp.key]
        assert sample.values is not None and sample.weights is not None
        for row, (src, dst) in enumerate(cp.spec.edge_list()):
            prefix = f"cells.{cp.index}.edges.{src}_{dst}"
            i, j = sample.indices[row].tolist()
            values = sample.values[row]
            ran = {n for n in (names[i], names[j]) if calls.get(f"{prefix}.{n}", 0)}
            edge = cell.edges[f"{src}_{dst}"]
            x_in, y = seen[prefix]
            if float(values.min()) < net.dominant_threshold:
                dominant, other = (names[i], names[j]) if values[0] > values[1] else (names[j], names[i])
                assert ran <= {dominant}, (prefix, ran, dominant)  # the smaller one never runs
                # the exact output w_d * a + w_o * b differs from a by w_o * |a - b| at most
                with torch.no_grad():  # a zero (no module) gives zeros
                    a = edge.ops[dominant](x_in) if dominant in edge.ops else None
                    b = edge.ops[other](x_in) if other in edge.ops else None
                assert a is not None or b is not None
                a = a if a is not None else torch.zeros_like(b)  # type: ignore[arg-type]
                b = b if b is not None else torch.zeros_like(a)
                got = y if y is not None else torch.zeros_like(a)
                w_o = float(values.min())
                assert torch.all((got - (a + w_o * (b - a))).abs() <= w_o * (a - b).abs() + 1e-6)
                checked_single += 1
            else:  # both non-zero operations of the pair run, as before
                assert ran == {n for n in (names[i], names[j]) if n in edge.ops}
                checked_both += 1
    assert checked_single >= 3
    for h in handles:
        h.remove()
    # the counts say what was sampled: the same as with the rule off (both operations of every pair)
    net.load_sampler_state_dict(start)
    net.dominant_threshold = 0.0
    with torch.no_grad():
        net(x)
    assert net.sample_counts() == counts_after


def test_the_rule_leaves_balanced_pairs_alone_and_keeps_less_late() -> None:
    net = supernet(levels=1, nodes=3)
    x, target = torch.randn(1, 1, 8, 8), torch.randn(1, 2, 8, 8)
    net.temperature = 5.0  # early: no pair is lopsided, so the rule changes nothing
    (out_on, g_on, a_on, _), (out_off, g_off, a_off, _) = runs_with(net, "dominant_threshold", (1e-3, 0.0),
                                                                    x, target)
    assert torch.equal(out_on, out_off) and same(g_on, g_off) and same(a_on, a_off)
    net.temperature = 0.1  # late: most pairs run one operation, and keep no (a - b)
    (_, _, _, kept_on), (_, _, _, kept_off) = runs_with(net, "dominant_threshold", (1e-3, 0.0), x, target)
    assert kept_on < 0.8 * kept_off, (kept_on, kept_off)


# --- 4. per-cell activation checkpointing -------------------------------------------------------------------

def test_checkpointed_cells_give_the_same_outputs_and_gradients_and_keep_less() -> None:
    net = supernet(levels=2, nodes=3)
    net.temperature = 1.0
    gen = torch.Generator().manual_seed(6)
    x, target = torch.randn(2, 1, 8, 8, generator=gen), torch.randn(2, 2, 8, 8, generator=gen)
    (out_p, g_p, a_p, kept_p), (out_c, g_c, a_c, kept_c) = runs_with(net, "checkpoint_cells", (False, True),
                                                                       x, target)
    assert torch.allclose(out_p, out_c, atol=1e-5, rtol=1e-5)
    assert same(g_p, g_c, rel=1e-5) and same(a_p, a_c, rel=1e-5)
    assert all(g is not None for g in a_c)  # alpha's gradient passes the checkpoints
    assert kept_c < 0.5 * kept_p, (kept_p, kept_c)  # outside the cells only


def test_checkpointed_fixed_network_and_estimate() -> None:
    space = unet_space(levels=2, nodes=3, width=4, dims=2)
    torch.manual_seed(0)
    genotype = all_conv_genotype(space)
    net = build_network(space, genotype, in_channels=1, num_classes=2)
    x, target = torch.randn(2, 1, 8, 8), torch.randn(2, 2, 8, 8)
    runs = []
    for ckpt in (False, True):
        net.checkpoint_cells = ckpt
        out = net(x)
        assert isinstance(out, torch.Tensor)
        runs.append((out.detach(), grads(net, out, target)))
    assert torch.allclose(runs[0][0], runs[1][0], atol=1e-5, rtol=1e-5) and same(runs[0][1], runs[1][1], 1e-5)
    for report in (estimate(net, patch=(16, 16)), estimate(space, patch=(16, 16), in_channels=1, num_classes=2)):
        for step in report.steps.values():
            assert 0 < step.checkpointed_activation_bytes < 0.8 * step.activation_bytes
            assert step.checkpointed_memory_bytes < step.memory_bytes


def test_auto_checkpointing_is_chosen_only_when_it_alone_fits(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """``checkpoint_cells: auto``: on (with a note) when the estimate fits the GPU only with checkpointing,
    off when it fits without; ``True``/``False`` as said; a search that fits neither way is refused."""
    import types

    import pytest

    from scnas_dsl.errors import RunError
    from scnas_dsl.nn import cost
    from scnas_dsl.training import search
    from scnas_dsl.training.config import SearchConfig
    from scnas_dsl.training.device import Runtime, training_memory

    net = supernet(levels=1, nodes=1)
    runtime = Runtime(device=torch.device("cuda", 0))
    gib = 2**30  # the estimate's figures (its checkpointed one is tested above), without measuring
    report = types.SimpleNamespace(steps={"pair": cost.StepCost(0, 0, 20 * gib, gib, gib, 2 * gib, 6 * gib)},
                                   memory_bytes=24 * gib)
    monkeypatch.setattr(cost, "estimate", lambda *_a, **_k: report)
    plain = training_memory(report, runtime, "pair")
    ckpt = training_memory(report, runtime, "pair", checkpoint=True)
    assert ckpt < plain
    total = [0]
    # the budget is the GPU's free memory less a margin, and the need counts the loss's tensors too (both
    # tested in test_runs_checkpoints): here the decision alone, on the estimate's figures
    from scnas_dsl.training import device

    monkeypatch.setattr(device, "gpu_budget", lambda _runtime: (total[0], total[0]))
    monkeypatch.setattr(device, "step_extras", lambda *_a: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _d: "a small GPU")

    def check(setting: object, gpu: int) -> bool:
        total[0] = gpu
        cfg = SearchConfig(spec="s", data="d", batch_size=2, checkpoint_cells=setting)  # type: ignore[arg-type]
        search._check_memory(net, runtime, (8, 8), cfg)
        return net.checkpoint_cells

    assert check("auto", plain + 1) is False and "checkpointing is on" not in capsys.readouterr().err
    assert check("auto", (plain + ckpt) // 2) is True
    note = capsys.readouterr().err
    assert "checkpointing is on" in note
    assert f"{plain / gib:.1f} GiB without checkpointing, {ckpt / gib:.1f} GiB with it" in note
    assert check(True, plain + 1) is True and check(False, (plain + ckpt) // 2 + plain) is False
    with pytest.raises(RunError, match="without checkpointing|needs about"):
        check(False, (plain + ckpt) // 2)
    with pytest.raises(RunError, match="even with per-cell checkpointing"):
        check("auto", ckpt - 1)
