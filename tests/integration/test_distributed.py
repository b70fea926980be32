"""A distributed search with ``torchrun --nproc_per_node 2`` on the CPU (gloo): one genotype, one writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scnas_dsl.studies.demo import small_space
from tests.helpers import generated_set
from tests.integration.torchrun import run_ranks

SPACE = small_space("tiny", levels=1, ops=("conv3", "dil2", "maxpool", "skip", "none"), stem_width=4)

# Each rank runs the search and writes what it derived, so the test can compare the ranks.
SCRIPT = """\
import os, sys
import torch
from scnas_dsl.training.config import SearchConfig
from scnas_dsl.training.search import run_search
from scnas_dsl.graph.scn_text import genotype_body

spec, data, out, report = sys.argv[1:5]
cfg = SearchConfig(spec=spec, data=data, out=out, epochs=2, batch_size=2, patch=(16, 16, 16), stem_width=4,
                   batches_per_epoch=2, device="cpu", progress=False)
result = run_search(cfg)
with open(os.path.join(report, f"rank{os.environ['RANK']}.scn"), "w") as f:
    f.write(genotype_body(result.genotype))
torch.save(result.logits, os.path.join(report, f"rank{os.environ['RANK']}.pt"))
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_search_one_architecture(tmp_path: Path) -> None:
    _, pre = generated_set(tmp_path, "heart", cases=6)
    (tmp_path / "tiny.scn").write_text(SPACE)
    report = tmp_path / "report"
    report.mkdir()
    run_ranks([str(tmp_path / "tiny.scn"), str(pre), str(tmp_path / "run"), str(report)], tmp_path, SCRIPT)
    rank0, rank1 = (report / "rank0.scn").read_text(), (report / "rank1.scn").read_text()
    assert rank0 == rank1  # every rank sampled the same architectures and averaged the same gradients
    logits0 = torch.load(report / "rank0.pt", weights_only=True)
    logits1 = torch.load(report / "rank1.pt", weights_only=True)
    assert logits0.keys() == logits1.keys()
    assert all(torch.equal(logits0[k], logits1[k]) for k in logits0)
    assert rank0.split("genotype ")[1].split(" of")[0] == "tiny_fold0"
    written = (tmp_path / "run" / "genotype.scn").read_text()
    assert rank0.strip().splitlines()[1:] == written.strip().splitlines()[-len(rank0.strip().splitlines()) + 1:]
    records = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]  # one writer: no line twice
    assert "self_check" in records[-1] and "self_check" not in records[0]  # the self-check, in the last epoch's
    assert json.loads((tmp_path / "run" / "environment.json").read_text())["world_size"] == 2

    # retraining the genotype with DDP through the command line: one report, one run folder
    done = run_ranks(["-m", "scnas_dsl", "train",
                      str(tmp_path / "run" / "genotype.scn"), "--data", str(pre), "--out",
                      str(tmp_path / "train"), "--epochs", "2", "--batch-size", "2", "--patch", "16", "16", "16",
                      "--stem-width", "4", "--batches-per-epoch", "2", "--val-every", "1", "--device", "cpu",
                      "--quiet"], tmp_path)
    assert done.stdout.count("best validation mean foreground Dice") == 1
    records = (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in records] == [0, 1]
    assert (tmp_path / "train" / "checkpoints" / "best.pt").is_file()
