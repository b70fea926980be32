"""Records a run reads, mutated at random (hypothesis): every outcome is success or a scnas error that names the
file, never a traceback (issue 21, section 6). Bounded: a few dozen examples per record, well under a minute."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from scnas_dsl.errors import ScnasError
from scnas_dsl.ops.plugins import check_recorded, load_operations
from scnas_dsl.prediction.predict import load_trained
from scnas_dsl.training.config import TrainConfig
from scnas_dsl.training.resume import check_resumed_settings
from scnas_dsl.training.retrain import run_train
from scnas_dsl.training.runs import read_split
from tests.helpers import heart_cases

BASELINE = Path(__file__).resolve().parents[2] / "specs" / "baselines" / "unet3d.scn"

JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
                    | st.text(max_size=8), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fuzz")
    _, pre = heart_cases(root)
    cfg = TrainConfig(genotype=str(BASELINE), data=str(pre), out=str(root / "run"), epochs=1, val_every=1,
                      batch_size=2, patch=(16, 16, 16), stem_width=4, batches_per_epoch=1, device="cpu",
                      progress=False, augment=False, mirror_validation=False)
    assert run_train(cfg) is not None
    return root / "run"


def _copy(run: Path, tmp: Path) -> Path:
    """A fresh copy of the run folder, to damage."""
    copy = tmp / "run"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(run, copy)
    return copy


def _mutate_json(record: Path, key: str | None, value: Any) -> None:
    """The JSON file ``record`` with ``key`` set to ``value`` (``key`` None: the whole file is ``value``)."""
    if key is None:
        record.write_text(json.dumps(value))
    else:
        data = json.loads(record.read_text())
        data[key] = value
        record.write_text(json.dumps(data))


def _mutated(run: Path, tmp: Path, name: str, key: str | None, value: Any) -> Path:
    copy = _copy(run, tmp)
    _mutate_json(copy / name, key, value)
    return copy


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from([None, "in_channels", "num_classes", "stem_width", "patch", "deep_supervision",
                            "blend"]), value=JSON)
@example(key="deep_supervision", value=[3])  # a level the decoder lacks: once a CompileError naming no file
@example(key="patch", value=[15, 15, 15])  # windows the network cannot take: once a traceback in predict
@example(key="patch", value=[16, 16])
def test_a_mutated_network_json_is_a_message_naming_it(run: Path, tmp_path: Path, key: str | None,
                                                       value: Any) -> None:
    copy = _mutated(run, tmp_path, "network.json", key, value)
    try:
        model = load_trained(copy)
    except ScnasError as err:
        assert "network.json" in str(err) or str(copy) in str(err), str(err)
    else:  # what loads, predicts: its windows go through the network (a window too large to try is skipped)
        if math.prod(model.patch) > 64**3:
            return
        with torch.no_grad():
            model.network.eval()(torch.zeros(1, 1, *model.patch))


@pytest.mark.parametrize("width", [5, 10**6])
def test_a_network_json_edited_to_another_width_is_refused_before_the_network_is_built(
        run: Path, tmp_path: Path, width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A width the weights do not have is a message naming network.json; the network is only built on the meta
    device (a width of a million would need terabytes: building it for real is the hole this closes)."""
    import scnas_dsl.prediction.predict as predict

    copy = _mutated(run, tmp_path, "network.json", "stem_width", width)
    devices: list[str] = []
    real = predict.build_network

    def spy(*args: Any, **kwargs: Any) -> torch.nn.Module:
        net = real(*args, **kwargs)
        devices.append(next(net.parameters()).device.type)
        return net

    monkeypatch.setattr(predict, "build_network", spy)
    with pytest.raises(ScnasError) as err:
        load_trained(copy)
    assert "network.json" in str(err.value) and "shape" in str(err.value), str(err.value)
    assert devices == ["meta"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from([None, "seed", "epochs", "batch_size", "patch"]), value=JSON)
def test_a_mutated_config_json_refuses_a_resume_naming_it(run: Path, tmp_path: Path, key: str | None,
                                                          value: Any) -> None:
    copy = _mutated(run, tmp_path, "config.json", key, value)
    settings_now = json.loads((run / "config.json").read_text())
    try:
        check_resumed_settings(copy, settings_now)
    except ScnasError as err:
        assert "config.json" in str(err), str(err)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from([None, "fold", "train", "val", "weight_part", "arch_part"]), value=JSON)
def test_a_mutated_split_json_is_a_message_naming_it(run: Path, tmp_path: Path, key: str | None, value: Any) -> None:
    copy = _mutated(run, tmp_path, "split.json", key, value)
    try:
        record = read_split(copy)
    except ScnasError as err:
        assert "split.json" in str(err), str(err)
    else:  # what was read is what the types say
        assert all(isinstance(c, str) for c in [*record.train, *record.val, *record.weight_part, *record.arch_part])
        assert record.fold is None or isinstance(record.fold, int)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from([None, "modules", "plugins", "operations"]), value=JSON)
def test_a_mutated_operations_json_is_a_message_naming_it(run: Path, tmp_path: Path, key: str | None,
                                                          value: Any) -> None:
    copy = _mutated(run, tmp_path, "operations.json", key, value)
    try:
        check_recorded(copy, load_operations(()))
    except ScnasError as err:
        assert "operations.json" in str(err) or str(copy) in str(err), str(err)


@pytest.mark.parametrize(("name", "text"), [("split.json", '["train"]'), ("split.json", '{"val": "case_0"}'),
                                            ("split.json", '{"fold": "0"}'), ("operations.json", '["x"]'),
                                            ("operations.json", '{"operations": "dil9"}'), ("split.json", "\x00\xff")])
def test_damaged_records_each_named(run: Path, tmp_path: Path, name: str, text: str) -> None:
    copy = _mutated(run, tmp_path, name, None, None)
    (copy / name).write_text(text, encoding="latin-1")
    with pytest.raises(ScnasError, match=name.replace(".", r"\.")):
        read_split(copy) if name == "split.json" else check_recorded(copy, load_operations(()))


HEADER = st.sampled_from(["kind", "epoch", "step", "dice", "best", "sums", "model", "scheduler", "optimizer", "rng",
                          "scaler"])


def _mutated_checkpoint(run: Path, tmp: Path, which: str, key: str, value: Any) -> Path:
    copy = _copy(run, tmp)
    path = copy / "checkpoints" / f"{which}.pt"
    state = torch.load(path, weights_only=True)
    if value is _MISSING:
        state.pop(key, None)
    else:
        state[key] = value
    torch.save(state, path)
    return copy


_MISSING = object()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=HEADER, value=JSON | st.just(_MISSING), which=st.sampled_from(["last", "best"]))
def test_a_mutated_checkpoint_header_is_a_message_naming_it(run: Path, tmp_path: Path, key: str, value: Any,
                                                            which: str) -> None:
    copy = _mutated_checkpoint(run, tmp_path, which, key, value)
    if not (copy / "checkpoints" / f"{which}.pt").is_file():
        return
    try:
        load_trained(copy, which)  # predict and export read it so
    except ScnasError as err:
        assert f"{which}.pt" in str(err), str(err)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=HEADER, value=JSON | st.just(_MISSING))
def test_a_resume_from_a_mutated_checkpoint_is_a_message_naming_it(run: Path, tmp_path: Path, key: str,
                                                                   value: Any) -> None:
    copy = _mutated_checkpoint(run, tmp_path, "last", key, value)
    cfg = TrainConfig.model_validate({**json.loads((copy / "config.json").read_text()), "out": str(copy),
                                      "epochs": 2})
    try:
        run_train(cfg, resume=True)
    except ScnasError as err:
        assert "last.pt" in str(err) or "config.json" in str(err), str(err)


def _plans_document() -> dict[str, Any]:
    return {"plans_name": "nnUNetPlans", "configurations": {
        "3d_fullres": {"patch_size": [32, 32, 32], "median_image_size_in_voxels": [40, 40, 40], "batch_size": 2},
        "3d_lowres": {"inherits_from": "3d_fullres", "patch_size": [16, 16, 16]}}}


@settings(max_examples=60, deadline=None)
@given(where=st.sampled_from([None, "configurations", "3d_fullres", "3d_lowres"]),
       key=st.sampled_from(["patch_size", "inherits_from", "median_image_size_in_voxels", "architecture"]),
       value=JSON)
def test_mutated_plans_are_a_message_naming_the_file(where: str | None, key: str, value: Any) -> None:
    import tempfile

    from scnas_dsl.integrations.nnunet_plans import Plans

    document: Any = _plans_document()
    if where is None:
        document = value
    elif where == "configurations":
        document["configurations"] = value
    else:
        document["configurations"][where][key] = value
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "nnUNetPlans.json"
        path.write_text(json.dumps(document))
        try:
            plans = Plans.read(path)
            for name in plans.names:
                plans.patch_size(name)
        except ScnasError as err:
            assert str(path) in str(err), str(err)


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from([None, "label_names", "case_scores", "folds_run", "folds_total", "settings", "mode",
                            "leakage", "spec"]), value=JSON)
def test_a_mutated_cv_summary_is_a_message_naming_it(key: str | None, value: Any) -> None:
    import tempfile

    from scnas_dsl.studies.compare import compare_runs
    from tests.unit.studies.test_compare import fake_cv, other_scores, reference_scores

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        ref = fake_cv(root / "ref", reference_scores())
        other = fake_cv(root / "run", other_scores())
        _mutate_json(other / "cv_summary.json", key, value)
        try:
            compare_runs([ref, other], root / "report")
        except ScnasError as err:
            assert "cv_summary.json" in str(err) or str(other) in str(err), str(err)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from([None, "dataset", "normalization", "spacing", "case_ids", "settings_key", "cases"]),
       value=JSON)
def test_a_mutated_preprocessing_manifest_is_a_message_naming_it(run: Path, tmp_path: Path, key: str | None,
                                                                 value: Any) -> None:
    from scnas_dsl.data.preprocess import Preprocessed

    copy = _mutated(run, tmp_path, "preprocessing/preprocessed.json", key, value)
    try:
        pre = Preprocessed(copy / "preprocessing")
        for case in pre.case_ids:
            pre.meta(case)
    except ScnasError as err:
        assert "preprocessed.json" in str(err) or "preprocessing" in str(err), str(err)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 400), line=st.none() | JSON)
def test_a_damaged_metrics_history_does_not_stop_a_resume(run: Path, tmp_path: Path, cut: int, line: Any,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """metrics.jsonl cut off (a crash, a full disk) and a line that is no record appended: the resume drops what
    it cannot read, says so, and continues from the checkpoint."""
    copy = _copy(run, tmp_path)
    metrics = copy / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[:len(text) - cut] + ("" if line is None else "\n" + json.dumps(line)))

    def an_epoch(ln: str) -> bool:
        try:
            record = json.loads(ln)
        except ValueError:
            return False
        return isinstance(record, dict) and type(record.get("epoch")) is int

    damaged = any(ln.strip() and not an_epoch(ln) for ln in metrics.read_text().splitlines())
    capsys.readouterr()
    cfg = TrainConfig.model_validate({**json.loads((copy / "config.json").read_text()), "out": str(copy),
                                      "epochs": 2})
    assert run_train(cfg, resume=True) is not None
    records = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    assert records[-1]["epoch"] == 1 and all(an_epoch(json.dumps(r)) for r in records)
    assert ("metrics.jsonl: line(s)" in capsys.readouterr().err) == damaged, "the note says what was dropped"
