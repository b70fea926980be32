"""``scnas sample``: random genotypes written as files that ``scnas check`` and ``scnas train`` accept, the
overwrite guard, and clear messages for requests that cannot be met."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scnas_dsl.graph.printer import print_document
from scnas_dsl.loader import load
from scnas_dsl.model import Document, Import
from scnas_dsl.nn import derive_genotype
from scnas_dsl.studies.demo import small_space
from tests.helpers import invoke

#: A tiny space of the paper's cells (one level, two nodes, stem width 4), as the trainer's tests use.
SPACE = "# a tiny space\n" + small_space("tiny", levels=1, ops=("conv3", "dil2", "skip", "none"), stem_width=4)


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    """The space, and a genotype file of it (the derivation of some logits) that imports it."""
    space = tmp_path / "tiny.scn"
    space.write_text(SPACE)
    model = load(space).space()
    logits = {key: torch.arange(5 * 4, dtype=torch.float32).reshape(5, 4).remainder(3) for key in
              model.structure_keys()}
    found = derive_genotype(model, logits, name="found")[0]
    genotype = tmp_path / "found.scn"
    genotype.write_text(print_document(Document(imports=(Import(path="tiny.scn"),), genotypes=(found,))))
    return {"space": space, "genotype": genotype}


def test_sample_writes_files_that_check(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "baselines"
    code, output = invoke("sample", files["space"], "-n", "3", "--like", files["genotype"], "--match", "params",
                          "--patch", "8", "8", "8", "--seed", "4", "-o", out)
    assert code == 0, output
    assert "parameters within 10% of 'found'" in output and "vs target" in output
    for name in ("random_000.scn", "random_001.scn", "random_002.scn"):
        assert name in output and (out / name).is_file()
    assert (out / "space.scn").read_text() == SPACE  # the space file alone: copied as it is
    code, output = invoke("check", *sorted(out.glob("*.scn")))
    assert code == 0 and output.count(": ok") == 4, output
    summary = json.loads((out / "samples.json").read_text())
    assert summary["like"] == "found" and summary["match"] == "params" and summary["seed"] == 4
    assert [r["file"] for r in summary["samples"]] == ["random_000.scn", "random_001.scn", "random_002.scn"]
    assert all(abs(r["params"] - summary["target"]) <= 0.1 * summary["target"] for r in summary["samples"])

    before = (out / "random_001.scn").read_text()
    code, output = invoke("sample", files["space"], "-n", "3", "--seed", "9", "--patch", "8", "8", "8", "-o", out)
    assert code == 2 and "exist already" in output and "--force" in output
    assert (out / "random_001.scn").read_text() == before
    code, output = invoke("sample", files["space"], "-n", "3", "--seed", "9", "--patch", "8", "8", "8", "-o", out,
                          "--force")
    assert code == 0, output
    assert (out / "random_001.scn").read_text() != before


def test_requests_that_cannot_be_met_say_why(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    other = tmp_path / "other.scn"
    other.write_text(SPACE.replace("space tiny", "space other") +
                     files["genotype"].read_text().split("\n", 1)[1].replace("of tiny", "of other"))
    code, output = invoke("sample", files["space"], "-n", "2", "--like", other, "-o", out)
    assert code == 1 and "is of space 'other', not 'tiny'" in output and "Traceback" not in output
    changed = tmp_path / "changed.scn"
    changed.write_text(SPACE.replace("-> 4", "-> 8") + files["genotype"].read_text().split("\n", 1)[1])
    code, output = invoke("sample", files["space"], "-n", "2", "--like", changed, "-o", out)
    assert code == 1 and "differs from the one in" in output
    code, output = invoke("sample", files["space"], "-n", "0", "-o", out)
    assert code == 1 and "at least one genotype" in output
    code, output = invoke("sample", files["space"], "-n", "2", "--match", "flops", "-o", out)
    assert code == 2 and "needs --like" in output
    code, output = invoke("sample", files["space"], "-n", "2", "--like", files["genotype"], "--tolerance", "0",
                          "--max-draws", "10", "--patch", "8", "8", "8", "-o", out)
    assert code == 1 and "in 10 draws" in output and "GFLOPs to" in output and "--tolerance" in output
    assert not out.exists()  # nothing written


@pytest.mark.slow
def test_scnas_train_accepts_a_sample(files: dict[str, Path], tmp_path: Path) -> None:
    torch.set_num_threads(1)
    code, output = invoke("sample", files["space"], "-n", "1", "--patch", "8", "8", "8", "-o", tmp_path / "s")
    assert code == 0, output
    code, output = invoke("data", "synth", tmp_path / "data", "--task", "heart", "--cases", "5", "--shape",
                          "16", "16", "16")
    assert code == 0, output
    code, output = invoke("train", tmp_path / "s" / "random_000.scn", "--data", tmp_path / "data", "--out",
                          tmp_path / "run", "--epochs", "1", "--batches-per-epoch", "1", "--batch-size", "1",
                          "--patch", "16", "16", "16", "--stem-width", "4", "--device", "cpu", "--quiet",
                          "--no-augment", "--median-spacing")
    assert code == 0, output
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    assert "genotype random_000 of tiny" in (tmp_path / "run" / "genotype.scn").read_text()
