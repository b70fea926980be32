"""``scnas check``, ``scnas fmt`` and ``scnas draw`` end to end: output, exit codes, files left alone."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import scnas_process

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"


def scnas(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return scnas_process(*args, cwd=cwd, timeout=120)


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


MESSY = "space s { ops p { c = conv(kernel=3) }  # keep\n cell a normal { nodes 1 inputs 1 ops p }" \
        " unet { stem conv_block -> 8 encoder a decoder a head logits } }\n"


def test_fmt_write_through_a_symlink_formats_the_target_and_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    target = real / "spec.scn"
    target.write_text(MESSY, encoding="utf-8")
    link = tmp_path / "link.scn"
    link.symlink_to(target)
    result = scnas("fmt", "--write", str(link))
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert target.read_text(encoding="utf-8") != MESSY
    assert scnas("fmt", "--check", str(target)).returncode == 0
    assert sorted(p.name for p in real.iterdir()) == ["spec.scn"]


def test_fmt_os_errors_are_messages_and_leave_the_file(tmp_path: Path) -> None:
    spec = tmp_path / "ro.scn"
    spec.write_text(MESSY, encoding="utf-8")
    spec.chmod(0o444)
    result = scnas("fmt", "--write", str(spec))
    assert result.returncode == 1 and "read-only" in result.stderr and "Traceback" not in result.stderr
    assert spec.read_text(encoding="utf-8") == MESSY


def test_fmt_write_reports_a_failing_write_without_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    import errno
    import tempfile

    from typer.testing import CliRunner

    from scnas_dsl.cli import app

    spec = tmp_path / "spec.scn"
    spec.write_text(MESSY, encoding="utf-8")

    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    result = CliRunner().invoke(app, ["fmt", "--write", str(spec)])
    assert result.exit_code == 1, result.output
    assert "cannot write the formatted text (No space left on device)" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert spec.read_text(encoding="utf-8") == MESSY


def test_fmt_formats_what_parses_and_leaves_the_meaning_to_check(tmp_path: Path) -> None:
    """As gofmt and black: fmt refuses only what does not parse; a file that parses but does not check (an
    even kernel, an import that cannot be found) is formatted, and the problem is mentioned on stderr."""
    bad = tmp_path / "bad.scn"
    bad.write_text(MESSY.replace("kernel=3", "kernel=4"), encoding="utf-8")
    checked = scnas("check", str(bad))
    assert checked.returncode == 1 and f"{bad}:1:35: error: 'kernel' must be odd (got 4)" in checked.stderr
    printed = scnas("fmt", str(bad))
    assert printed.returncode == 0 and "kernel=4" in printed.stdout
    assert "parses but does not check" in printed.stderr and "'kernel' must be odd (got 4)" in printed.stderr
    assert scnas("fmt", "--check", str(bad)).returncode == 1  # not canonical yet
    assert scnas("fmt", "--write", str(bad)).returncode == 0
    assert bad.read_text(encoding="utf-8") == printed.stdout
    assert scnas("fmt", "--check", str(bad)).returncode == 0
    # a genotype copied away from the space it imports: its layout does not depend on the import
    moved = tmp_path / "moved.scn"
    moved.write_text('import "../unet4cell.scn"\ngenotype g of unet4cell {   cell enc { n0 = skip(in0) } }\n',
                     encoding="utf-8")
    result = scnas("fmt", "--write", str(moved))
    assert result.returncode == 0 and "cannot import" in result.stderr, result.stderr
    assert "    n0 = skip(in0)" in moved.read_text(encoding="utf-8")
    for content in ("", "# only a comment\n"):
        empty = tmp_path / "empty.scn"
        empty.write_text(content, encoding="utf-8")
        checked, formatted = scnas("check", str(empty)), scnas("fmt", "--check", str(empty))
        assert checked.returncode == 1 and formatted.returncode == 0  # nothing to lay out; check refuses it
        assert "the file defines no space and no genotype" in checked.stderr
        assert "the file defines no space and no genotype" in formatted.stderr


def test_no_message_says_error_twice(tmp_path: Path) -> None:
    bad = tmp_path / "bad.scn"
    bad.write_text("space s { ops p { c = conv(kernel=3) }\n  cell a normal { nodes 1 inputs 1 ops p }\n",
                   encoding="utf-8")
    binary = tmp_path / "binary.scn"
    binary.write_bytes(b"space \xff {}\n")
    importer = tmp_path / "importer.scn"
    importer.write_text('import "binary.scn"\ngenotype g of s { }\n', encoding="utf-8")
    runs = [scnas("check", str(bad)), scnas("fmt", str(bad)), scnas("compile", str(bad)),
            scnas("draw", str(bad), "-o", str(tmp_path / "x.png")), scnas("check", str(importer)),
            scnas("fmt", "--write", str(tmp_path / "missing.scn"))]
    for result in runs:
        assert result.returncode != 0
        assert "error:" in result.stderr
        for line in result.stderr.splitlines():
            assert line.count("error:") <= 1, result.stderr
        assert not result.stderr.startswith("error: ") or ": error: " not in result.stderr, result.stderr
    assert "binary.scn:1:7: error: the file is not UTF-8 text (byte 0xff)" in runs[4].stderr
    assert "importer.scn:1:8: error: cannot import 'binary.scn': the file cannot be read (see above)" in runs[4].stderr
