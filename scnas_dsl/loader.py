"""Load a ``.scn`` file: read, parse, resolve imports, check; one SpecError with every problem.

>>> loaded = load("specs/genotypes/example.scn")          # doctest: +SKIP
>>> space, genotype = loaded.genotype()                    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from scnas_dsl.errors import SpecError
from scnas_dsl.model import Document, Genotype, Import, SearchSpace
from scnas_dsl.model.checks import check
from scnas_dsl.model.diagnostics import at
from scnas_dsl.ops.signatures import LIBRARY_SIGNATURES, Signatures
from scnas_dsl.source import position, source_line, split_lines
from scnas_dsl.syntax import Diagnostic, parse_document, spec_error

# Files larger than this are refused before parsing (a spec is a few kB; this stops a wrong file early).
MAX_BYTES = 8 * 1024 * 1024


@dataclass
class Loaded:
    """A checked file: its document, every space it can use (own and imported), its genotypes."""

    path: Path | None
    document: Document
    spaces: dict[str, SearchSpace] = field(default_factory=dict)
    genotypes: dict[str, Genotype] = field(default_factory=dict)
    warnings: list[Diagnostic] = field(default_factory=list)
    sources: dict[str | None, str] = field(default_factory=dict)

    def space(self, name: str | None = None) -> SearchSpace:
        """The space called ``name``; with None, the only space of the file (own first, then imported)."""
        if name is not None:
            if name not in self.spaces:
                raise SpecError(f"{self._where()}: no space '{name}'; spaces here: {_names(self.spaces)}")
            return self.spaces[name]
        own = [s.name for s in self.document.spaces]
        pool = own or list(self.spaces)
        if len(pool) != 1:
            if not pool:
                raise SpecError(f"{self._where()}: holds no space; give a file with a 'space NAME {{ ... }}' "
                                "block, such as specs/unet4cell.scn")
            raise SpecError(f"{self._where()}: has {len(pool)} spaces ({', '.join(pool)}); name the one you mean")
        return self.spaces[pool[0]]

    def genotype(self, name: str | None = None) -> tuple[SearchSpace, Genotype]:
        """(its space, the genotype called ``name``); with None, the only genotype of the file."""
        if name is None:
            if len(self.genotypes) != 1:
                if not self.genotypes:
                    raise SpecError(f"{self._where()}: holds no genotype; give a genotype file (a search run's "
                                    "genotype.scn, specs/genotypes/ or specs/baselines/), not a search space")
                raise SpecError(f"{self._where()}: has {len(self.genotypes)} genotypes "
                                f"({_names(self.genotypes)}); name the one you mean")
            name = next(iter(self.genotypes))
        if name not in self.genotypes:
            raise SpecError(f"{self._where()}: no genotype '{name}'; genotypes here: {_names(self.genotypes)}")
        genotype = self.genotypes[name]
        return self.spaces[genotype.space], genotype

    def subject(self, space: str | None = None, genotype: str | None = None
                ) -> tuple[SearchSpace, Genotype | None]:
        """What the file is about, by one rule for every command: the named space (``space``) or genotype
        (``genotype``); otherwise a file with genotypes is about its genotype (even when it also defines a space;
        with several, the one to use must be named), and a file without one about its space. Returns (the
        space, the genotype or None)."""
        if space is not None and genotype is not None:
            raise SpecError(f"{self._where()}: name a space or a genotype, not both")
        if space is not None:
            return self.space(space), None
        if genotype is not None or self.genotypes:
            return self.genotype(genotype)
        return self.space(None), None

    def _where(self) -> str:
        return str(self.path) if self.path is not None else "<text>"


def _names(items: Mapping[str, object]) -> str:
    return ", ".join(items) or "none"


def read_text(path: Path, shown: str) -> str:
    """The UTF-8 text of ``path``; SpecError for a missing, unreadable, huge or non-UTF-8 file."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SpecError(f"{shown}: the file is {size / 2**20:.1f} MB; a .scn spec is at most "
                            f"{MAX_BYTES // 2**20} MB: is it the right file?")
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise SpecError(f"{shown}: no such file") from err
    except IsADirectoryError as err:
        raise SpecError(f"{shown}: is a directory, not a .scn file") from err
    except OSError as err:
        raise SpecError(f"{shown}: cannot read the file ({err.strerror})") from err
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        # everything before the first bad byte decodes: its lines and characters place the byte
        text = data.decode("utf-8-sig", errors="replace")
        line, column = position(text, len(data[: err.start].decode("utf-8-sig")))
        shown_line = source_line(split_lines(text), line)
        raise spec_error([Diagnostic(shown, line, column,
                                     f"the file is not UTF-8 text (byte 0x{data[err.start]:02x})",
                                     "save it as UTF-8; a .scn file is plain text", source=shown_line)]) from err


class _Session:
    """One load: files already parsed (by resolved path), the import chain (for cycles), all problems."""

    def __init__(self, signatures: Signatures) -> None:
        self.signatures = signatures
        self.documents: dict[Path, Document] = {}
        self.sources: dict[str | None, str] = {}
        self.problems: list[Diagnostic] = []
        self.spaces: dict[str, SearchSpace] = {}
        # Problems the transformer found (the checker still runs on the stand-ins it put in their place),
        # and the places of those stand-ins, by file.
        self.structural: list[Diagnostic] = []
        self.stand_ins: dict[str | None, frozenset[tuple[int, int]]] = {}

    def add_document(self, text: str, file: str | None, real: Path | None, base_dir: Path | None,
                     chain: tuple[Path, ...]) -> Document | None:
        """Parse one file and, first, the files it imports; None when it does not parse."""
        self.sources[file] = text
        try:
            parsed = parse_document(text, file)
        except SpecError as err:
            self.problems.extend(err.diagnostics)
            return None
        document = parsed.document
        self.structural.extend(parsed.problems)
        self.stand_ins[file] = parsed.stand_ins
        if real is not None:
            self.documents[real] = document
        for imp in document.imports:
            self._import(imp, base_dir, chain, text)
        for space in document.spaces:
            other = self.spaces.get(space.name)
            if other is None:
                self.spaces[space.name] = space
            elif other.span is not None and space.span is not None and other.span.file != space.span.file:
                self.problems.append(at(space.field_span("name"), f"space '{space.name}' is also defined in "
                                        f"{other.span.where()}", "rename one: a genotype names its space",
                                        lines=split_lines(text)))
        return document

    def _import(self, imp: Import, base_dir: Path | None, chain: tuple[Path, ...], text: str) -> None:
        lines = split_lines(text)
        if not imp.path.strip():
            return  # reported by the parser ("the import path is empty")
        if base_dir is None:
            base_dir = Path.cwd()
        target = (base_dir / imp.path).resolve()
        shown = _shown(base_dir / imp.path)
        if target in chain:
            cycle = " -> ".join(_shown(p) for p in chain[chain.index(target):]) + f" -> {shown}"
            self.problems.append(at(imp.span, f"import cycle: {cycle}",
                                    "a file cannot import itself, directly or through other files", lines=lines))
            return
        if target in self.documents:
            return
        if not target.is_file():
            self.problems.append(at(imp.field_span("path"), f"cannot import '{imp.path}': no such file",
                                    f"looked for {shown}; the path is relative to the importing file",
                                    lines=lines))
            return
        try:
            imported_text = read_text(target, shown)
        except SpecError as err:
            if err.diagnostics:  # located in the imported file (not UTF-8, a NUL byte): shown as they are
                self.problems.extend(err.diagnostics)
            self.problems.append(at(imp.field_span("path"), f"cannot import '{imp.path}': "
                                    + ("the file cannot be read (see above)" if err.diagnostics else str(err)),
                                    lines=lines))
            return
        document = self.add_document(imported_text, shown, target, target.parent, chain + (target,))
        if document is not None:
            # Warnings of imported files are theirs to fix; only their errors stop this load.
            self.problems.extend(d for d in self.checked(document) if d.severity == "error")

    def checked(self, document: Document) -> list[Diagnostic]:
        """The checker's diagnostics of ``document`` and the structural ones of its file; a checker
        diagnostic at the place of a stand-in value is left out (it is about the stand-in, not the file)."""
        file = document.span.file if document.span is not None else None
        structural = [d for d in self.structural if d.file == file]
        taken = self.stand_ins.get(file, frozenset())
        found = [d for d in check(document, self.spaces, self.signatures, self.sources)
                 if d.file != file or (d.line, d.column) not in taken]
        return structural + found


def _shown(path: Path) -> str:
    """A path as the user would write it (relative to the working directory when inside it)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load(path: str | Path, signatures: Signatures = LIBRARY_SIGNATURES) -> Loaded:
    """Read, parse, resolve imports (relative to the file) and check ``path``.

    Raises SpecError with every diagnostic of the file and its imports when anything is wrong; warnings
    alone do not raise (they are in ``Loaded.warnings``).
    """
    path = Path(path)
    shown = str(path)
    text = read_text(path, shown)
    return _load(text, shown, path.resolve(), path.resolve().parent, signatures, path)


def load_text(text: str, file: str | None = None, base_dir: str | Path | None = None,
              signatures: Signatures = LIBRARY_SIGNATURES) -> Loaded:
    """Like ``load`` for text in memory; imports are resolved relative to ``base_dir`` (default: the
    working directory)."""
    base = Path(base_dir) if base_dir is not None else None
    return _load(text, file, None, base, signatures, Path(file) if file else None)


def _load(text: str, file: str | None, real: Path | None, base_dir: Path | None, signatures: Signatures,
          path: Path | None) -> Loaded:
    session = _Session(signatures)
    document = session.add_document(text, file, real, base_dir, (real,) if real is not None else ())
    if document is None:
        raise spec_error(session.problems)
    if not document.spaces and not document.genotypes:
        first = source_line(split_lines(text), 1) if text.strip() else None
        session.problems.append(Diagnostic(file, 1, 1, "the file defines no space and no genotype",
                                           "write a 'space NAME { ... }' or a 'genotype NAME of SPACE { ... }'",
                                           source=first))
    own = session.checked(document)
    problems = session.problems + [d for d in own if d.severity == "error"]
    warnings = [d for d in own if d.severity == "warning"]
    if problems:
        raise spec_error(problems + warnings)
    return Loaded(path=path, document=document, spaces=dict(session.spaces),
                  genotypes={g.name: g for g in document.genotypes}, warnings=warnings,
                  sources=dict(session.sources))
