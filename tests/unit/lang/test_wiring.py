"""The U-Net's wiring (scnas_dsl/model/wiring.py), which the drawing, the compiler and the patch rule share."""

from __future__ import annotations

from pathlib import Path

from scnas_dsl.loader import load
from scnas_dsl.model.wiring import STEM, reductions, wiring

SPECS = Path(__file__).resolve().parents[3] / "specs"


def test_the_papers_unet_levels_inputs_and_skips() -> None:
    space = load(SPECS / "unet4cell.scn").space()
    cells = wiring(space)
    # encoder red enc red enc red, the inter cell, decoder exp dec exp dec exp dec
    assert [c.out_level for c in cells] == [1, 1, 2, 2, 3, 3, 2, 2, 1, 1, 0, 0]
    assert reductions(space) == 3
    assert cells[0].inputs == (STEM, STEM) and cells[1].inputs == (STEM, 0) and cells[5].inputs == (3, 4)
    # each decoder cell gets the last encoder-side output at the level of its input, unless it reads it anyway
    skips = {c.instance: c.skip for c in cells if c.section == "decoder"}
    assert skips == {"exp[0]": 4, "dec[0]": 3, "exp[1]": 3, "dec[1]": 1, "exp[2]": 1, "dec[2]": STEM}
