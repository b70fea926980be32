"""Custom operations from the command line (``--ops``) and installed plugins (entry points
``scnas.operations``): check, compile, draw, a tiny search, train and predict; a run folder records the modules
and never imports them by itself."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from scnas_dsl.cli import app
from scnas_dsl.errors import ScnasError, message_for_user
from tests.helpers import heart_cases

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("custom_ops")]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "custom_operation.py"
SPACE: str = runpy.run_path(str(EXAMPLE))["SPEC"]  # the example's space, with se_conv
CELL = "{ n0 = se3(in0) + conv3(in1); n1 = se3(n0) + skip(in1) }"
GENOTYPE = SPACE + "genotype se_found of se_space {\n" + "".join(
    f"  cell {c} {CELL}\n" for c in ("enc", "red", "dec", "exp")) + "}\n"


def cli(*args: str) -> tuple[int, str]:
    """Exit status and output as ``scnas`` gives them (its main() turns scnas errors into status 1)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if isinstance(result.exception, ScnasError):
        return 1, result.output + message_for_user(result.exception)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ops")
    (root / "space.scn").write_text(SPACE)
    (root / "geno.scn").write_text(GENOTYPE)
    return {"root": root, "space": root / "space.scn", "geno": root / "geno.scn"}


def test_check_compile_draw_need_the_ops_module(files: dict[str, Path]) -> None:
    code, out = cli("check", files["geno"])
    assert code == 1 and "se_conv" in out  # a .scn file never imports code: unknown without --ops
    code, out = cli("check", files["geno"], "--ops", EXAMPLE)
    assert code == 0, out
    code, out = cli("check", files["geno"], "--ops", "no_such_ops_module_xyz")
    assert code == 1 and "--ops no_such_ops_module_xyz" in out
    code, out = cli("check", files["geno"], "--ops", "json")
    assert code == 1 and "defines no operations" in out
    target = files["root"] / "net.py"
    code, out = cli("compile", files["geno"], "--ops", EXAMPLE, "--emit", "torch", "-o", target, "--patch", "16",
                    "16", "16")
    assert code == 0, out
    assert "class SEConv(" in target.read_text()
    code, out = cli("compile", files["space"], "--ops", EXAMPLE, "--patch", "16", "16", "16")
    assert code == 0, out
    code, out = cli("draw", files["geno"], "--ops", EXAMPLE, "-o", files["root"] / "cells.svg")
    assert code == 0, out


def test_search_train_predict_record_and_need_the_module(files: dict[str, Path]) -> None:
    torch.set_num_threads(1)
    root = files["root"]
    raw, pre = heart_cases(root)
    tiny = ["--data", pre, "--epochs", "1", "--batch-size", "2", "--patch", "16", "16", "16", "--stem-width", "4",
            "--batches-per-epoch", "1", "--device", "cpu", "--no-augment", "--quiet"]
    code, out = cli("search", files["space"], "--out", root / "search", *tiny, "--ops", EXAMPLE)
    assert code == 0, out
    record = json.loads((root / "search" / "operations.json").read_text())
    assert record["modules"] == [str(EXAMPLE)] and record["operations"] == ["se_conv"]
    run = root / "train"
    code, out = cli("train", files["geno"], "--out", run, *tiny, "--ops", EXAMPLE)
    assert code == 0, out
    assert json.loads((run / "operations.json").read_text())["modules"] == [str(EXAMPLE)]
    assert json.loads((run / "config.json").read_text())["ops"] == [str(EXAMPLE)]
    image = sorted((raw / "imagesTr").glob("*.nii.gz"))[0]
    predict = ["predict", run, "--input", image, "--output", root / "pred", "--quiet", "--device", "cpu",
               "--no-mirror"]
    code, out = cli(*predict)
    assert code == 1 and f"--ops {EXAMPLE}" in out and "se_conv" in out
    code, out = cli(*predict, "--ops", EXAMPLE)
    assert code == 0, out
    assert len(list((root / "pred").glob("*.nii.gz"))) == 1
    code, out = cli("compile", run, "--patch", "16", "16", "16")
    assert code == 1 and f"--ops {EXAMPLE}" in out
    code, out = cli("compile", run, "--ops", EXAMPLE, "--emit", "torch", "-o", root / "run_net.py", "--patch",
                    "16", "16", "16")
    assert code == 0, out
    # a MONAI bundle of the run: the operation's code goes into the bundle's standalone network source
    code, out = cli("export", run, "--format", "monai-bundle", "-o", root / "bundle")
    assert code == 1 and f"--ops {EXAMPLE}" in out and not (root / "bundle").exists()
    code, out = cli("export", run, "--format", "monai-bundle", "-o", root / "bundle", "--ops", EXAMPLE)
    assert code == 0 and "max abs difference" in out, out
    source = (root / "bundle" / "scripts" / "network.py").read_text()
    assert "class SEConv" in source and "custom_operation" not in source  # inlined: the bundle needs no --ops
    # cross-validation of the genotype (one fold): the module reaches the check, the retraining and predict
    code, out = cli("cv", files["geno"], "--out", root / "cv", "--fold", "0", "--no-mirror", *tiny[:-1])
    assert code == 1 and "se_conv" in out
    code, out = cli("cv", files["geno"], "--out", root / "cv", "--fold", "0", "--no-mirror", *tiny[:-1],
                    "--ops", EXAMPLE)
    assert code == 0, out
    assert json.loads((root / "cv" / "fold_0" / "operations.json").read_text())["modules"] == [str(EXAMPLE)]


PLUGIN = '''
import torch
from torch import nn

from scnas_dsl.ops.signatures import OpSignature


class Triple(nn.Module):
    def __init__(self, c_in, c_out, stride=1, dims=3):
        super().__init__()
        self.conv = (nn.Conv3d if dims == 3 else nn.Conv2d)(c_in, c_out, 1, stride=stride)

    def forward(self, x):
        return 3 * self.conv(x)


def register(library):
    return library.register(OpSignature("triple", (), "3 x conv1x1"), Triple)
'''


def test_an_installed_plugin_adds_operations(tmp_path: Path, files: dict[str, Path]) -> None:
    site = tmp_path / "site"
    (site / "triple_ops").mkdir(parents=True)
    (site / "triple_ops" / "__init__.py").write_text(PLUGIN)
    info = site / "triple_ops-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: triple-ops\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[scnas.operations]\ntriple = triple_ops:register\n")
    spec = tmp_path / "triple.scn"
    spec.write_text(SPACE.replace("se3 = se_conv(kernel=3, reduction=2)", "t = triple"))

    def check(path: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (path, str(ROOT)) if p)}
        return subprocess.run([sys.executable, "-m", "scnas_dsl", "check", str(spec)], capture_output=True,
                              text=True, env=env, cwd=tmp_path, check=False)

    assert check("").returncode == 1
    done = check(str(site))
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout


def test_broken_operation_modules_are_named_messages(tmp_path: Path) -> None:
    """OPERATIONS of the wrong shape, a register() that raises, a module that exits on import: a message that
    names the module, exit 1 (a traceback, or silence and exit 0, before)."""
    import subprocess
    import sys

    spec = Path(__file__).resolve().parents[2] / "specs" / "unet4cell.scn"
    cases = {"pairs.py": "OPERATIONS = [1, 2]\n",
             "raises.py": "def register(library):\n    raise KeyError('oops')\n",
             "exits.py": "import sys\nsys.exit(0)\n"}
    for name, text in cases.items():
        module = tmp_path / name
        module.write_text(text)
        done = subprocess.run([sys.executable, "-m", "scnas_dsl", "check", str(spec), "--ops", str(module)],
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 1, (name, done.stdout, done.stderr)
        assert str(module) in done.stderr and "Traceback" not in done.stderr, (name, done.stderr)
