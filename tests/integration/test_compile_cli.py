"""``scnas compile``: summary, --json figures, --emit torch with its overwrite guard, clear errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from scnas_dsl.cli import app
from scnas_dsl.errors import ScnasError

SPACE = """
space tiny {
  ops small {
    conv3 = conv(kernel=3)
    dil2 = sep_conv(kernel=3, dilation=2)
    skip = identity
    none = zero
  }
  cell enc normal { nodes 2; inputs 2; ops small }
  cell red reduction { nodes 2; inputs 2; ops small }
  cell dec normal { nodes 2; inputs 2; ops small }
  cell exp expansion { nodes 2; inputs 2; ops small }
  unet {
    dims 3
    stem conv_block(kernel=3) -> 4
    encoder red
    bridge enc
    decoder exp dec
    head logits(kernel=1)
  }
}
"""

GENOTYPE = """
genotype found of tiny {
  cell red { n0 = conv3(in0) + skip(in1)
             n1 = dil2(n0) }
  cell enc { n0 = dil2(in1)
             n1 = conv3(n0) + skip(in0) }
  cell exp { n0 = conv3(in1)
             n1 = conv3(n0) + dil2(in0) }
  cell dec { n0 = skip(in1) + conv3(in0)
             n1 = conv3(n0) }
}
"""


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    space = tmp_path / "tiny.scn"
    space.write_text(SPACE)
    genotype = tmp_path / "found.scn"
    genotype.write_text('import "tiny.scn"\n' + GENOTYPE)
    return {"space": space, "genotype": genotype}


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["compile", *args])
    if isinstance(result.exception, ScnasError):  # what scnas_dsl.cli.main prints, with exit status 1
        return 1, result.stdout, f"error: {result.exception}"
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_space_summary_and_json(files: dict[str, Path]) -> None:
    code, out, _ = run(str(files["space"]), "--patch", "16", "16", "16")
    assert code == 0, out
    assert "space tiny" in out and "pair step (expected)" in out and "full step:" in out
    code, out, _ = run(str(files["space"]), "--patch", "16", "16", "16", "--json", "--in-channels", "2")
    data = json.loads(out)
    assert data["arch_logits"] == 4 * 5 * 4  # four cell types, 5 edges each, 4 candidates
    assert data["params"] > 0 and data["flops"] == 2 * data["macs"] > 0
    steps = data["cost"]["steps"]
    assert steps["pair"]["flops"] < steps["full"]["flops"]
    assert steps["pair"]["memory_bytes"] < steps["full"]["memory_bytes"]


def test_genotype_json_and_transfer_flags(files: dict[str, Path]) -> None:
    code, out, _ = run(str(files["genotype"]), "--patch", "8", "8", "8", "--json")
    assert code == 0
    one = json.loads(out)
    assert one["kind"] == "genotype" and one["arch_logits"] == 0
    _, out, _ = run(str(files["genotype"]), "--patch", "8", "8", "8", "--json", "--stem-width", "8")
    wide = json.loads(out)
    assert wide["params"] > one["params"] and wide["flops"] > one["flops"]
    assert [c["instance"] for c in wide["cost"]["cells"]] == ["red[0]", "enc[0]", "exp[0]", "dec[0]"]


def test_emit_torch_refuses_to_overwrite(files: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "net.py"
    code, _, err = run(str(files["genotype"]), "--patch", "8", "8", "8", "--emit", "torch", "-o", str(target),
                       "--in-channels", "3")
    assert code == 0 and target.exists(), err
    spec = importlib.util.spec_from_file_location("net", target)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    assert module.Network()(torch.randn(1, 3, 8, 8, 8)).shape == (1, 2, 8, 8, 8)
    target.write_text("# my own edits\n")
    code, _, err = run(str(files["genotype"]), "--emit", "torch", "-o", str(target), "--patch", "8", "8", "8")
    assert code == 2 and "exists already" in err and "--force" in err
    assert target.read_text() == "# my own edits\n"
    code, _, _ = run(str(files["genotype"]), "--emit", "torch", "-o", str(target), "--force",
                     "--patch", "8", "8", "8")
    assert code == 0 and "class Network" in target.read_text()


def test_clear_errors(files: dict[str, Path], tmp_path: Path) -> None:
    code, _, err = run(str(files["space"]), "--patch", "16", "16", "15")
    assert code != 0
    assert "patch 15 is not divisible by 2 = 2^1 levels: use 14 or 16" in err
    code, _, err = run(str(tmp_path / "missing.scn"))
    assert code == 2 and "no such file" in err
    code, _, err = run(str(files["space"]), "--emit", "torch", "-o", str(tmp_path / "x.py"))
    assert code == 2 and "needs a genotype" in err
    assert not (tmp_path / "x.py").exists()


def test_a_space_labels_its_per_cell_costs_as_the_full_supernets() -> None:
    # the cells of a space are measured on the full pass, the totals above them are the pair step's: the
    # report must say which is which
    spec = Path(__file__).resolve().parents[2] / "specs" / "unet4cell.scn"
    out = CliRunner().invoke(app, ["compile", str(spec), "--patch", "32", "32", "32"]).output
    assert "per sample forward (pair step, expected)" in out
    assert "per cell (full supernet: every candidate operation runs" in out
    genotype = Path(__file__).resolve().parents[2] / "specs" / "genotypes" / "example.scn"
    out = CliRunner().invoke(app, ["compile", str(genotype), "--patch", "32", "32", "32"]).output
    assert "  per cell:" in out and "full supernet" not in out and "pair step" not in out


def test_a_folder_that_is_not_a_training_run_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "genotype.scn").write_text("# not a run\n")  # a genotype file alone does not make a run folder
    result = CliRunner().invoke(app, ["compile", str(folder)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{folder}: a folder, but not a run folder of scnas train" in result.output


def test_a_small_networks_costs_read_in_their_own_prefix_with_the_exact_counts() -> None:
    """A network of a few MFLOPs does not print as 0.00 GFLOPs: a budget's numbers can be checked by eye."""
    genotype = Path(__file__).resolve().parents[2] / "specs" / "genotypes" / "example.scn"
    args = ["compile", str(genotype), "--patch", "16", "16", "16", "--stem-width", "8"]
    out = CliRunner().invoke(app, args).output
    counted = json.loads(CliRunner().invoke(app, [*args, "--json"]).output)
    assert f"({counted['flops']:,} FLOPs;" in out and f"({counted['memory_bytes']:,} bytes" in out
    assert " MFLOPs (" in out and "0.00 GFLOPs" not in out and " MB = " in out and " MiB (" in out
    cells = [line for line in out.splitlines() if line.strip().startswith(tuple("0123456789"))]
    assert cells and all("FLOPs" in line and " 0 FLOPs" not in line for line in cells), cells
