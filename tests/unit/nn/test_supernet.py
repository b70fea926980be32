"""The supernet: only sampled operations run, gradients, seeds, eval mode, derive, supernet-fixed ==
fixed network, transfer, and clear errors."""

from __future__ import annotations

import pytest
import torch

from scnas_dsl.errors import CompileError
from scnas_dsl.nn import TemperatureSchedule, build_network, build_supernet, check_input_size
from tests.unit.nn.spaces import baseline_genotype, baseline_space, random_genotype, unet_space


def ran_ops(net: torch.nn.Module) -> tuple[dict[str, int], list]:
    """Count forward calls of every operation module (``...edges.X.ops.NAME``)."""
    calls: dict[str, int] = {}
    handles = []
    for name, module in net.named_modules():
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] == "ops":
            calls[name] = 0

            def hook(_m, _i, _o, name=name) -> None:
                calls[name] += 1

            handles.append(module.register_forward_hook(hook))
    return calls, handles


def sampled_names(net, samples) -> set[str]:
    """Module names of the operations a sample asks for (zeros have no module)."""
    out = set()
    for cell_plan, cell in zip(net.plan.cells, net.cells, strict=True):
        names, sample = samples[cell_plan.key]
        for (src, dst), row in zip(cell_plan.spec.edge_list(), sample.indices.tolist(), strict=True):
            for i in row:
                if names[i] not in cell.zeros:
                    out.add(f"cells.{cell_plan.index}.edges.{src}_{dst}.ops.{names[i]}")
    return out


@pytest.mark.parametrize("sampling", ["pair", "single"])
def test_only_sampled_operations_run(sampling: str) -> None:
    net = build_supernet(unet_space(levels=2), in_channels=1, num_classes=2, sampling=sampling, seed=3)
    calls, _ = ran_ops(net)
    x = torch.randn(1, 1, 16, 16)
    for _ in range(3):
        for k in calls:
            calls[k] = 0
        net(x)
        expected = sampled_names(net, net.last_samples)
        ran = {k for k, v in calls.items() if v}
        assert ran == expected
        # every cell of a type uses the one structure sampled for that type in this step
        assert all(v == 1 for k, v in calls.items() if v)
        k = 2 if sampling == "pair" else 1
        assert all(s.indices.shape[1] == k for _, s in net.last_samples.values())


def test_a_sampled_zero_costs_nothing() -> None:
    space = unet_space(levels=1, nodes=1)
    net = build_supernet(space, in_channels=1, num_classes=2)
    calls, _ = ran_ops(net)
    samples = net.argmax_samples()
    for _key, (names, sample) in samples.items():  # every edge: the pair (none, skip)
        sample.indices = torch.tensor([[names.index("none")]] * sample.indices.shape[0])
    out = net(torch.randn(1, 1, 8, 8), samples=samples)
    assert out.shape == (1, 2, 8, 8) and not any(calls.values())


def test_gradients_reach_sampled_ops_and_logits_only() -> None:
    net = build_supernet(unet_space(levels=1), in_channels=1, num_classes=2, sampling="pair", seed=1)
    net(torch.randn(2, 1, 8, 8)).square().mean().backward()
    sampled = sampled_names(net, net.last_samples)
    for name, p in net.named_parameters():
        if ".ops." not in name:
            continue
        op = name.split(".ops.")[0] + ".ops." + name.split(".ops.")[1].split(".")[0]
        if op in sampled:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, f"{name} got a gradient but was not sampled"
    for key, alpha in net.arch.items():
        assert alpha.grad is not None and alpha.grad.abs().sum() > 0, key
        assert set(net.arch_parameters()).isdisjoint(set(net.weight_parameters()))
    n_params = sum(1 for _ in net.parameters())
    assert len(net.arch_parameters()) + len(net.weight_parameters()) == n_params


def test_supernet_with_every_edge_fixed_equals_fixed_network() -> None:
    torch.manual_seed(0)
    space = unet_space(levels=2, nodes=3, width=3)
    genotype = random_genotype(space, seed=4)
    supernet = build_supernet(space, in_channels=2, num_classes=3)
    fixed = build_network(space, genotype, in_channels=2, num_classes=3)
    sd = fixed.state_dict()
    super_sd = supernet.state_dict()
    assert set(sd) <= set(super_sd)
    for v in sd.values():  # random weights, so that a wrongly wired op cannot agree by chance
        v.copy_(torch.randn_like(v))
    _, unexpected = supernet.load_state_dict(sd, strict=False)
    assert not unexpected
    x = torch.randn(2, 2, 16, 16)
    supernet.train()
    fixed.train()
    a = supernet(x, samples=supernet.genotype_samples(genotype))
    b = fixed(x)
    assert torch.allclose(a, b, atol=1e-6)


def test_eval_uses_argmax_deterministically_and_matches_derived_network() -> None:
    space = unet_space(levels=1, nodes=2)
    net = build_supernet(space, in_channels=1, num_classes=2, seed=2)
    with torch.no_grad():
        for alpha in net.arch.values():  # make zero lose everywhere so that nothing is pruned
            alpha.copy_(torch.randn(alpha.shape))
            alpha[:, -1] = -10
    net.eval()
    x = torch.randn(1, 1, 8, 8)
    assert torch.equal(net(x), net(x))
    genotype, report = net.derive()
    assert report == []
    fixed = build_network(space, genotype, in_channels=1, num_classes=2)
    fixed.load_state_dict({k: v for k, v in net.state_dict().items() if k in fixed.state_dict()})
    fixed.eval()
    assert torch.allclose(net(x), fixed(x), atol=1e-6)


def test_derive_cuts_zero_edges_and_prunes_dead_nodes() -> None:
    space = unet_space(levels=1, nodes=3)
    net = build_supernet(space, in_channels=1, num_classes=2)
    names = net.op_names["enc"]
    edges = net.edge_lists["enc"]
    with torch.no_grad():
        alpha = net.arch["enc"]
        alpha.zero_()
        alpha[:, names.index("conv3")] = 1
        for r, (_, dst) in enumerate(edges):
            if dst == "n1":
                alpha[r, names.index("none")] = 5
    genotype, report = net.derive()
    enc = genotype.cell("enc")
    assert enc is not None and "n1" not in [n.node for n in enc.nodes]
    assert all(e.src != "n1" for n in enc.nodes for e in n.edges)
    assert any("enc: n1 has no incoming edge left: pruned" in line for line in report)
    assert any("in0->n1 chose 'none': cut" in line for line in report)
    fixed = build_network(space, genotype, in_channels=1, num_classes=2)
    assert fixed(torch.randn(1, 1, 8, 8)).shape == (1, 2, 8, 8)
    assert fixed.cells[1].plan.out_width == 2 * fixed.cells[1].plan.width  # concat of the two live nodes


def test_derive_never_returns_a_dead_cell() -> None:
    space = unet_space(levels=1, nodes=2)
    net = build_supernet(space, in_channels=1, num_classes=2)
    with torch.no_grad():
        net.arch["dec"][:, net.op_names["dec"].index("none")] = 9
    genotype, report = net.derive()
    assert any("derived again without none" in line for line in report)
    build_network(space, genotype, in_channels=1, num_classes=2)


def test_seed_fixes_draws_and_sampler_state_resumes_exactly() -> None:
    space = unet_space(levels=1)
    a = build_supernet(space, in_channels=1, num_classes=2, seed=7)
    b = build_supernet(space, in_channels=1, num_classes=2, seed=7)
    x = torch.randn(1, 1, 8, 8)
    a(x)
    state = a.sampler_state_dict()
    b(x)
    for key in a.arch:
        assert torch.equal(a.last_samples[key][1].indices, b.last_samples[key][1].indices)
    a(x)
    b.load_sampler_state_dict(state)
    b(x)
    for key in a.arch:
        assert torch.equal(a.last_samples[key][1].indices, b.last_samples[key][1].indices)


def test_temperature_probabilities_and_counts() -> None:
    net = build_supernet(unet_space(levels=1), in_channels=1, num_classes=2,
                         temperature=TemperatureSchedule(2.0, 0.5, "linear"))
    assert net.temperature == 2.0
    net.set_progress(1.0)
    assert net.temperature == 0.5
    probs = net.arch_probabilities()
    assert set(probs) == {"red", "enc", "exp", "dec"}
    assert pytest.approx(sum(probs["enc"]["in0->n0"].values())) == 1.0
    for _ in range(3):
        net(torch.randn(1, 1, 8, 8))
    counts = net.sample_counts()
    assert sum(counts["enc"]["in0->n0"].values()) == 3 * 2  # 3 steps, a pair each
    net.reset_sample_counts()
    assert sum(net.sample_counts()["enc"]["in1->n1"].values()) == 0


def test_share_by_level_gives_every_instance_its_structure() -> None:
    space = unet_space(levels=2, share="by_level")
    net = build_supernet(space, in_channels=1, num_classes=2)
    assert sorted(net.arch) == sorted(name for name, _ in space.instances())
    net(torch.randn(1, 1, 16, 16))
    genotype, _ = net.derive()
    assert genotype.cell("enc[1]") is not None
    build_network(space, genotype, in_channels=1, num_classes=2)(torch.randn(1, 1, 16, 16))


@pytest.mark.parametrize("output", ["concat", "sum"])
def test_full_sampling_and_outputs(output: str) -> None:
    net = build_supernet(unet_space(levels=1, output=output), in_channels=1, num_classes=2, sampling="full")
    calls, _ = ran_ops(net)
    net(torch.randn(1, 1, 8, 8)).sum().backward()
    assert all(calls.values())  # every (non-zero) operation ran


def test_baseline_with_one_input_explicit_edges_and_node_output() -> None:
    space = baseline_space()
    net = build_network(space, baseline_genotype(), in_channels=3, num_classes=4)
    y = net(torch.randn(2, 3, 8, 8))
    assert y.shape == (2, 4, 8, 8)
    assert not list(net.cells[0].edges["in0_n1"].parameters())  # identity at stride 1 has no weights
    sup = build_supernet(space, in_channels=3, num_classes=4)
    assert sup(torch.randn(2, 3, 8, 8)).shape == (2, 4, 8, 8)


def test_transfer_to_other_channels_and_classes() -> None:
    space = unet_space(levels=2, dims=3, width=2)
    genotype = random_genotype(space, seed=1)
    brain = build_network(space, genotype, in_channels=4, num_classes=3)
    # stem widths divisible by the 2 output nodes: the decoder skips then need no projection in either
    # (with node_width split an odd width rounds the cell output up to 2 * ceil(w / 2) != w, adding one)
    heart = build_network(space, genotype, in_channels=1, num_classes=1, stem_width=4)
    assert heart(torch.randn(1, 1, 8, 8, 8)).shape == (1, 1, 8, 8, 8)
    assert brain(torch.randn(1, 4, 8, 8, 8)).shape == (1, 3, 8, 8, 8)
    assert set(brain.state_dict()) == set(heart.state_dict())


def test_the_paper_shape_in_3d() -> None:
    # 12 cells, 4 nodes, 2 inputs, three levels: at 16^3 the deepest level is 2^3
    # node_width split: a level's width 8 * 2^l is the cell output, four nodes of a quarter of it each
    space = unet_space(levels=3, nodes=4, dims=3, width=8)
    assert len(space.instances()) == 12
    net = build_supernet(space, in_channels=1, num_classes=2)
    net(torch.randn(1, 1, 16, 16, 16)).mean().backward()
    assert [c.width for c in net.plan.cells] == [4, 4, 8, 8, 16, 16, 8, 8, 4, 4, 2, 2]
    assert [c.out_width for c in net.plan.cells] == [16, 16, 32, 32, 64, 64, 32, 32, 16, 16, 8, 8]
    assert net.plan.cells[6].skip is not None and net.plan.cells[6].skip.source == 4  # bridge + red[2]


def test_impossible_sizes_are_clear_errors() -> None:
    space = unet_space(levels=3, dims=3, width=2)
    with pytest.raises(CompileError, match=r"patch 100 is not divisible by 8 = 2\^3 levels: use 96 or 104"):
        check_input_size(space, (96, 100, 96))
    with pytest.raises(CompileError, match="3D but the input has 2"):
        check_input_size(space, (96, 96))
    net = build_supernet(space, in_channels=2, num_classes=2)
    with pytest.raises(CompileError, match="patch 4 is not divisible by 8.*use 8"):
        net(torch.randn(1, 2, 8, 8, 4))
    with pytest.raises(CompileError, match="in_channels=2"):
        net(torch.randn(1, 3, 8, 8, 8))
    check_input_size(net, (16, 8, 24))


def test_impossible_networks_are_clear_errors() -> None:
    space = unet_space(levels=1)
    bad_topology = space.unet.model_copy(update={"decoder": space.unet.decoder[:1] + space.unet.decoder})
    with pytest.raises(CompileError, match="above the stem's resolution"):
        build_supernet(space.model_copy(update={"unet": bad_topology}), in_channels=1, num_classes=1)
    short = space.unet.model_copy(update={"decoder": space.unet.decoder[1:]})
    with pytest.raises(CompileError, match="ends at level 1"):
        build_supernet(space.model_copy(update={"unet": short}), in_channels=1, num_classes=1)
    genotype = random_genotype(space).model_copy(update={"cells": random_genotype(space).cells[1:]})
    with pytest.raises(CompileError, match="has no cell"):
        build_network(space, genotype, in_channels=1, num_classes=1)
    with pytest.raises(CompileError, match="unknown sampling"):
        build_supernet(space, in_channels=1, num_classes=1, sampling="half")


def test_derived_genotype_prints_and_loads_back() -> None:
    from scnas_dsl.graph.printer import print_document
    from scnas_dsl.loader import load_text
    from scnas_dsl.model import Document

    space = unet_space(levels=1, nodes=3)
    net = build_supernet(space, in_channels=1, num_classes=2, seed=5)
    with torch.no_grad():
        net.arch["dec"][:2, net.op_names["dec"].index("none")] = 5  # dec: n0 loses both inputs
    genotype, report = net.derive("found")
    assert "dec: n0 has no incoming edge left: pruned" in report
    text = print_document(Document(spaces=(space,), genotypes=(genotype,)))
    loaded_space, loaded = load_text(text, "found.scn").genotype("found")
    assert loaded == genotype and loaded_space == space


def test_consecutive_resizing_cells_resample_by_four() -> None:
    space = unet_space(levels=1, dims=2)
    unet = space.unet.model_copy(update={
        "encoder": (space.unet.encoder[0], space.unet.encoder[0]), "bridge": (),
        "decoder": (space.unet.decoder[0], space.unet.decoder[0]),
    })
    space = space.model_copy(update={"unet": unet})  # red red | exp exp
    net = build_supernet(space, in_channels=1, num_classes=2)
    assert [i.factor for i in net.plan.cells[3].inputs] == [4.0, 2.0]  # exp[1] reads red[1] two levels down
    # red[1] works at level 1 (then stride 2 on its edges): the stem it reads is down-sampled first
    assert [i.factor for i in net.plan.cells[1].inputs] == [0.5, 1.0]
    assert net.plan.cells[1].inputs[0].source == -1 and net.plan.levels == 2
    assert net(torch.randn(1, 1, 8, 8)).shape == (1, 2, 8, 8)


def test_complementary_pair_form_has_the_same_gradients_and_keeps_less() -> None:
    # w1 * a + w2 * b (the plain form) against b + w1 * (a - b) (the supernet's form for a renormalised
    # pair): same output and same gradients for alpha and the operations' weights, on the same sample
    from scnas_dsl.nn.cells import MixedEdge
    from scnas_dsl.nn.sampler import sample_pair
    from scnas_dsl.ops.library import default_library

    library = default_library()
    torch.manual_seed(0)
    ops = {"conv3": library.build("conv", {"kernel": 3}, 4, 4, 1, 3),
           "dil2": library.build("sep_conv", {"kernel": 3, "dilation": 2}, 4, 4, 1, 3)}
    edge = MixedEdge(ops)
    x = torch.randn(2, 4, 6, 6, 6)
    target = torch.randn(2, 4, 6, 6, 6)
    alpha = torch.randn(1, 2, requires_grad=True)
    results = []
    for complementary in (False, True):
        edge.zero_grad()
        alpha.grad = None
        sample = sample_pair(alpha, 0.7, torch.Generator().manual_seed(4))
        assert sample.complementary and sample.weights is not None
        sample.weights.retain_grad()
        names = list(ops)
        choice = [(names[i], sample.weights[0, c]) for c, i in enumerate(sample.indices[0].tolist())]
        saved: list[int] = []

        def pack(t: torch.Tensor, saved: list[int] = saved) -> torch.Tensor:
            if t.dim() == 5:  # activations (the 3D weights of the convolutions too: both forms have them)
                saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = edge(x, choice, complementary)
        assert out is not None
        (out * target).sum().backward()
        w_grad = sample.weights.grad[0]
        results.append((out.detach(), alpha.grad.clone(), {n: p.grad.clone() for n, p in edge.named_parameters()},
                        w_grad[0] - w_grad[1] if not complementary else w_grad[0], sum(saved)))
    (out_plain, a_plain, p_plain, w_plain, saved_plain), (out_new, a_new, p_new, w_new, saved_new) = results
    assert torch.allclose(out_plain, out_new, atol=1e-5)
    assert torch.allclose(a_plain, a_new, atol=1e-4, rtol=1e-4) and a_plain.abs().sum() > 0
    # the new form differentiates w1 only: its gradient is dL/dw1 - dL/dw2 of the plain form
    assert torch.allclose(w_plain, w_new, atol=1e-3, rtol=1e-4)
    for name, grad in p_plain.items():
        assert torch.allclose(grad, p_new[name], atol=1e-5, rtol=1e-4), name
    assert saved_plain - saved_new == out_plain.numel()  # one activation fewer
