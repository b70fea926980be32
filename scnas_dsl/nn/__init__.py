"""The compiler: a checked search space becomes a supernet, a genotype a fixed network or PyTorch source.

Public API: :func:`build_supernet`, :class:`Supernet`, :func:`build_network`, :func:`check_input_size`,
:class:`TemperatureSchedule`; ``scnas_dsl.nn.codegen.emit_torch`` and ``scnas_dsl.nn.cost.estimate``.
See docs/compiler.md.
"""

from scnas_dsl.nn.derive import derive_genotype
from scnas_dsl.nn.network import FixedNetwork, build_network, check_input_size
from scnas_dsl.nn.schedule import TemperatureSchedule
from scnas_dsl.nn.supernet import Supernet, build_supernet

__all__ = [
    "FixedNetwork", "Supernet", "TemperatureSchedule", "build_network", "build_supernet", "check_input_size",
    "derive_genotype",
]
