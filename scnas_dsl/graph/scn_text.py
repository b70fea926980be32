"""The ``.scn`` text scnas writes (one writer for the search's, the retraining's, ``derive``'s and ``sample``'s files):
a space (its own text when it stands alone, comments kept) and genotype files that import it."""

from __future__ import annotations

from scnas_dsl.model import Document, Genotype, Import, SearchSpace


def space_text(space: SearchSpace, source_text: str | None, self_contained: bool) -> str:
    """The text of ``space.scn`` in a run folder: the spec's own text when it stands alone (comments kept),
    else the canonical print of the space."""
    from scnas_dsl.graph.printer import print_document

    if source_text is not None and self_contained:
        return source_text
    return print_document(Document(spaces=(space,)))


def genotype_text(genotype: Genotype, header: str, space_file: str = "space.scn") -> str:
    """A genotype file: a comment header (one ``#`` line per line), ``import "<space_file>"`` and the
    genotype."""
    from scnas_dsl.graph.printer import print_document

    body = print_document(Document(imports=(Import(path=space_file),), genotypes=(genotype,)))
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + body


def genotype_body(genotype: Genotype) -> str:
    """The genotype alone as ``.scn`` text (for the per-epoch records)."""
    from scnas_dsl.graph.printer import print_document

    return print_document(Document(genotypes=(genotype,)))
