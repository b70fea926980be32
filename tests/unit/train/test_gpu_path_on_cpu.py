"""Crashes of the GPU path reproduced with the CPU standing in: an enabled fp16 gradient scaler when no
logit took part in a step, a scaler state from a run without one, a checkpoint of a machine with more GPUs."""

from __future__ import annotations

import pytest
import torch

from scnas_dsl.train import checkpoint
from scnas_dsl.train.device import Runtime, load_scaler_state
from scnas_dsl.train.search import update


def _enabled_scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", enabled=True)  # what fp16 on a V100 or T4 gets, here on the CPU


def test_a_step_in_which_no_parameter_took_part_is_skipped_with_an_enabled_scaler() -> None:
    runtime = Runtime(device=torch.device("cpu"))
    alpha = torch.nn.Parameter(torch.zeros(3, 4))
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.Adam([alpha], lr=0.1)
    scaler = _enabled_scaler()
    loss = (weight * 2.0).sum()  # every edge ran its dominant operation: the loss does not depend on alpha
    assert update([alpha], optimizer, scaler, loss, runtime) is False
    assert torch.equal(alpha.detach(), torch.zeros(3, 4)) and alpha.grad is None
    # a later step with gradients steps as usual, with the same scaler
    loss = (alpha * torch.arange(12.0).view(3, 4)).sum()
    assert update([alpha], optimizer, scaler, loss, runtime) is True
    assert not torch.equal(alpha.detach(), torch.zeros(3, 4))


def test_an_empty_scaler_state_resumes_into_an_enabled_scaler() -> None:
    saved_without = torch.amp.GradScaler("cpu", enabled=False).state_dict()  # a CPU, float32 or bf16 run
    assert saved_without == {}
    scaler = _enabled_scaler()
    load_scaler_state(scaler, saved_without)  # torch itself: "The source state dict is empty"
    assert scaler.get_scale() == _enabled_scaler().get_scale()
    used = _enabled_scaler()
    used.scale(torch.tensor(1.0))  # the scale exists once a loss was scaled
    used.update(new_scale=1024.0)
    load_scaler_state(scaler, used.state_dict())
    assert scaler.get_scale() == 1024.0
    load_scaler_state(torch.amp.GradScaler("cpu", enabled=False), used.state_dict())  # the other way round


def test_random_states_of_more_gpus_than_this_machine_has(monkeypatch: pytest.MonkeyPatch) -> None:
    state = checkpoint.capture_rng()
    state["cuda"] = [torch.full((8,), i, dtype=torch.uint8) for i in range(4)]  # saved on four GPUs
    restored: list[tuple[int, int]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device=0: restored.append((int(s[0]), device)))
    checkpoint.restore_rng(state)
    assert restored == [(0, 0), (1, 1)]
