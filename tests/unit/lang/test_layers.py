"""The front end's import graph runs one way (docs/architecture.md): each layer imports only itself and the
layers below it, lazy imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "scnas_dsl"
# lowest first; a module may import from its own layer and the ones before it
LAYERS = [
    ("scnas_dsl.errors", "scnas_dsl.files", "scnas_dsl.folders", "scnas_dsl.stopping", "scnas_dsl.source",
     "scnas_dsl.ops.signatures"),
    ("scnas_dsl.model",),
    ("scnas_dsl.syntax",),
    ("scnas_dsl.graph",),
    ("scnas_dsl.loader",),
]


def _layer(module: str, layers: list[tuple[str, ...]] = LAYERS) -> int | None:
    """The rank of ``module``'s layer in ``layers`` (the longest matching prefix), or None."""
    best: tuple[int, int] | None = None
    for rank, layer in enumerate(layers):
        for prefix in layer:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    return None if best is None else best[0]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "scnas_dsl":
                found += [(node.lineno, f"scnas_dsl.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.startswith("scnas_dsl")]


def _front_end_files() -> list[Path]:
    files = [p for p in PACKAGE.rglob("*.py") if _layer(_module_name(p)) is not None]
    assert len(files) > 10
    return sorted(files)


@pytest.mark.parametrize("path", _front_end_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_front_end_imports_only_its_own_layer_and_those_below(path: Path) -> None:
    own = _layer(_module_name(path))
    assert own is not None
    wrong = []
    for line, name in _imports(path):
        target = _layer(name)
        if target is None:
            wrong.append(f"line {line}: {name} (outside the front end)")
        elif target is not None and target > own:
            wrong.append(f"line {line}: {name} (layer {target} above {own})")
    assert not wrong, f"{path.relative_to(PACKAGE)} imports upwards: " + "; ".join(wrong)


#: the whole package, lowest first (docs/architecture.md): the front end above, then the operation library, the
#: compiler, the data pipeline, the pipeline's stages (inference and evaluation below training; prediction, the
#: studies and deployment above it), the command line (and the old trainer path) and the package's entry points
PACKAGE_LAYERS = [
    *LAYERS,
    ("scnas_dsl.ops",),
    ("scnas_dsl.nn",),
    ("scnas_dsl.data",),
    ("scnas_dsl.inference", "scnas_dsl.evaluation"),
    ("scnas_dsl.training", "scnas_dsl.integrations"),
    ("scnas_dsl.prediction",),
    ("scnas_dsl.studies", "scnas_dsl.deployment"),
    ("scnas_dsl.cli", "scnas_dsl.__main__", "scnas_dsl.train"),
]


def _package_layer(module: str) -> int | None:
    if module == "scnas_dsl":  # the package's lazy entry points (scnas_dsl/__init__.py) sit on top
        return len(PACKAGE_LAYERS)
    return _layer(module, PACKAGE_LAYERS)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_imports_only_its_own_layer_and_those_below(path: Path) -> None:
    """An arrow that runs back up (a data module importing the trainer, the compiler importing the command line)
    fails here, lazy imports inside functions included."""
    own = _package_layer(_module_name(path))
    assert own is not None, f"{path.relative_to(PACKAGE)} belongs to no layer: add its package to PACKAGE_LAYERS"
    wrong = [f"line {line}: {name} (layer {_package_layer(name)} above {own})" for line, name in _imports(path)
             if (_package_layer(name) or 0) > own]
    assert not wrong, f"{path.relative_to(PACKAGE)} imports upwards: " + "; ".join(wrong)
