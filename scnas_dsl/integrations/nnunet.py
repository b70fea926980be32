"""A found genotype as an nnU-Net v2 network: ``ScnasNetwork`` is what a plans file's ``architecture`` names
(``network_class_name = "scnas_dsl.integrations.nnunet.ScnasNetwork"``, written by ``scnas export-nnunet``);
nnU-Net's ``get_network_from_plans`` calls it with ``input_channels``, ``num_classes`` and the plan's
``arch_kwargs`` (the genotype file, the stem width, ...), and its trainer switches deep supervision with
``network.decoder.deep_supervision = True | False``.

nnU-Net computes the loss weights itself, from ``arch_kwargs["strides"]`` (its ``pool_op_kernel_sizes``): one
target per entry but the last, at scale ``1 / cumprod(strides)``, weights ``1, 1/2, 1/4, ...`` with the last
set to 0 (1e-6 under DDP), normalised to sum 1. ``nnunet_strides`` writes the strides that make nnU-Net's
targets the sizes of the network's outputs: the coarsest output then gets weight 0, as in nnU-Net's own U-Nets.
This module imports nnU-Net nowhere: it is only the network, so it also builds without ``nnunetv2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scnas_dsl.errors import CompileError
from scnas_dsl.nn.network import FixedNetwork
from scnas_dsl.nn.plan import decoder_levels

NETWORK_CLASS = "scnas_dsl.integrations.nnunet.ScnasNetwork"


class _DecoderSwitch:
    """``network.decoder``: the one attribute of nnU-Net's decoder its trainer sets, ``deep_supervision``,
    forwarded to the network's own flag (not a module: nothing of it is in the state dict)."""

    def __init__(self, network: FixedNetwork) -> None:
        self._network = network

    @property
    def deep_supervision(self) -> bool:
        return bool(self._network.deep_supervision)

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        self._network.deep_supervision = bool(enabled)


def output_levels(network: FixedNetwork) -> tuple[int, ...]:
    """The levels of the outputs with deep supervision on, finest first: 0 and the heads' levels."""
    return (0, *sorted(int(level) for level in network.ds_heads))


def nnunet_strides(levels: Sequence[int], dims: int) -> list[list[int]]:
    """nnU-Net's ``strides`` (``pool_op_kernel_sizes``) for outputs at ``levels`` (finest first, from 0): the
    first 1, each next the factor from one output to the next, and one more entry, which nnU-Net drops from its
    scales (so one target per output, the coarsest with weight 0, as for nnU-Net's own U-Nets)."""
    factors = [1] + [2 ** (b - a) for a, b in zip(levels, levels[1:], strict=False)] + [2]
    return [[f] * dims for f in factors]


class ScnasNetwork(FixedNetwork):
    """The scnas fixed network of ``genotype_file`` for nnU-Net v2: ``input_channels`` and ``num_classes`` are
    nnU-Net's, the rest come from the plan's ``arch_kwargs``. It is always built with deep-supervision heads (the
    spec's levels, else every decoder level, whose coarsest nnU-Net weighs 0), so a checkpoint trained with them loads into the network nnU-Net
    builds for inference with ``deep_supervision=False``; the switch (``deep_supervision`` here, or
    ``network.decoder.deep_supervision`` as nnU-Net's trainer sets it) makes ``forward`` return the list
    ``[logits, coarser levels...]`` (full resolution first) or the logits alone. The state dict is that of
    ``build_network``'s network, so weights move between ``scnas train`` and nnU-Net.

    ``stem_width``: None uses the rule of ``scnas train`` (the spec's width when the file defines its own
    network, else the paper's retraining width). ``ops``: modules with your own operations (as ``--ops``).
    ``strides``: what ``scnas export-nnunet`` writes for nnU-Net's deep-supervision scales; when given it must
    be what this network's outputs need."""

    def __init__(self, input_channels: int, num_classes: int, genotype_file: str, stem_width: int | None = None,
                 deep_supervision: bool = True, genotype_name: str | None = None, ops: Sequence[str] = (),
                 strides: Sequence[Sequence[int]] | None = None) -> None:
        from scnas_dsl.loader import load
        from scnas_dsl.ops.plugins import load_operations
        from scnas_dsl.training.config import retraining_width

        extra = load_operations(tuple(ops))
        path = Path(genotype_file)
        loaded = load(path, signatures=extra.library.signatures)
        space, genotype = loaded.genotype(genotype_name)
        width, _ = retraining_width(stem_width, space.unet.stem.width,
                                    any(s.name == space.name for s in loaded.document.spaces))
        # heads on the spec's levels, else on every decoder level: nnU-Net gives its coarsest output weight 0,
        # so all but the coarsest are supervised, as in nnU-Net's own U-Nets
        levels = tuple(space.unet.deep_supervision) or tuple(decoder_levels(space))
        super().__init__(space, genotype, in_channels=input_channels, num_classes=num_classes, stem_width=width,
                         library=extra.library, deep_supervision=levels or True)
        self.genotype_file = str(path)
        self.decoder = _DecoderSwitch(self)
        self.deep_supervision = bool(deep_supervision)
        if strides is not None:
            expected = nnunet_strides(output_levels(self), self.plan.dims)
            if [list(s) for s in strides] != expected:
                raise CompileError(
                    f"{path}: the plan's strides {list(map(list, strides))} do not match the network's outputs "
                    f"at levels {output_levels(self)} (expected {expected}): rerun scnas export-nnunet")
