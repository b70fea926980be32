"""Every command that writes, pointed at a folder it may not write (issue 21, sections 2 and 6): one error line
that names the path, a non-zero exit, never a traceback, nothing left behind.

The commands run in one child process whose user cannot write the folder: as an ordinary user, the folder's
mode (0555) does it; as root (a container, CI), mode bits do not bind, so the child drops the two capabilities
that let root ignore them (``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``) before it starts."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import generated_set, tiny_space

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("read_only")]

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "specs" / "baselines" / "unet3d.scn"
TINY = ["--patch", "16", "16", "16", "--stem-width", "4", "--batch-size", "2", "--batches-per-epoch", "1",
        "--epochs", "1", "--quiet"]

#: the child: runs each command in-process (one torch import) and prints what it said
CHILD = """
import json, sys
from tests.helpers import invoke
results = []
for args in json.loads(sys.argv[1]):
    try:
        code, output = invoke(*args)
    except BaseException as err:  # a traceback a user would see
        import traceback
        code, output = -1, "Traceback (most recent call last):\\n" + traceback.format_exc()
    results.append({"args": args, "code": code, "output": output})
print(json.dumps(results))
"""


def _drop_root_overrides() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, from the bounding set before exec
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _run_without_write_permission(commands: list[list[str]]) -> list[dict[str, object]]:
    preexec = _drop_root_overrides if os.geteuid() == 0 else None
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(commands)], cwd=ROOT, capture_output=True,
                              text=True, timeout=600, preexec_fn=preexec,
                              env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot start a process without write permission here ({err})")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _read_only(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return path


def test_every_writing_command_names_a_folder_it_cannot_write(tmp_path: Path) -> None:
    from tests.unit.studies.test_compare import fake_cv, other_scores, reference_scores

    raw, pre = generated_set(tmp_path, "heart", size=16)
    spec = tiny_space(tmp_path)
    images = sorted((raw / "imagesTr").glob("*.nii.gz"))[:1]
    # inputs, made while we may write: a training run, a search run, two cross-validations, a plans file
    setup = [["train", str(BASELINE), "--data", str(pre), "--out", str(tmp_path / "run"), *TINY],
             ["search", str(spec), "--data", str(pre), "--out", str(tmp_path / "search"), *TINY]]
    for args in setup:
        from tests.helpers import invoke

        code, output = invoke(*args)
        assert code == 0, output
    cv_a, cv_b = fake_cv(tmp_path / "cv_a", reference_scores()), fake_cv(tmp_path / "cv_b", other_scores())
    plans = tmp_path / "nnUNetPlans.json"
    plans.write_text(json.dumps({"configurations": {"3d_fullres": {"patch_size": [32, 32, 32]}}}))
    genotype = tmp_path / "search" / "genotype.scn"
    fmt_file = tmp_path / "fmt" / "g.scn"
    fmt_file.parent.mkdir()
    shutil.copyfile(spec, fmt_file)
    fmt_file.write_text(fmt_file.read_text().replace("  ", "    "))  # not canonical: --write would rewrite it
    fmt_file.chmod(0o444)
    _read_only(fmt_file.parent)
    search_copy = Path(shutil.copytree(tmp_path / "search", tmp_path / "search_ro"))
    for path in [search_copy, *search_copy.rglob("*")]:
        if path.is_dir():
            _read_only(path)
        else:
            path.chmod(0o444)
    ro = _read_only(tmp_path / "ro")
    commands = {
        "search": ["search", str(spec), "--data", str(pre), "--out", str(ro / "search"), *TINY],
        "train": ["train", str(BASELINE), "--data", str(pre), "--out", str(ro / "train"), *TINY],
        "predict": ["predict", str(tmp_path / "run"), "--input", str(images[0]), "--output", str(ro / "pred"),
                    "--no-mirror", "--quiet"],
        "evaluate": ["evaluate", "--pred", str(raw / "labelsTr"), "--ref", str(raw / "labelsTr"), "--out",
                     str(ro / "eval")],
        "cv": ["cv", str(BASELINE), "--data", str(pre), "--out", str(ro / "cv"), "--fold", "0", *TINY],
        "compare": ["compare", str(cv_a), str(cv_b), "-o", str(ro / "report")],
        "sample": ["sample", str(spec), "-n", "2", "-o", str(ro / "samples"), "--patch", "16", "16", "16"],
        "export": ["export", str(tmp_path / "run"), "--format", "onnx", "-o", str(ro / "model.onnx")],
        "export-nnunet": ["export-nnunet", str(ROOT / "specs" / "genotypes" / "example.scn"), "--plans", str(plans),
                          "-o", str(ro / "plans.json")],
        "data preprocess": ["data", "preprocess", str(raw), "--out", str(ro / "pre")],
        "data synth": ["data", "synth", str(ro / "synth"), "--cases", "2", "--shape", "16", "16", "16"],
        "demo": ["demo", str(ro / "demo"), "--quick", "--quiet"],
        "derive": ["derive", str(search_copy), "--select", "alpha"],
        "rank": ["rank", str(tmp_path / "search"), str(genotype), "-o", str(ro / "rank.csv")],
        "compile": ["compile", str(genotype), "--emit", "torch", "-o", str(ro / "net.py")],
        "draw": ["draw", str(genotype), "-o", str(ro / "g.png")],
        "fmt": ["fmt", str(fmt_file), "--write"],
    }
    before = fmt_file.read_bytes()
    results = _run_without_write_permission(list(commands.values()))
    report = []
    for (name, args), result in zip(commands.items(), results, strict=True):
        output = str(result["output"])
        target = next((a for a in args if a.startswith((str(ro), str(search_copy), str(fmt_file.parent)))), "")
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        named = len(errors) == 1 and any(p in errors[0] for p in (str(ro), str(search_copy), str(fmt_file.parent)))
        ok = result["code"] not in (0, -1) and "Traceback" not in output and named
        if not ok:
            report.append(f"{name} (exit {result['code']}, writing {target}):\n{output[-1500:]}")
    assert not report, "\n\n".join(report)
    assert not any(ro.iterdir()), sorted(p.name for p in ro.iterdir())  # nothing left behind
    assert fmt_file.read_bytes() == before
    assert sorted(p.name for p in search_copy.iterdir()) == sorted(p.name for p in (tmp_path / "search").iterdir())
