"""The Gumbel-softmax temperature over the search: from ``initial`` to ``final``, linear or exponential."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from scnas_dsl.errors import CompileError


@dataclass(frozen=True)
class TemperatureSchedule:
    """tau(fraction) for fraction = share of the search done, 0..1.

    ``linear``: initial + (final - initial) * fraction; ``exponential``: initial * (final / initial) **
    fraction (the same relative decay every epoch). Defaults: 5 -> 0.1, exponential (the paper gives no
    values; GDAS anneals 10 -> 0.1, and a start of 5 keeps early pairs close to uniform without washing out
    the logits).
    """

    initial: float = 5.0
    final: float = 0.1
    kind: Literal["linear", "exponential"] = "exponential"

    def __post_init__(self) -> None:
        if not (self.initial > 0 and self.final > 0):
            raise CompileError(
                f"temperature schedule {self.initial} -> {self.final}: temperatures must be positive"
            )
        if self.kind not in ("linear", "exponential"):
            raise CompileError(f"temperature schedule kind '{self.kind}': use linear or exponential")

    def at(self, fraction: float) -> float:
        """The temperature after ``fraction`` of the search (clamped to 0..1)."""
        f = min(max(float(fraction), 0.0), 1.0)
        if self.kind == "linear":
            return self.initial + (self.final - self.initial) * f
        return self.initial * math.exp(f * math.log(self.final / self.initial))
