"""Operations from outside scnas: ``--ops MODULE`` on the command line and installed plugins.

A ``.scn`` file never imports or runs code; only the command line (``--ops``) and installed packages (the
entry-point group ``scnas.operations``) add operations. An operation module is an importable module name
(``my_ops``, ``pkg.ops``) or a path to a ``.py`` file; it defines either

* ``register(library: Library) -> Library`` (e.g. ``return library.register(SIGNATURE, MyOp)``), or
* ``OPERATIONS``: a sequence of ``(OpSignature, factory)`` pairs.

An entry point of the group names such a module, or a ``register`` function itself
(``[scnas.operations]`` / ``se = my_pkg.ops`` or ``se = my_pkg.ops:register``). Installed plugins are loaded
first (in name order), then the ``--ops`` modules in the order given.

Run folders record what was used (:meth:`Operations.record`, in ``operations.json``): a run folder is data
and never imports code, so ``scnas predict RUN`` and ``scnas compile RUN`` need the same ``--ops`` again (the
plugins are found installed) and say which ones when they are missing (:func:`check_recorded`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from scnas_dsl.errors import ScnasError
from scnas_dsl.ops.signatures import LIBRARY_SIGNATURES, Signatures

if TYPE_CHECKING:  # the library imports torch: only when operations are built
    from scnas_dsl.ops.library import Library

GROUP = "scnas.operations"
RECORD = "operations.json"


class OperationsError(ScnasError):
    """An operation module or plugin that cannot be found, imported or used."""


@dataclass(frozen=True)
class Operations:
    """The library to build with and where its extra operations came from."""

    library: Library
    modules: tuple[str, ...] = ()  # --ops as given (.py files as absolute paths)
    plugins: tuple[str, ...] = ()  # "name = value" of each entry point loaded

    def record(self) -> dict[str, Any]:
        """What a run folder keeps (``operations.json``)."""
        return {"modules": list(self.modules), "plugins": list(self.plugins),
                "operations": sorted(set(self.library.signatures.names()) - set(LIBRARY_SIGNATURES.names()))}


def _module_from_file(path: Path) -> ModuleType:
    path = path.resolve()
    name = path.stem if path.stem.isidentifier() else "ops"
    known = sys.modules.get(name)
    if known is not None and getattr(known, "__file__", None) and Path(known.__file__).resolve() == path:  # type: ignore[arg-type]
        return known
    if known is not None:  # another module has the name: a name of its own for this file
        name = f"{name}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        if name in sys.modules:
            return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise OperationsError(f"--ops {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # code generation reads class sources through the module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:  # a module that exits on import must not end scnas silently
        del sys.modules[name]
        raise OperationsError(f"--ops {path}: importing it failed: {type(err).__name__}: {err}") from err
    return module


def import_module(ref: str) -> ModuleType:
    """The module ``ref`` names: a ``.py`` path (or any existing file) or an importable module name."""
    path = Path(ref)
    if ref.endswith(".py") or path.is_file():
        if not path.is_file():
            raise OperationsError(f"--ops {ref}: no such file")
        return _module_from_file(path)
    try:
        return importlib.import_module(ref)
    except ModuleNotFoundError as err:
        raise OperationsError(f"--ops {ref}: no module of that name can be imported ({err}); give an "
                              "installed module name or the path of a .py file") from err
    except (Exception, SystemExit) as err:  # a module that exits on import must not end scnas silently
        raise OperationsError(f"--ops {ref}: importing it failed: {type(err).__name__}: {err}") from err


def _apply(library: Library, what: Any, origin: str) -> Library:
    """``library`` with the operations of ``what`` (a module, or a register function)."""
    from scnas_dsl.ops.library import Library

    register: Callable[[Library], Library] | None = None
    if isinstance(what, ModuleType):
        register = getattr(what, "register", None)
        pairs = getattr(what, "OPERATIONS", None)
        if register is None and pairs is not None:
            try:
                for signature, factory in pairs:
                    library = library.register(signature, factory)
            except ScnasError as err:  # a name clash, a bad signature: said with the module's name
                raise OperationsError(f"{origin}: {err}") from err
            except (TypeError, ValueError, AttributeError) as err:
                raise OperationsError(f"{origin}: OPERATIONS must be a list of (OpSignature, factory) pairs "
                                      f"({type(err).__name__}: {err})") from err
            return library
    elif callable(what):
        register = what
    if register is None or not callable(register):
        raise OperationsError(f"{origin}: defines no operations: it needs a function register(library) -> "
                              "Library or a list OPERATIONS of (OpSignature, factory) pairs")
    try:
        result = register(library)
    except ScnasError as err:
        raise OperationsError(f"{origin}: {err}") from err
    except Exception as err:  # noqa: BLE001 - a plugin's own bug: named, not a traceback
        raise OperationsError(f"{origin}: register(library) failed: {type(err).__name__}: {err}") from err
    if not isinstance(result, Library):
        raise OperationsError(f"{origin}: register(library) returned {type(result).__name__}, not the "
                              "extended Library (Library.register returns a new one: return it)")
    return result


def _plugins() -> list[EntryPoint]:
    return sorted(entry_points(group=GROUP), key=lambda e: (e.name, e.value))


def load_operations(modules: Sequence[str] = (), *, plugins: bool = True) -> Operations:
    """The default library plus the installed plugins (unless ``plugins`` is False) and ``modules``."""
    from scnas_dsl.ops.library import default_library

    library = default_library()
    loaded: list[str] = []
    if plugins:
        for ep in _plugins():
            origin = f"plugin '{ep.name} = {ep.value}' ({GROUP})"
            try:
                target = ep.load()
            except Exception as err:
                raise OperationsError(f"{origin}: cannot be loaded: {type(err).__name__}: {err}") from err
            library = _apply(library, target, origin)
            loaded.append(f"{ep.name} = {ep.value}")
    recorded = []
    for ref in modules:
        library = _apply(library, import_module(ref), f"--ops {ref}")
        recorded.append(str(Path(ref).resolve()) if ref.endswith(".py") else ref)
    return Operations(library, tuple(recorded), tuple(loaded))


def load_signatures(modules: Sequence[str] = ()) -> Signatures:
    """The operation signatures the checker reads: scnas' own without importing torch when no module is
    given and no plugin is installed, else those of :func:`load_operations`."""
    if not modules and not _plugins():
        return LIBRARY_SIGNATURES
    return load_operations(modules).library.signatures


def _name(ref: str) -> str:
    return Path(ref).stem if ref.endswith(".py") else ref


def read_record(path: Path) -> dict[str, list[str]]:
    """A run folder's ``operations.json`` (:meth:`Operations.record`), checked: an object whose ``modules``,
    ``plugins`` and ``operations`` are lists of strings (missing ones empty); anything else is an
    :class:`OperationsError` naming the file and the field."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OperationsError(f"{path}: cannot be read ({err})") from err
    if not isinstance(record, dict):
        raise OperationsError(f"{path}: damaged (a JSON object with modules, plugins and operations is expected); "
                              "rewrite it or start the run again")
    out: dict[str, list[str]] = {}
    for key in ("modules", "plugins", "operations"):
        value = record.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise OperationsError(f"{path}: damaged ('{key}' must be a list of names, not {json.dumps(value)[:60]}); "
                                  "rewrite it or start the run again")
        out[key] = value
    return out


def check_recorded(run: Path, given: Operations) -> None:
    """Refuse, with the ``--ops`` to add, when ``run`` was made with operation modules or plugins that
    ``given`` lacks (compared by module name and by the operations they declare)."""
    path = run / RECORD
    if not path.is_file():
        return
    record = read_record(path)
    names = set(given.library.signatures.names())
    lacking_ops = [op for op in record["operations"] if op not in names]
    if not lacking_ops:
        return
    have = {_name(m) for m in given.modules}
    modules = [m for m in record["modules"] if _name(m) not in have]
    plugins = [p for p in record["plugins"] if p not in given.plugins]
    hints = []
    if modules:
        hints.append("give " + " ".join(f"--ops {m}" for m in modules))
    if plugins:
        hints.append(f"install the package(s) of plugin(s) {', '.join(plugins)} (entry points of {GROUP})")
    raise OperationsError(
        f"{run}: made with operation(s) {', '.join(lacking_ops)} from outside scnas, which this command does "
        f"not have: {'; '.join(hints) or 'give the --ops module(s) that define them'} (a run folder never "
        "imports code by itself)")
