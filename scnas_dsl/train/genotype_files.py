"""The ``.scn`` text a run writes: its space, and genotypes that ``scnas train`` can load."""

from __future__ import annotations

from scnas_dsl.model import Document, Genotype, Import, SearchSpace


def space_text(space: SearchSpace, source_text: str | None, self_contained: bool) -> str:
    """The text of ``space.scn`` in a run folder: the spec's own text when it stands alone (comments kept),
    else the canonical print of the space."""
    from scnas_dsl.graph.printer import print_document

    if source_text is not None and self_contained:
        return source_text
    return print_document(Document(spaces=(space,)))


def genotype_text(genotype: Genotype, header: str) -> str:
    """``genotype.scn``: a comment header, ``import "space.scn"`` and the genotype."""
    from scnas_dsl.graph.printer import print_document

    body = print_document(Document(imports=(Import(path="space.scn"),), genotypes=(genotype,)))
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + body


def genotype_body(genotype: Genotype) -> str:
    """The genotype alone as ``.scn`` text (for the per-epoch records)."""
    from scnas_dsl.graph.printer import print_document

    return print_document(Document(genotypes=(genotype,)))
