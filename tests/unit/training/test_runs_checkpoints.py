"""Checkpoints (atomic, code-free loading, every random state), run folders, the paper's defaults."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from scnas_dsl.errors import CheckpointError, RunError
from scnas_dsl.training import checkpoint as ckpt
from scnas_dsl.training.config import SearchConfig, TrainConfig, resolve_config
from scnas_dsl.training.runs import RunFolder


def test_rng_states_round_trip_through_a_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached Gaussian in NumPy's state
    ckpt.save_checkpoint(tmp_path / "c.pt", {"kind": "test", "rng": ckpt.capture_rng()})
    expected = (random.random(), np.random.normal(), torch.rand(3))
    state = ckpt.load_checkpoint(tmp_path / "c.pt")
    ckpt.restore_rng(state["rng"])
    got = (random.random(), np.random.normal(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_a_crash_while_writing_leaves_the_old_checkpoint(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"kind": "test", "value": torch.tensor([1.0])})

    def crash(obj, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is stopped in the middle of the write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, {"kind": "test", "value": torch.tensor([2.0])})
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["value"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_a_corrupt_checkpoint_is_a_checkpoint_error_naming_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="last.pt"):
        ckpt.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_checkpoints_are_loaded_without_running_code(tmp_path) -> None:  # type: ignore[no-untyped-def]
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"kind": "search", "x": Evil()}, path)
    with pytest.raises(CheckpointError):
        ckpt.load_checkpoint(path)


def test_run_folder_refuses_to_overwrite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = RunFolder(tmp_path / "run")
    run.prepare("search", resume=False, force=False)
    (run.path / "genotype.scn").write_text("precious")
    with pytest.raises(RunError, match="already exists.*--resume.*--force"):
        RunFolder(run.path).prepare("search", resume=False, force=False)
    assert (run.path / "genotype.scn").read_text() == "precious"
    with pytest.raises(RunError, match="not a 'train' run"):
        RunFolder(run.path).prepare("train", resume=True, force=False)
    RunFolder(run.path).prepare("search", resume=True, force=False)  # resuming is allowed
    assert (run.path / "genotype.scn").exists()
    RunFolder(run.path).prepare("search", resume=False, force=True)  # forced: replaced
    assert not (run.path / "genotype.scn").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("not a run")
    for force in (True, False):
        with pytest.raises(RunError, match="not a scnas run folder"):
            RunFolder(other).prepare("search", resume=False, force=force)
    assert (other / "notes.txt").read_text() == "not a run"
    # a run that stopped before writing anything (only its marker) does not block the corrected command
    stub = RunFolder(tmp_path / "stub")
    stub.prepare("search", resume=False, force=False)
    RunFolder(stub.path).prepare("search", resume=False, force=False)
    assert sorted(p.name for p in stub.path.iterdir()) == [".scnas-run"]


def test_the_paper_hyperparameters_are_the_defaults() -> None:
    s = SearchConfig(spec="s.scn", data="d")
    # the paper's weight learning rate; Adam's usual betas, not the printed (0.1, 0.001) (docs/training.md)
    assert (s.weight_optimizer.lr, s.weight_optimizer.betas) == (0.025, (0.9, 0.999))
    assert (s.arch_optimizer.lr, s.arch_optimizer.betas) == (0.003, (0.5, 0.999))
    assert (s.plateau.factor, s.plateau.patience) == (0.1, 20)
    assert (s.epochs, s.batch_size, s.stem_width, s.sampling) == (200, 4, 48, "pair")
    assert s.spacing == (0.7, 0.7, 0.7)
    t = TrainConfig(genotype="g.scn", data="d")
    assert (t.optimizer.lr, t.optimizer.betas) == (3e-4, (0.9, 0.999))
    assert (t.plateau.factor, t.plateau.patience, t.min_lr) == (0.2, 30, 1e-7)
    assert (t.epochs, t.batch_size) == (500, 8)
    # the width is resolved per genotype: 68 (the paper's retraining width) for a searched genotype, a
    # hand-written network's own width otherwise (test_retraining_width.py)
    assert t.stem_width is None


def test_settings_from_a_file_are_overridden_by_the_command_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    toml = tmp_path / "c.toml"
    toml.write_text('epochs = 7\nbatch_size = 2\n[weight_optimizer]\nlr = 0.01\nbetas = [0.9, 0.99]\n')
    cfg = resolve_config(SearchConfig, toml, spec="s.scn", data="d", batch_size=3, epochs=None)
    assert (cfg.epochs, cfg.batch_size, cfg.weight_optimizer.lr) == (7, 3, 0.01)
    # one optimiser's betas from the command line keep the file's learning rate, or the paper's default
    cfg = resolve_config(SearchConfig, toml, spec="s.scn", data="d", weight_optimizer={"betas": (0.1, 0.001)})
    assert (cfg.weight_optimizer.lr, cfg.weight_optimizer.betas) == (0.01, (0.1, 0.001))
    cfg = resolve_config(SearchConfig, None, spec="s.scn", data="d", arch_optimizer={"betas": (0.9, 0.999)})
    assert (cfg.arch_optimizer.lr, cfg.arch_optimizer.betas) == (0.003, (0.9, 0.999))
    assert cfg.weight_optimizer.betas == (0.9, 0.999)
    part = tmp_path / "part.json"  # a file may give only one optimiser's betas
    part.write_text(json.dumps({"weight_optimizer": {"betas": [0.1, 0.001]}}))
    cfg = resolve_config(SearchConfig, part, spec="s.scn", data="d")
    assert (cfg.weight_optimizer.lr, cfg.weight_optimizer.betas) == (0.025, (0.1, 0.001))
    for betas in ((1.5, 0.9), (-0.1, 0.5), (0.9, 1.0), (float("nan"), 0.5)):
        with pytest.raises(RunError, match="weight_optimizer.betas.*at least 0 and below 1"):
            resolve_config(SearchConfig, None, spec="s.scn", data="d", weight_optimizer={"betas": betas})
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"epochs": 0}))
    with pytest.raises(RunError, match="epochs"):
        resolve_config(SearchConfig, js, spec="s.scn", data="d")
    js.write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(RunError, match="learning_rate"):
        resolve_config(SearchConfig, js, spec="s.scn", data="d")


def test_a_configuration_too_big_for_the_gpu_is_refused_with_the_figures(monkeypatch) -> None:  # type: ignore[no-untyped-def]

    from scnas_dsl.training.device import Runtime, check_gpu_memory

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (15 * gib, 16 * gib))  # the context uses 1
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Test GPU")
    runtime = Runtime(device=torch.device("cuda", 0))
    check_gpu_memory(runtime, 8 * gib, "the search")  # fits: nothing happens
    with pytest.raises(RunError, match=r"the search needs about 40.0 GiB.*Test GPU has 13.4 GiB usable \(16.0 GiB "
                                       r"in all.*--patch"):
        check_gpu_memory(runtime, 40 * gib, "the search")
    # the card's whole memory is not the budget: what is in use and a margin are not there to take
    with pytest.raises(RunError, match="13.4 GiB usable"):
        check_gpu_memory(runtime, int(15.5 * gib), "the search")
    check_gpu_memory(Runtime(device=torch.device("cpu")), 10**15, "the search")  # the CPU is not checked


def test_checkpointing_is_decided_with_what_the_estimate_leaves_out(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from scnas_dsl.nn.cost import StepCost
    from scnas_dsl.training.device import Runtime, settle_checkpointing, step_extras

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (40 * gib, 40 * gib))  # budget: 36 GiB
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Test GPU")
    steps = {"pair": StepCost(0, 0, 30 * gib, gib, gib, 2 * gib, checkpointed_activation_bytes=4 * gib)}
    report = SimpleNamespaceReport(steps=steps, memory_bytes=34 * gib)
    report.patch, report.batch_size = (128, 128, 128), 2
    one = Runtime(device=torch.device("cuda", 0))
    # the loss's softmax and one-hot: 2 x 4 bytes x batch 2 x 4 classes x 128^3 voxels = 0.125 GiB
    assert step_extras(report, one, 4) == 2 * 4 * 2 * 4 * 128**3
    assert not settle_checkpointing(report, one, "auto", "the search", "pair", num_classes=4)  # 34.1 of 36 GiB
    # with two processes the all-reduce's flat copy of the gradients (1 GiB) is counted too, and 40 classes'
    # loss tensors (1.25 GiB): 36.25 GiB no longer fit, checkpointing does
    two = Runtime(device=torch.device("cuda", 0), world_size=2)
    assert step_extras(report, two, 40) == 2 * 4 * 2 * 40 * 128**3 + gib
    assert settle_checkpointing(report, two, "auto", "the search", "pair", num_classes=40)
    assert not settle_checkpointing(report, one, "auto", "the search", "pair", num_classes=40)


def test_resuming_with_other_settings_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from scnas_dsl.training.resume import check_resumed_settings

    (tmp_path / "config.json").write_text(json.dumps({"seed": 0, "epochs": 10, "batch_size": 4}))
    check_resumed_settings(tmp_path, {"seed": 0, "epochs": 20, "batch_size": 4})  # longer is fine
    with pytest.raises(RunError, match=r"batch_size: 4 -> 2") as refused:
        check_resumed_settings(tmp_path, {"seed": 0, "epochs": 10, "batch_size": 2})
    # the advice names every setting that may change, as the check allows them
    for option in ("--epochs", "--workers", "--compile", "--checkpoint-cells", "--quiet", "augment_on"):
        assert option in str(refused.value)
    # a table names only what changed in it
    budget = {"flops": 4e7, "params": None, "weight": 0.1}
    (tmp_path / "config.json").write_text(json.dumps({"seed": 0, "budget": budget}))
    with pytest.raises(RunError) as refused:
        check_resumed_settings(tmp_path, {"seed": 0, "budget": {**budget, "flops": 2e7, "memory": 1e9}})
    assert "budget.flops: 40000000.0 -> 20000000.0; budget.memory: None -> 1000000000.0)" in str(refused.value)
    assert "weight" not in str(refused.value).split("(only")[0]
    (tmp_path / "config.json").write_text(json.dumps({"compile": False, "checkpoint_cells": "auto", "augment_on": "auto"}))
    check_resumed_settings(tmp_path, {"compile": True, "checkpoint_cells": True, "augment_on": "device"})


def test_checkpoint_cells_setting_is_true_false_or_auto() -> None:
    from scnas_dsl.training.config import TrainConfig

    assert TrainConfig(genotype="g", data="d", checkpoint_cells="TRUE").checkpoint_cells is True
    assert TrainConfig(genotype="g", data="d", checkpoint_cells="auto").checkpoint_cells == "auto"
    with pytest.raises(ValueError, match=r'should be true, false or "auto" \(got \'maybe\'\)'):
        TrainConfig(genotype="g", data="d", checkpoint_cells="maybe")


def test_gpu_memory_need_follows_the_sampling_and_mixed_precision() -> None:
    from scnas_dsl.nn.cost import StepCost
    from scnas_dsl.training.device import Runtime, training_memory

    gib = 2**30
    steps = {"pair": StepCost(0, 0, 20 * gib, gib, gib, 2 * gib), "full": StepCost(0, 0, 60 * gib, gib, gib, 2 * gib)}
    report = SimpleNamespaceReport(steps=steps, memory_bytes=24 * gib)
    fp32 = Runtime(device=torch.device("cuda", 0))
    bf16 = Runtime(device=torch.device("cuda", 0), amp_dtype=torch.bfloat16)
    assert training_memory(report, fp32, "pair") == 24 * gib
    assert training_memory(report, fp32, "full") == 64 * gib
    # mixed precision keeps the activations in 16 bits; weights, gradients and Adam state stay in float32
    assert training_memory(report, bf16, "pair") == 14 * gib
    # a fixed network's report has one step, used whatever the sampling
    single = SimpleNamespaceReport(steps={"network": steps["pair"]}, memory_bytes=24 * gib)
    assert training_memory(single, bf16) == 14 * gib


class SimpleNamespaceReport:
    def __init__(self, steps: dict, memory_bytes: int) -> None:  # type: ignore[type-arg]
        self.steps, self.memory_bytes = steps, memory_bytes


def test_resuming_from_a_checkpoint_of_the_other_kind_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from scnas_dsl.training.resume import resume_state

    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"kind": "search", "epoch": 1})
    assert resume_state(tmp_path, {}, path, "search")["epoch"] == 1
    with pytest.raises(CheckpointError, match=r"last.pt: a 'search' checkpoint, not a training checkpoint"):
        resume_state(tmp_path, {}, path, "train")


def test_an_empty_or_hostile_checkpoint_is_a_message_that_does_not_advise_running_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "last.pt"
    empty.write_bytes(b"")  # a copy that did not finish: an EOFError without a message (an IndexError before)
    with pytest.raises(CheckpointError, match=r"last.pt: the file is empty or cut short.*--force") as refused:
        ckpt.load_checkpoint(empty)
    assert "--resume" not in str(refused.value)  # no advice that loops back to itself

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("this would run",))

    hostile = tmp_path / "evil.pt"
    torch.save({"kind": "train", "x": Payload()}, hostile)
    with pytest.raises(CheckpointError, match="never loads") as refused:
        ckpt.load_checkpoint(hostile)
    assert "weights_only" not in str(refused.value)  # torch's hint to load it anyway is not passed on


def test_a_broken_config_json_refuses_the_resume_with_the_file_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from scnas_dsl.training.resume import check_resumed_settings

    for text in ("{not json", "[1, 2]", ""):
        (tmp_path / "config.json").write_text(text)
        with pytest.raises(RunError, match=r"config.json: .*--force"):
            check_resumed_settings(tmp_path, {"seed": 0})
