"""The U-Net's wiring, computed once for the drawing (``graph/cells.py``), the compiler (``nn/plan.py``) and the
trainer's patch rule (``reductions``): torch-free, below all of them.

The stem is at level 0 (full resolution); a reduction cell's output is one level down (+1), an expansion cell's one
level up (-1). A cell with ``n`` inputs reads the outputs of the ``n`` blocks before it (``in{n-1}`` the previous
one; before the first cell there is only the stem, which then feeds every input). The decoder's skip (the paper's
sum): a decoder cell gets, summed into ``in{n-1}``, the output of the last encoder-side block at the level of the
previous block's output (the stem for level 0), unless that block is the previous block itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from scnas_dsl.model import CellSpec, SearchSpace

#: the stem, as a source of cell inputs
STEM = -1


@dataclass(frozen=True)
class CellWiring:
    """One cell instance in the U-Net: where it sits and what it reads."""

    index: int
    instance: str
    section: str  # encoder, bridge or decoder
    spec: CellSpec
    in_level: int  # the level of the previous block's output
    out_level: int
    #: the block (STEM or a cell index) feeding each input, ``in0`` first
    inputs: tuple[int, ...]
    #: the block whose output is summed into ``in{n-1}`` (decoder cells), or None
    skip: int | None


def wiring(space: SearchSpace) -> list[CellWiring]:
    """Every cell of ``space``'s U-Net in order, with levels, inputs and skip (a level may go below 0 here: the
    compiler refuses such a space with its own message)."""
    levels = {STEM: 0}
    skip_at = {0: STEM}  # level -> the last encoder-side block there
    out: list[CellWiring] = []
    for k, ((instance, spec), (section, _)) in enumerate(zip(space.instances(), space.unet.sequence(), strict=True)):
        prev = k - 1 if k > 0 else STEM
        in_level = levels[prev]
        out_level = in_level + (1 if spec.role == "reduction" else -1 if spec.role == "expansion" else 0)
        inputs = tuple(max(k - spec.inputs + j, STEM) for j in range(spec.inputs))
        skip = None
        if section == "decoder":
            source = skip_at.get(in_level)
            if source is not None and source != prev:
                skip = source
        out.append(CellWiring(k, instance, section, spec, in_level, out_level, inputs, skip))
        levels[k] = out_level
        if section == "encoder":
            skip_at[out_level] = k
    return out


def reductions(space: SearchSpace) -> int:
    """How many down-samplings the U-Net makes (its reduction cells): patches must divide by ``2**reductions``."""
    return sum(1 for cell in wiring(space) if cell.spec.role == "reduction")
