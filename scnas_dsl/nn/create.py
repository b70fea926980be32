"""``create_model``: one way from a ``.scn`` file (or text) to a PyTorch module, as ``timm.create_model``.

A file about a genotype gives its fixed network, a file about a space its supernet (the loader's rule,
``Loaded.subject``); ``space=`` or ``genotype=`` picks one of several.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scnas_dsl.loader import Loaded, load, load_text
from scnas_dsl.nn.network import FixedNetwork, build_network
from scnas_dsl.nn.supernet import Supernet, build_supernet
from scnas_dsl.ops.plugins import load_operations


def create_model(source: str | Path | Loaded, *, in_channels: int = 1, num_classes: int = 2,
                 stem_width: int | None = None, space: str | None = None, genotype: str | None = None,
                 ops: Sequence[str] = (), **options: Any) -> FixedNetwork | Supernet:
    """The network of ``source``: a path to a ``.scn`` file, ``.scn`` text (anything holding a ``{``), or a
    loaded file. A genotype gives a :class:`FixedNetwork` (``options``: ``deep_supervision``), a space a
    :class:`Supernet` (``options``: ``sampling``, ``temperature``, ``seed``). ``ops``: operation modules
    (as ``--ops``); ``stem_width`` overrides the spec's width.

    >>> net = create_model("specs/genotypes/example.scn", in_channels=4, num_classes=4)  # doctest: +SKIP
    """
    extra = load_operations(tuple(ops))
    if isinstance(source, Loaded):
        loaded = source
    elif isinstance(source, str) and "{" in source:
        loaded = load_text(source, signatures=extra.library.signatures)
    else:
        loaded = load(source, signatures=extra.library.signatures)
    chosen_space, chosen = loaded.subject(space, genotype)
    if chosen is not None:
        return build_network(chosen_space, chosen, in_channels=in_channels, num_classes=num_classes,
                             stem_width=stem_width, library=extra.library, **options)
    return build_supernet(chosen_space, in_channels=in_channels, num_classes=num_classes, stem_width=stem_width,
                          library=extra.library, **options)
