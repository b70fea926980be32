"""``scnas data synth/check/preprocess/plan/splits`` end to end in both layouts: output, exit codes, safety."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def scnas(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if cache is not None:
        env["SCNAS_CACHE"] = str(cache)
    return subprocess.run(
        [sys.executable, "-m", "scnas_dsl", "data", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def digest(folder: Path) -> str:
    h = hashlib.sha1()
    for path in sorted(folder.rglob("*")):
        h.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_synth_check_preprocess_plan_splits(tmp_path: Path, layout: str) -> None:
    data, cache = tmp_path / "ds", tmp_path / "cache"
    made = scnas(
        "synth",
        str(data),
        "--task",
        "brain",
        "--cases",
        "5",
        "--shape",
        "24",
        "24",
        "20",
        "--layout",
        layout,
        "--test-cases",
        "1",
    )
    assert made.returncode == 0, made.stderr
    assert f"{data}: 5 training and 1 test case(s), task brain, {layout} layout" in made.stdout
    before = digest(data)

    checked = scnas("check", str(data))
    assert checked.returncode == 0, checked.stderr
    assert f"ok ({layout} layout, 5 training case(s), 1 test case(s)" in checked.stdout

    first = scnas("preprocess", str(data), "--median-spacing", "--no-progress", cache=cache)
    assert first.returncode == 0, first.stderr
    assert "5 case(s) at spacing 1 x 1 x 1.5 mm (5 processed, 0 reused)" in first.stdout
    again = scnas("preprocess", str(data), "--median-spacing", "--workers", "2", cache=cache)
    assert "(0 processed, 5 reused)" in again.stdout
    [data_cache] = list(cache.iterdir())
    assert data_cache.name.startswith("SynthBrainTumour-")
    [out] = list(data_cache.iterdir())
    assert out.name == "median-spacing"

    planned = scnas("plan", str(data), "--memory-gb", "4", "--json", cache=cache)
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["num_cases"] == 5 and len(plan["patch_size"]) == 3 and plan["batch_size"] >= 1
    assert set(plan["class_frequencies"]) == {"0", "1", "2", "3"}
    text = scnas("plan", str(data), cache=cache)
    assert "patch size" in text.stdout and "preprocessed data in" in text.stdout
    if layout == "msd":  # the compiler's estimate for a spec (one build on the meta device)
        spec = Path(__file__).resolve().parents[2] / "specs" / "tiny_by_level.scn"
        with_spec = scnas("plan", str(data), "--spec", str(spec), "--memory-gb", "4", "--json", cache=cache)
        assert with_spec.returncode == 0, with_spec.stderr
        assert json.loads(with_spec.stdout)["rule"] == "spec estimate"

    splits = scnas("splits", str(data), cache=cache)
    assert splits.returncode == 0, splits.stderr
    assert (
        "5 fold(s) from" in splits.stdout
        and "fold 2: train 4 (weights 3, architecture 1), val 1" in splits.stdout
    )
    assert (out / "splits_final.json").is_file()
    assert digest(data) == before  # nothing written into the data set folder


@pytest.mark.slow
def test_problems_and_usage_errors(tmp_path: Path) -> None:
    data = tmp_path / "ds"
    assert (
        scnas("synth", str(data), "--task", "heart", "--cases", "2", "--shape", "16", "16", "16").returncode
        == 0
    )
    label = data / "labelsTr" / "heart_001.nii.gz"
    label.write_bytes(label.read_bytes()[:150])
    (data / "imagesTr" / "heart_000.nii.gz").unlink()

    checked = scnas("check", str(data))
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert f"{data / 'imagesTr' / 'heart_000.nii.gz'} [case heart_000]: file is missing" in checked.stderr
    assert f"{label} [case heart_001]: truncated or corrupt gzip" in checked.stderr
    assert "2 problem(s)" in checked.stderr
    as_json = json.loads(scnas("check", str(data), "--json").stdout)
    assert {p["case"] for p in as_json} == {"heart_000", "heart_001"}

    failed = scnas("preprocess", str(data), "--out", str(tmp_path / "pre"))
    assert failed.returncode == 1 and "heart_000" in failed.stderr and "Traceback" not in failed.stderr

    assert scnas("check", str(tmp_path / "nope")).returncode == 2
    both = scnas("preprocess", str(data), "--spacing", "1", "1", "1", "--median-spacing")
    assert both.returncode == 2 and "exclude each other" in both.stderr
    inside = scnas("preprocess", str(data), "--out", str(data / "pre"))
    assert inside.returncode == 1 and "never writes there" in inside.stderr and not (data / "pre").exists()
    again = scnas("synth", str(data))
    assert again.returncode == 1 and "not an empty folder" in again.stderr
    unknown = scnas("synth", str(tmp_path / "x"), "--task", "liver")
    assert unknown.returncode == 2 and "choose brain, heart or lung" in unknown.stderr
    not_yet = scnas("splits", str(data), "--out", str(tmp_path / "empty"))
    assert not_yet.returncode == 1 and "not preprocessed yet" in not_yet.stderr


def _start(*args: str, cache: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "SCNAS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "scnas_dsl", "data", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _consistent(folder: Path, spacing: float) -> None:
    """Every case of ``folder`` is at ``spacing`` and matches its manifest (settings key, shapes)."""
    from scnas_dsl.data.preprocess import Preprocessed

    pre = Preprocessed(folder)
    assert pre.spacing == (spacing,) * 3 and len(pre.case_ids) == 6
    for case_id in pre.case_ids:
        image, label = pre.load(case_id)  # refuses a record of other settings or another shape
        meta = pre.meta(case_id)
        assert label is not None and image.shape[1:] == label.shape == meta.shape
        assert meta.spacing == pytest.approx((spacing,) * 3, rel=0.1)
        record = json.loads((folder / "cases" / f"{case_id}.json").read_text())
        assert record["key"]["settings"] == pre.settings_key


@pytest.mark.slow
def test_concurrent_runs_with_different_spacings_never_mix(tmp_path: Path) -> None:
    data, cache = tmp_path / "ds", tmp_path / "cache"
    made = scnas("synth", str(data), "--task", "brain", "--cases", "6", "--shape", "32", "32", "24")
    assert made.returncode == 0, made.stderr
    before = digest(data)

    # the default cache: a folder per setting, both runs succeed and each gets its own data
    runs = {s: _start("preprocess", str(data), "--spacing", s, s, s, "--no-progress", cache=cache) for s in ("0.8", "1.3")}
    done = {s: run.communicate(timeout=600) for s, run in runs.items()}
    for s, run in runs.items():
        assert run.returncode == 0, done[s][1]
        assert f"6 case(s) at spacing {s} x {s} x {s} mm (6 processed, 0 reused)" in done[s][0]
    [data_cache] = list(cache.iterdir())
    assert sorted(p.name for p in data_cache.iterdir()) == ["spacing-0.8x0.8x0.8", "spacing-1.3x1.3x1.3"]
    for s in ("0.8", "1.3"):
        _consistent(data_cache / f"spacing-{s}x{s}x{s}", float(s))

    # one --out for both: the first to lock it makes it, the other is refused and changes nothing
    shared = tmp_path / "shared"
    runs = {
        s: _start("preprocess", str(data), "--spacing", s, s, s, "--out", str(shared), "--no-progress", cache=cache)
        for s in ("0.9", "1.2")
    }
    done = {s: run.communicate(timeout=600) for s, run in runs.items()}
    [winner] = [s for s, run in runs.items() if run.returncode == 0]
    [loser] = [s for s, run in runs.items() if run.returncode != 0]
    assert runs[loser].returncode == 1 and "Traceback" not in done[loser][1]
    assert f"{shared}: holds data preprocessed at spacing {winner} x {winner} x {winner} mm, not at spacing" in done[loser][1]
    _consistent(shared, float(winner))
    assert digest(data) == before
