"""``scnas check``, ``scnas fmt`` and ``scnas draw`` end to end: output, exit codes, files left alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"


def scnas(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scnas_dsl", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_check_ok_errors_and_usage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.scn"
    bad.write_text("space s {\n  ops p { c = conv(kernel=4) }\n}\n", encoding="utf-8")
    ok = scnas("check", str(SPECS / "unet4cell.scn"), str(SPECS / "genotypes" / "example.scn"))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == [f"{SPECS / 'unet4cell.scn'}: ok (1 space, 0 genotypes)",
                                      f"{SPECS / 'genotypes' / 'example.scn'}: ok (0 spaces, 1 genotype)"]
    failed = scnas("check", str(SPECS / "unet4cell.scn"), str(bad))
    assert failed.returncode == 1
    assert f"{bad}:2:27: error: 'kernel' must be odd (got 4)" in failed.stderr
    assert f"{bad}:1:1: error: space 's' has no 'unet {{ ... }}' block" in failed.stderr
    assert "Traceback" not in failed.stderr
    missing = scnas("check", str(tmp_path / "nope.scn"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    garbage = tmp_path / "garbage.scn"
    garbage.write_bytes(b"\xff\xfe\x00binary")
    result = scnas("check", str(garbage))
    assert result.returncode == 1 and "not UTF-8" in result.stderr and "Traceback" not in result.stderr


def test_check_prints_warnings_and_still_succeeds(tmp_path: Path) -> None:
    spec = tmp_path / "warn.scn"
    spec.write_text((SPECS / "unet4cell.scn").read_text(encoding="utf-8").replace(
        "  unet {", "  cell spare normal { nodes 1; inputs 1; ops paper }\n\n  unet {"), encoding="utf-8")
    result = scnas("check", str(spec))
    assert result.returncode == 0
    assert "warning: cell 'spare' is defined but not used in the unet" in result.stderr
    assert result.stdout.strip().endswith("ok (1 space, 0 genotypes)")


def test_fmt_prints_checks_and_writes(tmp_path: Path) -> None:
    spec = tmp_path / "messy.scn"
    messy = "# keep me\nspace s { ops p { c = conv(kernel=3) }  # and me\n cell a normal { nodes 1 inputs 1 ops p }" \
            " unet { stem conv_block -> 8 encoder a decoder a head logits } }\n"
    spec.write_text(messy, encoding="utf-8")
    printed = scnas("fmt", str(spec))
    assert printed.returncode == 0 and "# keep me" in printed.stdout and "# and me" in printed.stdout
    assert spec.read_text(encoding="utf-8") == messy, "printing must not touch the file"
    assert scnas("fmt", "--check", str(spec)).returncode == 1
    written = scnas("fmt", "--write", str(spec))
    assert written.returncode == 0 and "formatted" in written.stdout
    assert spec.read_text(encoding="utf-8") == printed.stdout
    assert scnas("fmt", "--check", str(spec)).returncode == 0
    assert scnas("fmt", "--check", "--write", str(spec)).returncode == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["messy.scn"], "no temporary file left behind"


def test_fmt_write_leaves_a_broken_file_alone(tmp_path: Path) -> None:
    spec = tmp_path / "broken.scn"
    text = "space s { ops p { c = conv(kernel=3 }\n"
    spec.write_text(text, encoding="utf-8")
    result = scnas("fmt", "--write", str(spec))
    assert result.returncode == 1 and "broken.scn:1:37: error: expected ')' or ','" in result.stderr
    assert spec.read_text(encoding="utf-8") == text


@pytest.mark.slow
def test_draw_genotype_and_space(tmp_path: Path) -> None:
    out = tmp_path / "cells.png"
    result = scnas("draw", str(SPECS / "genotypes" / "example.scn"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(b"\x89PNG")
    svg = tmp_path / "space.svg"
    assert scnas("draw", str(SPECS / "unet4cell.scn"), "-o", str(svg)).returncode == 0
    assert svg.read_text(encoding="utf-8").lstrip().startswith("<?xml")
    wrong = scnas("draw", str(SPECS / "unet4cell.scn"), "-o", str(tmp_path / "cells.txt"))
    assert wrong.returncode == 2 and ".png, .svg or .pdf" in wrong.stderr
    again = scnas("draw", str(SPECS / "genotypes" / "example.scn"), "-o", str(out))
    assert again.returncode == 2 and "exists already; pass --force" in again.stderr
    unknown = scnas("draw", str(SPECS / "baselines" / "unet3d.scn"), "-o", str(out), "--genotype", "nope", "--force")
    assert unknown.returncode == 1 and "no genotype 'nope'; genotypes here: unet3d" in unknown.stderr
