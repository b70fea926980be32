"""The front end stays free of torch, and the wheel carries the grammar."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_front_end_and_scnas_check_do_not_import_torch() -> None:
    code = textwrap.dedent(f"""
        import sys
        import scnas_dsl.loader, scnas_dsl.syntax, scnas_dsl.model, scnas_dsl.model.checks
        import scnas_dsl.graph, scnas_dsl.graph.cells, scnas_dsl.graph.printer, scnas_dsl.graph.summary
        from scnas_dsl.loader import load
        load({str(ROOT / "specs" / "genotypes" / "example.scn")!r})
        assert "torch" not in sys.modules, "the front end imported torch"
        from scnas_dsl.cli import app
        try:
            app(["check", {str(ROOT / "specs" / "unet4cell.scn")!r}])
        except SystemExit as done:
            assert done.code in (0, None), done.code
        assert "torch" not in sys.modules, "scnas check imported torch"
        print("clean")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("clean")


def test_the_wheel_ships_the_grammar_and_it_loads_from_an_installed_copy(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("scnas_dsl-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "scnas_dsl/grammars/scn.lark" in names
        archive.extractall(tmp_path / "site")
    # Import the unpacked wheel (not the repository) from another directory: the grammar must come from it.
    site = tmp_path / "site"
    code = textwrap.dedent(f"""
        import scnas_dsl, scnas_dsl.syntax.parser as p
        assert scnas_dsl.__file__.startswith({str(site)!r}), scnas_dsl.__file__
        from scnas_dsl.syntax import parse_text
        parse_text("space s {{ unet {{ stem conv_block -> 8; encoder a; decoder a; head logits }} }}")
        print(p.grammar_text() == open(p.__file__.replace("syntax/parser.py", "grammars/scn.lark")).read())
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True"


def test_ci_runs_the_linters_and_the_readmes_test_command() -> None:
    root = Path(__file__).resolve().parents[3]
    readme = (root / "README.md").read_text(encoding="utf-8")
    ci = (root / ".ci" / "run").read_text(encoding="utf-8")
    makefile = (root / "Makefile").read_text(encoding="utf-8")
    assert "make test" in readme
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.startswith("#")]
    assert "make lint" in commands and commands[-1] == "exec make test"
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "ruff check scnas_dsl tests benchmarks" in lint and "mypy scnas_dsl" in lint
