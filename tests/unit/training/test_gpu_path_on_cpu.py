"""Crashes of the GPU path reproduced with the CPU standing in: an enabled fp16 gradient scaler when no
logit took part in a step, a scaler state from a run without one, a checkpoint of a machine with more GPUs."""

from __future__ import annotations

import pytest
import torch

from scnas_dsl.training import checkpoint
from scnas_dsl.training.device import Runtime, load_scaler_state
from scnas_dsl.training.search import update
from tests.helpers import generated_set


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


def test_the_other_ranks_wait_for_the_data_preparation_on_a_long_timeout_group(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    import datetime

    import torch.distributed as dist

    from scnas_dsl.errors import RunError
    from scnas_dsl.training import data_context
    from scnas_dsl.training.config import SearchConfig
    from scnas_dsl.training.device import setup_runtime

    made: list[dict] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # a group torchrun's script made already
    monkeypatch.setattr(dist, "new_group", lambda **kwargs: made.append(kwargs) or "the wait group")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    runtime = setup_runtime("cpu")
    assert runtime.wait_group == "the wait group"
    assert made == [{"backend": "gloo", "timeout": datetime.timedelta(hours=24)}]  # NCCL's default: 10 minutes
    monkeypatch.setenv("SCNAS_WAIT_MINUTES", "90")
    assert setup_runtime("cpu").wait_group and made[-1]["timeout"] == datetime.timedelta(minutes=90)
    monkeypatch.setenv("SCNAS_WAIT_MINUTES", "soon")
    with pytest.raises(RunError, match="SCNAS_WAIT_MINUTES='soon'"):
        setup_runtime("cpu")

    # open_data: rank 1 (local rank 1 of node 0) waits on that group for its node's local rank 0
    _, pre = generated_set(tmp_path, "heart", size=16)
    groups: list[object] = []
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("GROUP_RANK", "0")
    monkeypatch.delenv("SCNAS_WAIT_MINUTES")
    runtime = setup_runtime("cpu")
    from scnas_dsl.data.preprocess import Preprocessed

    def gather(objects: list, mine: object, group: object = None) -> None:  # noqa: ANN001
        groups.append(group)
        objects[:] = [("0", 0, str(pre), Preprocessed(pre).settings_key, None), mine]

    monkeypatch.setattr(dist, "all_gather_object", gather)
    cfg = SearchConfig(spec="s.scn", data=str(tmp_path / "not read by this rank"), progress=False)
    assert data_context.open_data(cfg, runtime).pre.root == pre
    assert groups == ["the wait group"]

    # a node whose preparation failed tells every rank at once (none waits for a day)
    def failed(objects: list, mine: object, group: object = None) -> None:  # noqa: ANN001
        objects[:] = [("0", 0, None, None, "no such data set folder: /data/x"), mine]

    monkeypatch.setattr(dist, "all_gather_object", failed)
    with pytest.raises(RunError, match="the data preparation of node 0 failed: no such data set folder"):
        data_context.open_data(cfg, runtime)


def test_no_amp_means_float32_convolutions_on_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from scnas_dsl.training.device import setup_runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # an A100
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        assert setup_runtime("cuda", amp=False).amp_dtype is None
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
        assert setup_runtime("cuda", amp=True).amp_dtype == torch.bfloat16
        assert torch.backends.cudnn.allow_tf32 is True and torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_the_ranks_gpu_is_bound_to_the_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    from scnas_dsl.training.device import setup_runtime

    calls: list[dict] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(dist, "new_group", lambda **kwargs: "wait group")
    for name, value in (("WORLD_SIZE", "4"), ("RANK", "3"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        runtime = setup_runtime("cuda")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    assert calls == [{"backend": "nccl", "device_id": torch.device("cuda", 1)}]
    assert runtime.device == torch.device("cuda", 1)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])])
def test_dice_counts_stay_on_the_logits_device_until_read(device: str) -> None:
    from scnas_dsl.training.search_report import DiceCounts

    counts = DiceCounts(3)
    logits = torch.zeros(1, 3, 4, 4, 4, device=device)
    logits[:, 1] = 1.0
    target = torch.ones(1, 4, 4, 4, dtype=torch.long, device=device)
    counts.add(logits, target)
    counts.add(logits, target)
    assert counts.counts is not None and counts.counts.device.type == device  # no copy to the host per batch
    assert counts.values() == [128.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # class 1: tp 128; class 2: nothing
