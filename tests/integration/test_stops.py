"""A stop (Ctrl-C, SIGTERM) is honoured within seconds wherever a command is: preprocessing between cases
(also with a pool of workers), prediction between batches of windows, the search's discretisation gap, a
search with loader workers stopped by a signal to its whole process group, and retraining's validation
under torchrun. Each leaves what it finished, exits with 130 and continues when run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from filelock import FileLock

from scnas_dsl.data import preprocess as preprocess_module
from scnas_dsl.data.synth import synthesize
from scnas_dsl.prediction import predict as predict_module
from scnas_dsl.prediction.predict import predict_run
from scnas_dsl.stopping import RunInterrupted
from scnas_dsl.training.config import SearchConfig, TrainConfig
from scnas_dsl.training.retrain import run_train
from scnas_dsl.training.search import run_search
from tests.helpers import heart_cases, invoke, tiny_space
from tests.integration.torchrun import run_ranks

BASELINE = Path(__file__).resolve().parents[2] / "specs" / "baselines" / "unet3d.scn"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Five generated cases (preprocessed), the tiny search space, and a retraining run of one step."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("stops")
    raw, pre = heart_cases(root)
    spec = tiny_space(root)
    cfg = TrainConfig(genotype=str(BASELINE), data=str(pre), out=str(root / "run"), epochs=1, batch_size=2,
                      patch=(16, 16, 16), stem_width=4, batches_per_epoch=1, device="cpu", progress=False,
                      augment=False, mirror_validation=False)
    assert run_train(cfg) is not None
    return {"root": root, "raw": raw, "pre": pre, "spec": spec, "run": root / "run"}


def _records(pre: Path) -> set[str]:
    return {p.name.removesuffix(".json") for p in (pre / "cases").glob("*.json")}


def test_preprocessing_stops_between_cases_and_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = synthesize(tmp_path / "data", "heart", cases=4, shape=(20, 20, 20), seed=1)
    real = preprocess_module._process_case
    done: list[str] = []

    def then_terminated(case: Any, *args: Any) -> dict[str, Any]:
        summary = real(case, *args)
        done.append(case.id)
        os.kill(os.getpid(), signal.SIGTERM)  # a batch system stopping the job after the first case
        return summary

    monkeypatch.setattr(preprocess_module, "_process_case", then_terminated)
    with pytest.raises(RunInterrupted, match="SIGTERM: preprocessing stopped after 1 of 4 case.*continues"):
        preprocess_module.preprocess_dataset(raw, out=tmp_path / "pre", spacing=None, progress=False)
    assert len(done) == 1 and _records(tmp_path / "pre") == set(done)  # no case started after the signal
    assert not (tmp_path / "pre" / "preprocessed.json").exists()  # the manifest: only when all are done
    FileLock(tmp_path / "pre" / ".scnas-lock").acquire(timeout=0)  # released
    monkeypatch.setattr(preprocess_module, "_process_case", real)
    pre = preprocess_module.preprocess_dataset(raw, out=tmp_path / "pre", spacing=None, progress=False)
    assert sorted(pre.redone) == sorted(set(pre.case_ids) - set(done))  # the finished case is kept
    assert len(pre.case_ids) == 4


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_preprocessing_with_workers_stops_them_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal to the whole process group reaches the pool's workers too: they ignore it, the main process
    stops handing out cases and ends them; the cache keeps exactly the cases that finished."""
    raw = synthesize(tmp_path / "data", "heart", cases=6, shape=(20, 20, 20), seed=1)
    workers: list[int] = []
    survived: list[int] = []
    real = preprocess_module._Workers._finished

    def group_terminated(self: Any, bar: Any) -> None:
        real(self, bar)
        if not workers and self._pool is not None:
            workers.extend(self._pool._processes)
            for pid in workers:  # as os.killpg would (without hitting pytest's own group): the workers first
                os.kill(pid, signal.SIGTERM)
            time.sleep(0.5)
            survived.extend(pid for pid in workers if _alive(pid))
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(preprocess_module._Workers, "_finished", group_terminated)
    with pytest.raises(RunInterrupted, match="preprocessing stopped after [12] of 6 case"):
        preprocess_module.preprocess_dataset(raw, out=tmp_path / "pre", spacing=None, workers=2, progress=False)
    assert len(workers) == 2 and survived == workers  # the signal left the workers to the main process
    assert not [pid for pid in workers if _alive(pid)]  # which ended them: none left running
    finished = _records(tmp_path / "pre")
    assert 1 <= len(finished) < 6
    assert not list((tmp_path / "pre" / "cases").glob(".*.tmp"))
    FileLock(tmp_path / "pre" / ".scnas-lock").acquire(timeout=0)
    monkeypatch.setattr(preprocess_module._Workers, "_finished", real)
    pre = preprocess_module.preprocess_dataset(raw, out=tmp_path / "pre", spacing=None, workers=2, progress=False)
    assert sorted(pre.redone) == sorted(set(pre.case_ids) - finished)


def test_prediction_stops_between_windows_and_the_same_command_continues(
        workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = sorted((workspace["raw"] / "imagesTr").glob("*.nii.gz"))[:3]
    out = tmp_path / "pred"
    real = predict_module.sliding_window_inference
    calls: list[int] = []
    windows_after_signal: list[int] = []

    def terminated_in_the_second(model: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            model.register_forward_hook(lambda *_: windows_after_signal.append(1))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(predict_module, "sliding_window_inference", terminated_in_the_second)
    command = ["predict", workspace["run"], *[a for i in images for a in ("--input", i)], "--output", out,
               "--no-mirror", "--probabilities", "--device", "cpu", "--quiet"]
    code, output = invoke(*command)
    assert code == 130, output
    assert "prediction stopped after 1 of 3 case(s)" in output and "continues" in output
    assert windows_after_signal == []  # abandoned before the next batch of windows
    first = images[0].name
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [first]  # no half-written file
    assert not [p for p in out.rglob(".*")]
    record = json.loads((out / "prediction.json").read_text())
    assert record["stopped"] and record["cases"] == [first.removesuffix(".nii.gz")]
    before = (out / first).read_bytes()
    code, output = invoke(*[("--mirror" if a == "--no-mirror" else a) for a in command])  # another option
    assert code == 1 and "continued only by the same command" in output, output

    monkeypatch.setattr(predict_module, "sliding_window_inference", real)
    code, output = invoke(*command)
    assert code == 0, output
    assert "2 prediction(s) written" in output and "1 kept from the stopped call" in output
    assert (out / first).read_bytes() == before  # kept, not predicted again
    record = json.loads((out / "prediction.json").read_text())
    assert "stopped" not in record and len(record["cases"]) == 3
    assert len(list((out / "probabilities").glob("*.nii.gz"))) == 3
    code, output = invoke(*command)  # finished: the usual rule again, nothing is overwritten without --force
    assert code == 1 and "overwrite" in output
    made = predict_run(workspace["run"], images, out, mirror=False, device="cpu", force=True, progress=False)
    assert len(made.files) == 3 and made.continued == []  # --force redoes every case


def test_a_stop_during_the_search_gap_ends_the_epoch_without_it(workspace: dict[str, Path], tmp_path: Path) -> None:
    """The discretisation gap (a diagnosis at the end of each search epoch) is skipped by a stop: the epoch is
    recorded without it, its checkpoint saved, and the run stops after it."""
    cfg = SearchConfig(spec=str(workspace["spec"]), data=str(workspace["pre"]), out=str(tmp_path / "run"),
                       epochs=3, batch_size=2, patch=(16, 16, 16), stem_width=4, batches_per_epoch=2,
                       device="cpu", progress=False, augment=False)

    def terminate_at_the_last_step(epoch: int, step: int) -> None:
        if (epoch, step) == (0, 1):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(RunInterrupted, match="after epoch 1"):
        run_search(cfg, on_step=terminate_at_the_last_step)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["epoch"] == 0 and record["argmax_loss"] is None and record["sampled_dice"] is None
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 0)
    assert run_search(cfg, resume=True, stop_after_epochs=1) is None
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1] and records[1]["argmax_loss"] is not None


def _group_members(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` still alive (zombies excluded)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc")
def test_search_with_workers_stopped_by_sigterm_to_its_process_group(workspace: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    """As a batch system stopping a job: SIGTERM to the whole process group (the main process and its loader
    workers) mid-epoch. Exit 130, a checkpoint, no traceback, no worker left; --resume continues from the
    checkpoint's step and finishes."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "scnas_dsl", "search", str(workspace["spec"]), "--data", str(workspace["pre"]),
               "--out", str(run), "--stem-width", "4", "--patch", "16", "16", "16", "--batch-size", "2",
               "--batches-per-epoch", "6", "--device", "cpu", "--quiet", "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([*command, "--epochs", "100"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (run / "metrics.jsonl").is_file() and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert len(_group_members(process.pid)) >= 3  # the main process and its two loader workers
        time.sleep(0.3)  # into the second epoch
        os.killpg(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "checkpoint saved" in err and "--resume" in err, err[-3000:]
    deadline = time.time() + 20
    while _group_members(process.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert _group_members(process.pid) == []  # no orphaned worker
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    epochs = len((run / "metrics.jsonl").read_text().splitlines())
    assert state["epoch"] == epochs >= 1  # the record of every epoch the checkpoint has done, no more
    done = subprocess.run([*command, "--epochs", str(state["epoch"] + 1), "--resume"], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed at epoch {state['epoch'] + 1}" in (run / "log.txt").read_text()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(state["epoch"] + 1))
    assert (run / "genotype.scn").is_file()


# Under torchrun each rank retrains; in the second run rank 0 alone gets SIGTERM as its validation begins
# (fold 0 of five cases has one validation case: rank 1 has none and waits for the others' scores).
SCRIPT = """\
import json, os, signal, sys
import torch.distributed as dist
from scnas_dsl.training import retrain as retrain_module
from scnas_dsl.training.config import TrainConfig
from scnas_dsl.training.retrain import run_train
from scnas_dsl.stopping import RunInterrupted

spec, data, root = sys.argv[1:4]
rank = int(os.environ["RANK"])
dist.init_process_group("gloo")  # once for the three runs (they leave a group they did not make as it is)

def config(out):
    return TrainConfig(genotype=spec, data=data, out=os.path.join(root, out), epochs=2, batch_size=2,
                       patch=(16, 16, 16), stem_width=4, batches_per_epoch=2, device="cpu", progress=False,
                       val_every=1, mirror_validation=False, augment=False)

whole = run_train(config("whole"))
real = retrain_module.sliding_window_inference
calls = []

def terminated(model, *args, **kwargs):
    calls.append(1)
    if rank == 0 and len(calls) == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(model, *args, **kwargs)

retrain_module.sliding_window_inference = terminated
try:
    run_train(config("parts"))
    outcome = "finished"
except RunInterrupted as err:
    outcome = str(err)
retrain_module.sliding_window_inference = real
parts = run_train(config("parts"), resume=True)
with open(os.path.join(root, f"rank{rank}.json"), "w") as f:
    json.dump({"outcome": outcome, "whole": [whole.best_dice, whole.best_epoch],
               "parts": [parts.best_dice, parts.best_epoch]}, f)
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_a_stop_during_distributed_validation_stops_every_rank_there(workspace: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    run_ranks([str(BASELINE), str(workspace["pre"]), str(tmp_path)], tmp_path, SCRIPT, timeout=400)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:  # both ranks abandoned the validation at the same point, none hung in a gather
        assert "during the validation of epoch 1" in report["outcome"], report["outcome"]
        assert report["parts"] == report["whole"]
    history = (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [0, 1]
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "parts" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
