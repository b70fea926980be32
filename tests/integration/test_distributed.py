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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _private_mounts_work(folder: Path) -> bool:
    """Whether this machine lets a process mount a private tmpfs (``unshare --mount``, as root)."""
    import shutil
    import subprocess

    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([unshare, "--mount", "sh", "-c", f"mount -t tmpfs tmpfs '{folder}' && touch '{folder}/x'"],
                          capture_output=True, text=True, check=False)
    return done.returncode == 0 and not (folder / "x").exists()  # mounted, and private to that process


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_each_preparing_its_own_cache_search_as_one_node_does(tmp_path: Path) -> None:
    """``torchrun --nnodes 2`` (c10d rendezvous on localhost, gloo), one process per node, each node's cache on
    its own disk: a private tmpfs at the same SCNAS_CACHE path per node where the machine allows it (node-local
    disks), else another path per node. Every node prepares the raw data itself (local rank 0); the search ends
    with one genotype, the same as one node with two processes (the same global batch and ranks)."""
    import os
    import shutil
    import subprocess
    import sys

    from scnas_dsl.data.synth import synthesize

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    raw = synthesize(tmp_path / "data", "heart", cases=6, shape=(24, 24, 24), seed=0)
    (tmp_path / "tiny.scn").write_text(SPACE)
    (tmp_path / "rank_script.py").write_text(SCRIPT)
    for name in ("one_node", "two_nodes"):
        (tmp_path / name).mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    # the reference: one node, two processes, its own cache
    subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--standalone", str(tmp_path / "rank_script.py"), str(tmp_path / "tiny.scn"),
         str(raw), str(tmp_path / "run_one"), str(tmp_path / "one_node")],
        env={**env, "SCNAS_CACHE": str(tmp_path / "cache_one")}, cwd=tmp_path, capture_output=True, text=True,
        timeout=600, check=True)

    private = _private_mounts_work(tmp_path / "probe")
    port = _free_port()
    nodes = []
    for node in (0, 1):
        cache = tmp_path / ("cache_node" if private else f"cache_node{node}")
        cache.mkdir(exist_ok=True)
        command = [torchrun, "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "scnas-test",
                   str(tmp_path / "rank_script.py"), str(tmp_path / "tiny.scn"), str(raw), str(tmp_path / "run_two"),
                   str(tmp_path / "two_nodes")]
        if private:  # the same path on every node, a disk of its own
            command = ["unshare", "--mount", "sh", "-c",
                       f"mount -t tmpfs tmpfs '{cache}' && exec \"$@\"", "node", *command]
        nodes.append(subprocess.Popen(command, env={**env, "SCNAS_CACHE": str(cache)}, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in nodes]
    for p, (_, err) in zip(nodes, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]

    one = [(tmp_path / "one_node" / f"rank{r}.scn").read_text() for r in (0, 1)]
    two = [(tmp_path / "two_nodes" / f"rank{r}.scn").read_text() for r in (0, 1)]
    assert one[0] == one[1] == two[0] == two[1]
    reference = torch.load(tmp_path / "one_node" / "rank0.pt", weights_only=True)
    for r in (0, 1):
        logits = torch.load(tmp_path / "two_nodes" / f"rank{r}.pt", weights_only=True)
        assert all(torch.allclose(logits[k], reference[k], atol=1e-6) for k in reference)
    records = [json.loads(r) for r in (tmp_path / "run_two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]  # one writer
    if not private:  # each node prepared its own copy, in its own cache
        assert any((tmp_path / "cache_node1").rglob("preprocessed.json"))
        assert any((tmp_path / "cache_node0").rglob("preprocessed.json"))
