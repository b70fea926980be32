"""The corpus of broken specs: each file ends with the exact diagnostics it must give
(``# expect: LINE:COL: SEVERITY: MESSAGE``), no more and no fewer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scnas_dsl.errors import SpecError
from scnas_dsl.loader import load

BROKEN = Path(__file__).parent / "broken"
CASES = sorted(BROKEN.glob("*.scn"))
_EXPECT = re.compile(r"^# expect: (\d+):(\d+): (error|warning): (.*)$")


def expected(path: Path) -> list[tuple[int, int, str, str]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _EXPECT.match(line)
        if match:
            out.append((int(match[1]), int(match[2]), match[3], match[4]))
    return out


def test_the_corpus_covers_every_kind_of_error() -> None:
    messages = " | ".join(m for case in CASES for *_, m in expected(case))
    for kind in ["unknown library operation", "is defined twice", "must be odd", "has no parameter",
                 "unknown operation set", "unknown cell", "edge from unknown node", "goes backwards",
                 "is a cycle", "goes into input", "has no input edge", "is not read by any edge",
                 "names unknown node", "encoder/decoder mismatch", "sharing mismatch", "is not in the set",
                 "has no edge", "gives no structure", "is dead", "expected", "found end of file",
                 "too large", "cannot import", "unknown space", "in the encoder", "in the decoder",
                 "dims must be 2 or 3", "is given twice", "closes a cycle", "appears twice in the output",
                 "is empty", "is negative", "second 'unet' block", "must be at most", "is a keyword",
                 "must be a whole number", "holds only 'zero' operations", "is a stem or head block"]:
        assert kind in messages, f"no broken spec shows '{kind}'"


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_broken_spec_gives_exactly_its_diagnostics(path: Path) -> None:
    want = expected(path)
    assert want, f"{path.name} has no '# expect:' lines"
    with pytest.raises(SpecError) as caught:
        load(path)
    got = [(d.line, d.column, d.severity, d.message) for d in caught.value.diagnostics]
    assert got == want
    report = str(caught.value)
    # Every error is rendered with file:line:col, the source line and a caret.
    for line, column, severity, message in want:
        assert f"{path}:{line}:{column}: {severity}: {message}" in report
    assert "^" in report
    assert "Traceback" not in report
