"""Loading files: imports relative to the file, cycles, duplicates across files, the Loaded helpers and
user-extended operation tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from scnas_dsl.errors import SpecError
from scnas_dsl.loader import load, load_text
from scnas_dsl.model.checks import check
from scnas_dsl.ops.signatures import LIBRARY_SIGNATURES, OpSignature, ParamDecl
from scnas_dsl.syntax import parse_text

SPACE = """space {name} {{
  ops p {{ c = conv(kernel=3) }}
  cell a normal {{ nodes 1; inputs 1; ops p }}
  unet {{ dims 3; stem conv_block -> 8; encoder a; decoder a; head logits }}
}}
"""
GENOTYPE = "genotype g of {space} {{ cell a {{ n0 = c(in0) }} }}\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_imports_are_relative_to_the_importing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "spaces" / "s.scn", SPACE.format(name="s"))
    write(tmp_path / "spaces" / "found" / "g.scn", 'import "../s.scn"\n' + GENOTYPE.format(space="s"))
    monkeypatch.chdir(tmp_path.parent)  # not the files' folder: the import must not depend on it
    loaded = load(tmp_path / "spaces" / "found" / "g.scn")
    space, genotype = loaded.genotype()
    assert space.name == "s" and genotype.name == "g"
    assert loaded.genotype("g")[1] is genotype
    assert set(loaded.spaces) == {"s"}
    assert loaded.space().name == "s"


def test_diamond_imports_load_each_file_once(tmp_path: Path) -> None:
    write(tmp_path / "base.scn", SPACE.format(name="base"))
    write(tmp_path / "left.scn", 'import "base.scn"\n' + SPACE.format(name="left"))
    write(tmp_path / "right.scn", 'import "base.scn"\n' + SPACE.format(name="right"))
    top = write(tmp_path / "top.scn", 'import "left.scn"\nimport "right.scn"\n' + GENOTYPE.format(space="base"))
    assert set(load(top).spaces) == {"base", "left", "right"}


def test_import_cycle_is_an_error_with_its_location(tmp_path: Path) -> None:
    a = write(tmp_path / "a.scn", 'import "b.scn"\n' + SPACE.format(name="a"))
    write(tmp_path / "b.scn", '\nimport "a.scn"\n' + SPACE.format(name="b"))
    with pytest.raises(SpecError) as caught:
        load(a)
    (diag,) = caught.value.diagnostics
    assert (diag.line, diag.column) == (2, 1) and diag.file.endswith("b.scn")
    assert diag.message.startswith("import cycle: ") and diag.message.endswith("a.scn")
    assert "b.scn" in diag.message


def test_self_import_is_a_cycle(tmp_path: Path) -> None:
    a = write(tmp_path / "a.scn", 'import "a.scn"\n' + SPACE.format(name="a"))
    with pytest.raises(SpecError, match="import cycle"):
        load(a)


def test_errors_in_an_imported_file_are_reported_with_that_file(tmp_path: Path) -> None:
    write(tmp_path / "s.scn", SPACE.format(name="s").replace("conv(kernel=3)", "conv(kernel=4)"))
    g = write(tmp_path / "g.scn", 'import "s.scn"\n' + GENOTYPE.format(space="s"))
    with pytest.raises(SpecError) as caught:
        load(g)
    (diag,) = caught.value.diagnostics
    assert diag.file.endswith("s.scn") and diag.line == 2 and "must be odd" in diag.message


def test_a_space_defined_in_two_files_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "s.scn", SPACE.format(name="s"))
    g = write(tmp_path / "g.scn", 'import "s.scn"\n' + SPACE.format(name="s"))
    with pytest.raises(SpecError, match="space 's' is also defined in"):
        load(g)


def test_loaded_helpers_name_the_choices(tmp_path: Path) -> None:
    loaded = load_text(SPACE.format(name="one") + SPACE.format(name="two"), "two.scn")
    with pytest.raises(SpecError, match=r"2 spaces \(one, two\); name the one you mean"):
        loaded.space()
    assert loaded.space("two").name == "two"
    with pytest.raises(SpecError, match="no space 'three'; spaces here: one, two"):
        loaded.space("three")
    with pytest.raises(SpecError, match="holds no genotype; give a genotype file"):
        loaded.genotype()


def test_load_text_resolves_imports_from_base_dir(tmp_path: Path) -> None:
    write(tmp_path / "s.scn", SPACE.format(name="s"))
    loaded = load_text('import "s.scn"\n' + GENOTYPE.format(space="s"), base_dir=tmp_path)
    assert loaded.genotype()[0].name == "s"
    assert loaded.path is None


def test_user_operations_are_checked_with_an_extended_table() -> None:
    text = SPACE.format(name="s").replace("conv(kernel=3)", "my_attention(heads=4)")
    with pytest.raises(SpecError, match="unknown library operation 'my_attention'"):
        load_text(text)
    mine = LIBRARY_SIGNATURES.extend([OpSignature("my_attention", (ParamDecl("heads", "int", minimum=1),))])
    assert load_text(text, signatures=mine).space().opset("p").get("c").call.kind == "my_attention"
    bad = text.replace("heads=4", "heads=0")
    problems = check(parse_text(bad), signatures=mine)
    assert [p.message for p in problems] == ["'heads' must be at least 1 (got 0)"]


def test_warnings_do_not_stop_a_load() -> None:
    text = SPACE.format(name="s").replace("  unet", "  cell spare normal { nodes 1; inputs 1; ops p }\n  unet")
    loaded = load_text(text, "w.scn")
    assert [w.message for w in loaded.warnings] == ["cell 'spare' is defined but not used in the unet"]
    assert loaded.warnings[0].severity == "warning"
    assert "w.scn:4:8: warning: cell 'spare'" in loaded.warnings[0].render()


def test_what_a_file_is_about_is_one_rule(tmp_path: Path) -> None:
    """``Loaded.subject``, used by compile, draw, data plan, cv and create_model: a file with a genotype is about
    the genotype (even beside its own space); several genotypes must be named; a file without one is about its
    space."""
    both = load(write(tmp_path / "both.scn", SPACE.format(name="s") + GENOTYPE.format(space="s")))
    space, genotype = both.subject()
    assert space.name == "s" and genotype is not None and genotype.name == "g"
    assert both.subject(space="s") == (space, None)
    assert both.subject(genotype="g")[1] == genotype
    with pytest.raises(SpecError, match="not both"):
        both.subject(space="s", genotype="g")
    two = load(write(tmp_path / "two.scn", SPACE.format(name="s") + GENOTYPE.format(space="s")
                     + GENOTYPE.format(space="s").replace("genotype g", "genotype h")))
    with pytest.raises(SpecError, match="has 2 genotypes"):
        two.subject()
    only = load(write(tmp_path / "only.scn", SPACE.format(name="s")))
    assert only.subject()[1] is None and only.subject()[0].name == "s"
