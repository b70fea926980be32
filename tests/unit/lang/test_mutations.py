"""Random damage to the valid specs (deleted or repeated tokens, truncation, misspelled names, garbage
bytes) never gives anything but a clean SpecError (or, by chance, a valid file)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from scnas_dsl.errors import SpecError
from scnas_dsl.graph.printer import format_text
from scnas_dsl.loader import load, load_text

SPECS = Path(__file__).resolve().parents[3] / "specs"
TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|-?[0-9]+(?:\.[0-9]+)?|->|\"[^\"\n]*\"|[^\sA-Za-z0-9_]")


def mutate(text: str, rng: random.Random) -> str:
    spans = [m.span() for m in TOKEN.finditer(text)]
    start, end = spans[rng.randrange(len(spans))]
    kind = rng.randrange(6)
    if kind == 0:  # delete a token
        return text[:start] + text[end:]
    if kind == 1:  # repeat a token
        return text[:end] + " " + text[start:end] + text[end:]
    if kind == 2:  # truncate
        return text[: rng.randrange(len(text))]
    if kind == 3:  # misspell a word
        word = list(text[start:end])
        i = rng.randrange(len(word))
        word[i] = rng.choice("abcxyz019_")
        return text[:start] + "".join(word) + text[end:]
    if kind == 4:  # swap two tokens
        s2, e2 = spans[rng.randrange(len(spans))]
        if s2 < start:
            start, end, s2, e2 = s2, e2, start, end
        if s2 < end:
            return text
        return text[:start] + text[s2:e2] + text[end:s2] + text[start:end] + text[e2:]
    garbage = "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(1, 6)))
    return text[:start] + garbage + text[start:]


@pytest.mark.parametrize("name", ["unet4cell.scn", "baselines/resunet3d.scn", "tiny_by_level.scn"])
def test_mutated_specs_give_spec_errors_only(name: str) -> None:
    text = (SPECS / name).read_text(encoding="utf-8")
    rng = random.Random(name)
    for _ in range(150):
        damaged = mutate(text, rng)
        for _ in range(rng.randrange(3)):
            damaged = mutate(damaged, rng) if damaged.strip() else damaged
        try:
            load_text(damaged, "damaged.scn")
        except SpecError as err:
            assert err.diagnostics and str(err).startswith("damaged.scn:")
        try:
            format_text(damaged, "damaged.scn")
        except SpecError:
            pass


def test_mutated_imports_and_garbage_bytes(tmp_path: Path) -> None:
    rng = random.Random(7)
    base = (SPECS / "genotypes" / "example.scn").read_bytes()
    (tmp_path / "unet4cell.scn").write_bytes((SPECS / "unet4cell.scn").read_bytes())
    sub = tmp_path / "genotypes"
    sub.mkdir()
    for i in range(60):
        data = bytearray(base)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if i % 5 == 0:
            data = data[: rng.randrange(len(data))]
        path = sub / f"damaged{i}.scn"
        path.write_bytes(bytes(data))
        try:
            load(path)
        except SpecError as err:
            assert err.diagnostics and "Traceback" not in str(err)
