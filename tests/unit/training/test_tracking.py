"""Experiment tracking (``--log tensorboard,wandb``): the event files and W&B's offline run files, read back with
their own readers, hold every number of ``metrics.jsonl`` at the same steps; a paused and resumed search continues
the same curves without a duplicate step, also when an epoch runs twice (a kill between its record and its
checkpoint); the search's alpha heat maps and self-check rank are there."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from scnas_dsl.training.tracking import parse_trackers, scalars
from tests.helpers import generated_set, invoke, tiny_space

TINY = ["--stem-width", "4", "--patch", "16", "16", "16", "--batch-size", "2", "--batches-per-epoch", "1",
        "--device", "cpu", "--quiet", "--no-augment"]


def test_tracker_names_are_checked() -> None:
    assert parse_trackers("tensorboard, WandB,tensorboard") == ("tensorboard", "wandb")
    assert parse_trackers(None) == () and parse_trackers([]) == ()
    with pytest.raises(ValueError, match="unknown tracker 'mlflow': choose from tensorboard, wandb"):
        parse_trackers("tensorboard,mlflow")


def test_a_tracker_that_is_not_installed_is_refused_before_the_run_starts(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    baseline = Path(__file__).resolve().parents[3] / "specs" / "baselines" / "unet3d.scn"
    code, output = invoke("train", baseline, "--data", tmp_path / "data", "--out",
                          tmp_path / "run", "--log", "wandb")
    assert code != 0 and "--log wandb needs the wandb package" in output and "scnas_dsl[tracking]" in output
    assert not (tmp_path / "run").exists()


def test_scalars_are_the_records_numbers() -> None:
    record = {"epoch": 3, "weight_loss": 0.5, "warm_up": True, "edges": {"enc": [1, 2]}, "genotype": "x",
              "self_check": {"rank": 2, "of": 21, "text": "ranks 2"}, "argmax_dice": float("nan"), "n": 4}
    assert scalars(record) == {"weight_loss": 0.5, "warm_up": 1.0, "self_check/rank": 2.0, "self_check/of": 21.0,
                               "n": 4.0}


def _event_scalars(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), f"{tag}: duplicate steps {steps}"
        out[tag] = {e.step: e.value for e in events}
    out["__images__"] = {e.step: 1.0 for tag in acc.Tags()["images"] for e in acc.Images(tag)}
    return out


def _wandb_history(run: Path) -> list[dict[str, Any]]:
    """Every history row of the run's offline W&B files, in the order written (W&B's own record format: a 7-byte
    header, then LevelDB-style chunks of 32 KiB blocks holding protobuf ``Record`` messages)."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for path in sorted((run / "wandb").glob("offline-run-*/run-*.wandb")):
        data, pos, buffer = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            if left < 7:
                pos += left
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            buffer, pos = buffer + data[pos + 7:pos + 7 + length], pos + 7 + length
            if kind in (1, 4):  # a whole record, or its last chunk
                record = pb.Record()
                record.ParseFromString(buffer)
                buffer = b""
                if record.WhichOneof("record_type") == "history":
                    rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                                 for i in record.history.item})
    return rows


@pytest.mark.slow
def test_a_paused_and_resumed_search_logs_every_epoch_once_to_both_trackers(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    _, pre = generated_set(tmp_path, "heart", size=16)
    spec = tiny_space(tmp_path)
    run = tmp_path / "search"
    from scnas_dsl.training.config import SearchConfig
    from scnas_dsl.training.search import run_search

    cfg = SearchConfig(spec=str(spec), data=str(pre), out=str(run), epochs=3, batches_per_epoch=1, batch_size=2,
                       patch=(16, 16, 16), stem_width=4, device="cpu", progress=False, augment=False,
                       log=("tensorboard", "wandb"))
    import shutil

    assert run_search(cfg, stop_after_epochs=1) is None  # paused after epoch 1 (a checkpoint to resume from)
    after_one = shutil.copyfile(run / "checkpoints" / "last.pt", tmp_path / "after_one.pt")
    assert run_search(cfg, resume=True, stop_after_epochs=1) is None  # epoch 2 logged and saved
    # as if the run had been killed after epoch 2's record but before its checkpoint: epoch 2 runs again
    shutil.copyfile(after_one, run / "checkpoints" / "last.pt")
    code, output = invoke("search", spec, "--data", pre, "--out", run, "--epochs", "3", "--resume",
                          "--log", "tensorboard,wandb", *TINY)
    assert code == 0, output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    events = _event_scalars(run / "tensorboard")
    history = _wandb_history(run)
    assert [row["_step"] for row in history if "weight_loss" in row] == [0, 1, 2]  # three sessions, no step twice
    by_step = {row["_step"]: row for row in history if "weight_loss" in row}
    for record in records:
        if record["epoch"] == 1:  # W&B keeps the first values of the epoch that ran twice (documented)
            assert events["weight_loss"][1] == pytest.approx(record["weight_loss"], rel=1e-6)  # TensorBoard: the last
            continue
        numbers = scalars(record)
        assert numbers and "weight_loss" in numbers and "temperature" in numbers and "mean_entropy" in numbers
        for name, value in numbers.items():
            if name.startswith("self_check/"):
                continue  # added after the last epoch: below
            assert events[name][record["epoch"]] == pytest.approx(value, rel=1e-6), name
            assert by_step[record["epoch"]][name] == pytest.approx(value, rel=1e-9), name
    assert sorted(events["__images__"]) == [0, 1, 2]  # the alpha heat maps, one per epoch
    assert sorted(row["_step"] for row in history if row.get("alpha/_type") == "image-file") == [0, 1, 2]
    rank = records[-1]["self_check"]["rank"]
    assert events["self_check/rank"] == {2: float(rank)}
