"""The size check refuses a patch whose deepest level would be one voxel (instance norm needs more than one
value per channel), with the smallest valid size, instead of a crash in the first forward."""

from __future__ import annotations

import pytest
import torch

from scnas_dsl.errors import CompileError
from scnas_dsl.loader import load
from scnas_dsl.nn.network import build_network, check_input_size
from scnas_dsl.nn.plan import size_problem


def test_one_voxel_at_the_deepest_level_is_refused_with_the_smallest_valid_size() -> None:
    problem = size_problem((16, 16, 16), 4, 3)
    assert problem is not None
    assert "one voxel" in problem and "32" in problem
    assert size_problem((32, 16, 16), 4, 3) is None
    assert size_problem((8, 8), 3, 2) is not None and "16" in (size_problem((8, 8), 3, 2) or "")
    assert size_problem((8, 16), 3, 2) is None
    assert size_problem((1, 1, 1), 0, 3) is not None


def test_the_forward_refuses_it_before_instance_norm_crashes() -> None:
    space, genotype = load("specs/baselines/unet3d.scn").genotype()
    net = build_network(space, genotype, in_channels=1, num_classes=2, stem_width=4)
    levels = net.plan.levels
    step = 2**levels
    with pytest.raises(CompileError, match="one voxel"):
        check_input_size(net, (step, step, step))
    with pytest.raises(CompileError, match="one voxel"):
        net(torch.zeros(1, 1, step, step, step))
    assert net(torch.zeros(1, 1, 2 * step, step, step)).shape[2:] == (2 * step, step, step)


def test_a_negative_or_zero_size_is_named_without_a_misleading_hint() -> None:
    from scnas_dsl.nn.plan import size_problem

    for spatial in ((-16, 16, 16), (0, 16, 16)):
        problem = size_problem(spatial, 3, 3)
        assert problem is not None and "positive" in problem and "-8" not in problem
