"""nnU-Net v2 plans files, read through one typed class (as nnU-Net's own ``PlansManager`` reads them): the
configurations, what each inherits (``inherits_from``, resolved as nnU-Net resolves it), its ``patch_size``, and
a copy of the plans with one configuration more. Every field scnas reads is checked where it is read, and a bad
one is named with the file and the configuration (``configuration '3d_fullres' of nnUNetPlans.json: patch_size
must be a list of positive integers, not ["a", 16, 16]``). Torch-free; ``scnas export-nnunet`` is its user.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scnas_dsl.errors import ScnasError


class PlansError(ScnasError):
    """A plans file scnas cannot read or use: the message names the file, the configuration and the field."""


class Plans:
    """A parsed plans file (``Plans.read(path)``): ``names`` its configurations, ``resolved(name)`` one of them
    with what it inherits, ``patch_size(name)`` its patch, ``with_configuration(...)`` a new document."""

    def __init__(self, document: dict[str, Any], path: Path) -> None:
        self.path = path
        self.document = document
        configurations = document.get("configurations")
        if not isinstance(configurations, dict):
            raise PlansError(f"{path}: not an nnU-Net v2 plans file (no 'configurations' object)")
        for name, config in configurations.items():
            if not isinstance(config, dict):
                raise PlansError(f"{self._where(name)}: a configuration must be an object, not "
                                 f"{json.dumps(config)[:60]}")
            parent = config.get("inherits_from")
            if parent is not None and not isinstance(parent, str):
                raise PlansError(f"{self._where(name)}: inherits_from must be the name of a configuration, not "
                                 f"{json.dumps(parent)[:60]}")
        self.configurations: dict[str, dict[str, Any]] = configurations

    @classmethod
    def read(cls, path: Path) -> Plans:
        """The plans file at ``path``; a file that is not JSON or not plans is a :class:`PlansError`."""
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise PlansError(f"{path}: not a readable JSON plans file ({err})") from None
        if not isinstance(document, dict):
            raise PlansError(f"{path}: not an nnU-Net v2 plans file (a JSON object is expected)")
        return cls(document, Path(path))

    @property
    def names(self) -> list[str]:
        return list(self.configurations)

    def _where(self, name: str) -> str:
        return f"configuration '{name}' of {self.path}"

    def resolved(self, name: str) -> dict[str, Any]:
        """Configuration ``name`` with what it inherits filled in (the nearest definition of a key wins)."""
        seen: list[str] = []
        chain: list[dict[str, Any]] = []
        current: str | None = name
        while current is not None:
            if current in seen:
                raise PlansError(f"{self.path}: configurations inherit in a circle: {' -> '.join([*seen, current])}")
            if current not in self.configurations:
                raise PlansError(f"{self._where(seen[-1])} inherits from '{current}', which the plans file lacks")
            seen.append(current)
            chain.append(self.configurations[current])
            current = self.configurations[current].get("inherits_from")
        merged: dict[str, Any] = {}
        for config in reversed(chain):
            merged.update(config)
        return merged

    def patch_size(self, name: str) -> tuple[int, ...]:
        """The ``patch_size`` configuration ``name`` trains with (inherited or its own): positive integers."""
        patch = self.resolved(name).get("patch_size")
        if (not isinstance(patch, list) or not patch
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in patch)):
            raise PlansError(f"{self._where(name)}: patch_size must be a list of positive integers, not "
                             f"{json.dumps(patch)[:60]}")
        return tuple(patch)

    def with_configuration(self, new_name: str, inherits_from: str, architecture: dict[str, Any],
                           plans_name: str, patch_size: tuple[int, ...] | None = None) -> dict[str, Any]:
        """A copy of the document named ``plans_name`` with configuration ``new_name``: it inherits
        ``inherits_from``, trains ``architecture`` and (when given) its own ``patch_size``."""
        config: dict[str, Any] = {"inherits_from": inherits_from, "architecture": architecture}
        if patch_size is not None:
            config["patch_size"] = [int(s) for s in patch_size]
        return {**self.document, "plans_name": plans_name,
                "configurations": {**self.configurations, new_name: config}}
