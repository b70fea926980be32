"""Every spec shipped in specs/ loads, checks clean, round-trips through the printer and is canonical."""

from __future__ import annotations

from pathlib import Path

import pytest

from scnas_dsl.graph.printer import format_text, print_document
from scnas_dsl.loader import load
from scnas_dsl.syntax import parse_text

SPECS = Path(__file__).resolve().parents[3] / "specs"
FILES = sorted(SPECS.rglob("*.scn"))


def test_the_specs_are_there() -> None:
    names = {p.relative_to(SPECS).as_posix() for p in FILES}
    assert {"unet4cell.scn", "unet4cell_2d.scn", "baselines/unet3d.scn", "baselines/resunet3d.scn",
            "genotypes/example.scn"} <= names


@pytest.mark.parametrize("path", FILES, ids=[p.relative_to(SPECS).as_posix() for p in FILES])
def test_spec_loads_clean_and_round_trips(path: Path) -> None:
    loaded = load(path)
    assert loaded.warnings == []
    text = path.read_text(encoding="utf-8")
    document = parse_text(text, str(path))
    printed = print_document(document)
    assert parse_text(printed) == document
    assert print_document(parse_text(printed)) == printed
    # The file itself is in canonical form, comments included.
    assert format_text(text, str(path)) == text


def test_the_paper_space_is_the_papers() -> None:
    space = load(SPECS / "unet4cell.scn").space()
    assert [op.name for op in space.opset("paper").ops] == [
        "conv3", "dil2", "dil3", "dil4", "maxpool", "avgpool", "skip", "none"]
    assert [(c.name, c.role, c.nodes, c.inputs) for c in space.cells] == [
        ("enc", "normal", 4, 2), ("red", "reduction", 4, 2), ("dec", "normal", 4, 2), ("exp", "expansion", 4, 2)]
    assert len(space.instances()) == 12
    assert space.unet.stem.width == 48 and space.unet.share == "by_type" and space.unet.dims == 3
    assert [c.name for c in space.unet.bridge] == ["enc"]


def test_genotypes_resolve_their_spaces_through_imports() -> None:
    space, genotype = load(SPECS / "genotypes" / "example.scn").genotype()
    assert space.name == "unet4cell" and genotype.space == "unet4cell"
    space, genotype = load(SPECS / "tiny_by_level.scn").genotype("tiny_found")
    assert space.unet.share == "by_level"
    assert {c.cell for c in genotype.cells} == set(space.structure_keys())
