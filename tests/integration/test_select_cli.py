"""The search reads each part of its fold where it should (the weight step the weight part; the architecture
step, the discretisation gap and the selection's scores the architecture part), every search ends with a
self-check, and ``scnas derive`` / ``scnas rank`` work on a finished search folder, also an older one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import scnas_dsl.training.search as search_module
from scnas_dsl.cli import app
from scnas_dsl.nn.supernet import Supernet
from scnas_dsl.training.config import SearchConfig, SelectionConfig
from scnas_dsl.training.runs import read_jsonl
from scnas_dsl.training.search import run_search
from tests.helpers import heart_cases, tiny_space

runner = CliRunner()


def _cfg(spec: Path, pre: Path, out: Path, **extra: Any) -> SearchConfig:
    return SearchConfig(spec=str(spec), data=str(pre), out=str(out), epochs=2, batch_size=2, batches_per_epoch=2,
                        patch=(16, 16, 16), stem_width=4, progress=False, device="cpu", gap_batches=2, **extra)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("select")
    _, pre = heart_cases(root)
    spec = tiny_space(root)
    run = root / "search"
    run_search(_cfg(spec, pre, run, selection=SelectionConfig(score_batches=2, check_samples=4)))
    return {"root": root, "pre": pre, "spec": spec, "run": run}


def test_each_step_reads_its_part_of_the_fold(finished: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches are traced from the loader that made them (by the cases it reads) to the forward pass that used
    them: the weight step (no graph to alpha), the architecture step (a graph to alpha) and the measurements
    (a given architecture, no gradients: the gap and the selection's scores)."""
    split = json.loads((finished["run"] / "split.json").read_text())
    origin: dict[int, frozenset[str]] = {}
    made = search_module.loader

    def traced_loader(cfg: Any, data: Any, runtime: Any, case_ids: list[str], *args: Any, **kwargs: Any) -> Any:
        source = made(cfg, data, runtime, case_ids, *args, **kwargs)
        inner = source.__iter__

        def iterate() -> Any:
            for x, y in inner():
                origin[id(x)] = frozenset(case_ids)
                yield x, y

        source.__iter__ = iterate  # type: ignore[method-assign]
        return _Wrapped(source, iterate)

    uses: list[tuple[str, frozenset[str] | None]] = []
    forward = Supernet.forward

    def traced_forward(self: Supernet, x: torch.Tensor, samples: Any = None, *, arch_grad: bool = True) -> Any:
        if x.device.type == "meta":  # the cost counter's runs (FLOPs of random genotypes): no data
            return forward(self, x, samples, arch_grad=arch_grad)
        if samples is not None:
            kind = "measure"
        else:
            kind = "arch" if arch_grad and torch.is_grad_enabled() else "weights"
        uses.append((kind, origin.get(id(x))))
        return forward(self, x, samples, arch_grad=arch_grad)

    import scnas_dsl.training.selection as selection_module

    for module in (search_module, selection_module):  # the search's loaders and the selection's scorer
        monkeypatch.setattr(module, "loader", traced_loader)
    monkeypatch.setattr(Supernet, "forward", traced_forward)
    run_search(_cfg(finished["spec"], finished["pre"], tmp_path / "traced",
                    selection=SelectionConfig(method="sampled", samples=2, score_batches=2, check_samples=2)))
    weight_part, arch_part = frozenset(split["weight_part"]), frozenset(split["arch_part"])
    assert weight_part.isdisjoint(arch_part)
    kinds = {kind for kind, _ in uses}
    assert kinds == {"weights", "arch", "measure"}
    for kind, cases in uses:
        assert cases is not None, f"a {kind} forward on a batch of unknown origin"
        assert cases == (weight_part if kind == "weights" else arch_part), kind


class _Wrapped:
    """A loader whose iteration goes through ``iterate`` (instances' ``__iter__`` is not looked up by ``for``)."""

    def __init__(self, source: Any, iterate: Any) -> None:
        self._source, self._iterate = source, iterate

    def __iter__(self) -> Any:
        return self._iterate()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


def test_every_search_ends_with_a_self_check(finished: dict[str, Path]) -> None:
    run = finished["run"]
    records = read_jsonl(run / "metrics.jsonl")
    last = records[-1]
    assert [r["epoch"] for r in records] == [0, 1] and "self_check" not in records[0]
    assert last["selection"] == "alpha" and "weight_loss" in last  # in the last epoch's record
    check = last["self_check"]
    assert check["of"] == 5 and 1 <= check["rank"] <= 5
    assert check["text"] in (run / "log.txt").read_text()
    assert check["text"] in (run / "genotype.scn").read_text()
    record = json.loads((run / "selection.json").read_text())
    assert record["method"] == "alpha" and len(record["self_check"]["random_scores"]) == 4


def test_derive_and_rank_on_a_finished_search(finished: dict[str, Path], tmp_path: Path) -> None:
    run = finished["run"]
    own = (run / "genotype.scn").read_text()
    # a search made before selection existed: no selection settings, no selection records
    config = json.loads((run / "config.json").read_text())
    config.pop("selection")
    old = tmp_path / "old"
    import shutil

    shutil.copytree(run, old)
    (old / "config.json").write_text(json.dumps(config))
    (old / "selection.json").unlink()

    result = runner.invoke(app, ["derive", str(old), "--select", "projection", "--tune-steps", "1", "--draws", "1",
                                 "--score-batches", "2", "--check-samples", "3"])
    assert result.exit_code == 0, result.output
    target = old / "genotype_projection.scn"
    assert "ranks" in result.output and target.is_file()
    assert runner.invoke(app, ["check", str(target)]).exit_code == 0
    record = json.loads((old / "selection_projection.json").read_text())
    assert record["method"] == "projection" and record["self_check"]["of"] == 4
    # it is not replaced without --force; the search's own genotype never is
    again = runner.invoke(app, ["derive", str(old), "--select", "projection"])
    assert again.exit_code == 1 and "--force" in again.output
    mine = runner.invoke(app, ["derive", str(run), "--select", "sampled", "-o", str(run / "genotype.scn"), "--force"])
    assert mine.exit_code == 1 and "the search's own genotype" in mine.output
    assert (run / "genotype.scn").read_text() == own

    elsewhere = tmp_path / "picked" / "best.scn"
    result = runner.invoke(app, ["derive", str(run), "--select", "sampled", "--samples", "3", "--score-batches", "2",
                                 "--check-samples", "0", "-o", str(elsewhere)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["check", str(elsewhere)]).exit_code == 0  # it imports the run's space from there

    table = tmp_path / "rank.csv"
    result = runner.invoke(app, ["rank", str(run), str(run / "genotype.scn"), str(elsewhere), str(target),
                                 "--score-batches", "2", "-o", str(table)])
    assert result.exit_code == 0, result.output
    rows = table.read_text().splitlines()
    assert rows[0] == "rank,genotype,loss,dice" and len(rows) == 4
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]


def test_derive_and_rank_refuse_what_they_cannot_read(finished: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["derive", str(tmp_path), "--select", "sampled"])
    assert result.exit_code == 1 and "not a folder written by `scnas search`" in result.output
    result = runner.invoke(app, ["derive", str(finished["run"]), "--select", "best"])
    assert result.exit_code == 1 and "invalid selection settings" in result.output
    result = runner.invoke(app, ["rank", str(finished["run"]), str(tmp_path / "none.scn")])
    assert result.exit_code == 1 and "no such file or folder" in result.output
    result = runner.invoke(app, ["rank", str(finished["run"]), str(finished["spec"])])
    assert result.exit_code == 1 and "no genotype" in result.output
    run = finished["run"]
    before = {name: (run / name).read_bytes() for name in ("space.scn", "config.json")}
    for command in (["derive", str(run), "--select", "alpha", "-o", str(run / "space.scn"), "--force"],
                    ["rank", str(run), str(run / "genotype.scn"), "-o", str(run / "config.json"), "--force"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1 and "one of this command's inputs" in result.output, command
    assert all((run / name).read_bytes() == data for name, data in before.items())
    # another data set than the search's: its architecture part differs
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    split = json.loads((moved / "split.json").read_text())
    split["arch_part"] = split["weight_part"][:1]
    (moved / "split.json").write_text(json.dumps(split))
    result = runner.invoke(app, ["rank", str(moved), str(moved / "genotype.scn")])
    assert result.exit_code == 1 and "give the data set the search ran on" in result.output
    assert "Traceback" not in result.output


def test_a_fair_search_from_the_command_line_leaves_the_logits_and_chooses_by_scores(
        finished: dict[str, Path], tmp_path: Path) -> None:
    settings = tmp_path / "select.json"
    settings.write_text(json.dumps({"gap_batches": 2, "selection": {"samples": 3, "score_batches": 2,
                                                                    "check_samples": 2}}))
    out = tmp_path / "fair"
    common = [str(finished["spec"]), "--data", str(finished["pre"]), "--epochs", "2", "--batch-size", "2",
              "--batches-per-epoch", "2", "--patch", "16", "16", "16", "--stem-width", "4", "--device", "cpu",
              "--quiet", "--config", str(settings), "--sampling", "fair"]
    refused = runner.invoke(app, ["search", *common, "--out", str(out)])
    assert refused.exit_code == 1 and "--select projection or --select sampled" in refused.output
    assert not out.exists()
    result = runner.invoke(app, ["search", *common, "--out", str(out), "--select", "sampled"])
    assert result.exit_code == 0, result.output
    assert "self-check: the chosen genotype ranks" in result.output
    record = json.loads((out / "selection.json").read_text())
    assert record["method"] == "sampled" and len(record["details"]["scores"]) == 3
    from scnas_dsl.loader import load
    from scnas_dsl.nn import build_supernet
    from scnas_dsl.training.checkpoint import load_checkpoint

    fresh = build_supernet(load(finished["spec"]).space(), in_channels=1, num_classes=2, stem_width=4, seed=0)
    state = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    for key, alpha in fresh.arch.items():  # the initial logits, untouched by the search
        assert torch.equal(state[f"arch.{key}"], alpha.detach()), key


def test_a_broken_split_record_is_a_message(finished: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    run = Path(shutil.copytree(finished["run"], tmp_path / "broken"))
    for text in ("{broken", "[1]", '{"arch_part": 5}'):
        (run / "split.json").write_text(text)
        result = runner.invoke(app, ["rank", str(run), str(run / "genotype.scn")])
        assert result.exit_code == 1 and "split.json" in result.output and "Traceback" not in result.output
