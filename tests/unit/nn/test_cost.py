"""Cost estimates: parameters and FLOPs agree with the real network, memory with the profiler's peak."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scnas_dsl.errors import CompileError
from scnas_dsl.nn import build_network, build_supernet
from scnas_dsl.nn.cost import estimate, format_bytes
from tests.unit.nn.spaces import baseline_genotype, baseline_space, random_genotype, unet_space


def test_fixed_network_params_and_flops() -> None:
    space, genotype = baseline_space(dims=2, width=4), baseline_genotype()
    report = estimate(space, genotype=genotype, patch=(8, 8), in_channels=3, num_classes=2)
    real = build_network(space, genotype, in_channels=3, num_classes=2)
    assert report.params == sum(p.numel() for p in real.parameters())
    assert report.flops == 2 * report.macs
    # the head is a 1x1 conv with bias from 4 to 2 channels at 8x8: 4 * 2 * 64 multiply-adds
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        real(torch.randn(1, 3, 8, 8))
    assert report.flops == counter.get_total_flops()
    assert sum(c.flops for c in report.cells) < report.flops  # stem and head are outside the cells
    assert [c.instance for c in report.cells] == [name for name, _ in space.instances()]
    assert sum(c.params for c in report.cells) == sum(p.numel() for p in real.cells.parameters())
    step = report.steps["network"]
    assert step.weight_bytes == step.gradient_bytes == report.params * 4 == step.optimizer_bytes // 2


def test_node_width_split_against_full() -> None:
    # full (DARTS): every node has the level's width, a cell concatenating k nodes outputs k times it;
    # split (the default): the level's width is the cell output, ceil(C_l / k) per node
    split = unet_space(levels=2, nodes=3, dims=3, width=6)
    full = unet_space(levels=2, nodes=3, dims=3, width=6, node_width="full")
    genotype = random_genotype(split, seed=3)
    nets = {name: build_network(space, genotype, in_channels=1, num_classes=2)
            for name, space in (("split", split), ("full", full))}
    for cp_split, cp_full in zip(nets["split"].plan.cells, nets["full"].plan.cells, strict=True):
        level_width = 6 * 2**cp_split.out_level
        count = len(cp_split.output_nodes)
        assert count == len(cp_full.output_nodes)
        assert cp_full.width == level_width and cp_full.out_width == count * level_width
        assert cp_split.width == -(-level_width // count) and cp_split.out_width == count * cp_split.width
        assert level_width <= cp_split.out_width < level_width + count
    x = torch.randn(1, 1, 8, 8, 8)
    assert nets["split"](x).shape == nets["full"](x).shape == (1, 2, 8, 8, 8)
    costs = {name: estimate(net, patch=(8, 8, 8)) for name, net in nets.items()}
    assert costs["split"].flops < costs["full"].flops / 2
    assert costs["split"].params < costs["full"].params / 2
    assert costs["split"].memory_bytes < costs["full"].memory_bytes


def test_supernet_pair_is_cheaper_and_flat_in_the_set_size() -> None:
    small = estimate(unet_space(levels=1, dims=2), patch=(16, 16), in_channels=1, num_classes=2)
    big = estimate(unet_space(levels=1, dims=2, copies=2), patch=(16, 16), in_channels=1, num_classes=2)
    assert small.kind == "supernet" and small.arch_logits == 4 * 5 * 8
    for report in (small, big):
        s = report.steps
        assert s["single"].flops < s["pair"].flops < s["full"].flops
        assert s["pair"].activation_bytes < s["full"].activation_bytes
    assert big.steps["full"].flops > 1.8 * small.steps["full"].flops
    assert big.steps["pair"].flops < 1.4 * small.steps["pair"].flops
    real = build_supernet(unet_space(levels=1, dims=2), in_channels=1, num_classes=2)
    assert small.params == sum(p.numel() for p in real.weight_parameters())


def test_estimate_from_models_and_errors() -> None:
    space = unet_space(levels=1, dims=2)
    net = build_network(space, random_genotype(space), in_channels=2, num_classes=3)
    assert estimate(net, patch=(8, 8)).params == sum(p.numel() for p in net.parameters())
    sup = build_supernet(space, in_channels=2, num_classes=3)
    assert estimate(sup, patch=(8, 8)).kind == "supernet"
    with pytest.raises(CompileError, match="not divisible"):
        estimate(space, patch=(8, 7), in_channels=1, num_classes=1)
    with pytest.raises(CompileError, match="in_channels"):
        estimate(space, patch=(8, 8))
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(12) == "12 B"


@pytest.mark.slow
def test_memory_estimate_matches_the_profiled_peak() -> None:
    # the profiler's allocation events give the peak of live tensors in one training step; the estimate
    # (saved activations + weights + gradients + Adam state) must be close to it
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    space = unet_space(levels=1, nodes=2, dims=3, width=4)
    genotype = random_genotype(space, seed=3)
    torch.manual_seed(0)
    net = build_network(space, genotype, in_channels=1, num_classes=2)
    opt = torch.optim.Adam(net.parameters())
    x = torch.randn(2, 1, 16, 16, 16)

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        net(x).square().mean().backward()
        opt.step()

    step()  # Adam state and gradients exist from here on, as in a long run
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        step()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    measured = int(np.array(sizes).sum(axis=1).max())
    estimated = estimate(space, genotype=genotype, patch=(16, 16, 16), batch_size=2, in_channels=1,
                         num_classes=2).memory_bytes
    assert 0.7 < estimated / measured < 1.3, (estimated, measured)
