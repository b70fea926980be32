"""Run folders: what a run keeps, and the refusal to overwrite one.

Layout: ``config.json`` (every setting, defaults included), ``space.scn`` and ``genotype.scn``, ``metrics.jsonl``
(one JSON object per epoch), ``environment.json`` (versions, device, seed, git commit), ``checkpoints/``,
``plots/``, and a ``.scnas-run`` marker. Only rank 0 writes (``RunFolder(..., writer=False)`` on the others).
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scnas_dsl.errors import RunError, first_line
from scnas_dsl.files import write_text
from scnas_dsl.folders import folder_state, foreign_folder, hold_folder, read_marker, replace_folder
from scnas_dsl.ops.plugins import Operations, check_recorded

MARKER = ".scnas-run"

# The files of a run folder: this module owns their names (docs/training.md, "Run folders"). Every other module
# names them through these constants.
CONFIG = "config.json"  # every setting, defaults included, and the patch used
ENVIRONMENT = "environment.json"  # versions, device, world size, seed, git commit
SPLIT = "split.json"  # the fold's case ids
SPACE = "space.scn"  # the space (what a run's genotype imports)
GENOTYPE = "genotype.scn"  # a search's result, a training's network
NETWORK = "network.json"  # (train) what predict rebuilds: channels, classes, width, patch, labels
METRICS = "metrics.jsonl"  # one record per epoch
ALPHAS = "alphas.jsonl"  # (search) the logits after each epoch
LOG = "log.txt"  # the report lines
SELECTION = "selection.json"  # (search) how the genotype was chosen, the self-check
CHECKPOINT_DIR = "checkpoints"  # last.pt, best.pt
LAST, BEST = "last.pt", "best.pt"
PLOTS = "plots"
PREPROCESSING = "preprocessing"  # (train) the preprocessing record, so that predict preprocesses alike


def _fields(err: ValidationError) -> str:
    """The first three problems of a record, each with its field."""
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'the file'}: {e['msg']}" for e in err.errors()[:3])


class NetworkRecord(BaseModel):
    """``network.json`` of a training run, read in one place: what prediction and export rebuild."""

    model_config = ConfigDict(extra="allow", strict=True)
    in_channels: int = Field(ge=1)
    num_classes: int = Field(ge=1)
    stem_width: int = Field(ge=1)
    patch: list[Annotated[int, Field(ge=1)]] = Field(min_length=2, max_length=3)
    deep_supervision: list[Annotated[int, Field(ge=1)]] | bool | None = None
    blend: Literal["gaussian", "constant"] = "gaussian"  # the sliding windows' weights (the run's setting)


def read_network(run: Path) -> NetworkRecord:
    """The run's ``network.json``, checked (a RunError that names the file when it is missing or broken)."""
    path = run / NETWORK
    try:
        return NetworkRecord.model_validate(json.loads(path.read_text()))
    except FileNotFoundError as err:
        raise RunError(f"{run}: not a folder written by `scnas train` (no {NETWORK}); give the --out folder of a "
                       "training run") from err
    except ValidationError as err:
        raise RunError(f"{path}: not the record scnas train wrote ({_fields(err)}); was the run folder edited?") from err
    except (OSError, ValueError) as err:
        raise RunError(f"{path}: cannot be read ({first_line(err)}); was the run folder edited?") from err


def trained_network(run: Path, operations: Operations) -> tuple[Path, NetworkRecord]:
    """What a training run trained, as prediction rebuilds it: its genotype file and ``network.json``. A folder
    that is not a training run, or one made with operations that ``operations`` lacks, is a RunError."""
    if not (run / NETWORK).is_file() or not (run / GENOTYPE).is_file():
        raise RunError(f"{run}: a folder, but not a run folder of scnas train (no {NETWORK} and {GENOTYPE}); give "
                       "a .scn file or the --out folder of a training run")
    recipe = read_network(run)
    check_recorded(run, operations)
    return run / GENOTYPE, recipe


class SplitRecord(BaseModel):
    """``split.json`` of a run, read in one place: the fold and its case ids (a search: ``weight_part`` and
    ``arch_part``, a training: ``train``; both ``val``)."""

    model_config = ConfigDict(extra="allow", strict=True)
    fold: int | None = None
    train: list[str] = []
    val: list[str] = []
    weight_part: list[str] = []
    arch_part: list[str] = []


def read_split(run: Path, path: Path | None = None) -> SplitRecord:
    """The run's ``split.json`` (or a copy of it at ``path``), checked: a RunError that names the file when it is
    missing or broken."""
    path = path or run / SPLIT
    try:
        return SplitRecord.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except ValidationError as err:
        raise RunError(f"{path}: not the split record scnas wrote ({_fields(err)}); put back a copy of it or run again") \
            from err
    except (OSError, ValueError) as err:
        raise RunError(f"{path}: cannot be read ({first_line(err)}); put back a copy of it or run again") from err


def json_safe(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None, tuples lists, paths strings."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class RunFolder:
    """A run's folder. ``prepare`` refuses an existing, non-empty folder unless resuming or forced."""

    def __init__(self, path: Path | str, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer

    @property
    def checkpoints(self) -> Path:
        """The folder of ``last.pt`` (and ``best.pt``)."""
        return self.path / CHECKPOINT_DIR

    @property
    def plots(self) -> Path:
        """The folder of the run's pictures."""
        return self.path / PLOTS

    @classmethod
    def held_for(cls, path: Path, kind: str, *, command: str, writer: bool, held: ExitStack, resume: bool,
                 force: bool) -> RunFolder:
        """The run folder of a job: held by this process until ``held`` closes (``hold_folder``: a second process
        is refused at once, with this one's pid) and checked for ``kind``, ``resume`` and ``force`` before anything
        is written (``prepare(create=False)``); only the writer (rank 0) holds and checks it."""
        if writer:
            held.enter_context(hold_folder(path, command))
        run = cls(path, writer=writer)
        if writer:
            run.prepare(kind, resume=resume, force=force, create=False)  # refuse early, write nothing yet
        return run

    def prepare(self, kind: str, resume: bool, force: bool, create: bool = True) -> None:
        """Create the folder, or check that it may be used: ``resume`` needs a run of the same ``kind``;
        ``force`` replaces only a folder that scnas made (it has the marker), never another folder.
        ``create=False`` only checks (so that bad settings found later leave no folder behind)."""
        # a run folder holding only its marker is a run that stopped before it wrote anything (bad settings
        # found late): reusing it loses nothing, and refusing it would block the corrected command
        state = folder_state(self.path, MARKER)
        if resume and force:
            raise RunError("--resume and --force exclude each other: resume continues the run, force replaces it")
        if resume:
            if state not in ("ours", "empty") or not (self.path / MARKER).is_file():
                raise RunError(f"{self.path}: no scnas run here to resume; start a new run without --resume")
            made = read_marker(self.path, MARKER)[0].strip()
            if made != kind:
                raise RunError(f"{self.path}: is a '{made}' run, not a '{kind}' run; cannot resume it as one")
            return
        if state == "foreign":
            raise foreign_folder(self.path, "a scnas run folder", "--force", "--out")
        if state == "ours" and not force:
            raise RunError(f"{self.path}: already exists; use --resume to continue that run, --force to "
                           "replace it, or choose another --out")
        if self.writer and create:
            replace_folder(self.path, MARKER, kind + "\n")

    def write_text(self, name: str, text: str) -> Path:
        """Write a text file of the run (rank 0 only), atomically."""
        target = self.path / name
        if self.writer:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text(target, text, durable=True)  # the records a resume reads: not torn by a power cut
        return target

    def write_json(self, name: str, value: Any) -> Path:
        """Write a JSON file of the run (rank 0 only), NaN as null."""
        return self.write_text(name, json.dumps(json_safe(value), indent=1) + "\n")

    def append_jsonl(self, name: str, record: dict[str, Any]) -> None:
        """Append one JSON line (rank 0 only)."""
        if self.writer:
            with (self.path / name).open("a") as f:
                f.write(json.dumps(json_safe(record)) + "\n")

    def amend_last_jsonl(self, name: str, extra: dict[str, Any]) -> None:
        """Add ``extra`` to the last record of ``name`` (rewritten atomically; what the end of a run measured
        after its last epoch belongs to that epoch's record). A last line that is not a record is left as it is."""
        target = self.path / name
        if not self.writer or not target.is_file():
            return
        lines = [ln for ln in target.read_text(errors="replace").splitlines() if ln.strip()]
        last = _record(lines[-1]) if lines else None
        if last is None:
            return
        lines[-1] = json.dumps(json_safe({**last, **extra}))
        self.write_text(name, "".join(ln + "\n" for ln in lines))

    def truncate_jsonl(self, name: str, keep_epochs: int) -> None:
        """Keep the records of the first ``keep_epochs`` epochs (a resumed run rewrites what followed its
        checkpoint, so the history has no duplicates). A line that is not an epoch's record (cut off by a crash
        or a full disk, or edited) is dropped, with a note naming the file and its lines: the checkpoint, not
        this history, is what a resume continues from."""
        target = self.path / name
        if not self.writer or not target.is_file():
            return
        kept, dropped = [], []
        for number, line in enumerate(target.read_text(errors="replace").splitlines(), 1):
            record = _record(line)
            epoch = record.get("epoch") if record is not None else None
            if not isinstance(epoch, int) or isinstance(epoch, bool):
                if line.strip():
                    dropped.append(number)
                continue
            if epoch < keep_epochs:
                kept.append(line)
        if dropped:
            print(f"note: {target}: line(s) {', '.join(map(str, dropped[:5]))}{', ...' if len(dropped) > 5 else ''} "
                  "are not records of an epoch (cut off or edited) and were dropped; the run continues from its "
                  "checkpoint", file=sys.stderr, flush=True)
        write_text(target, "".join(ln + "\n" for ln in kept), durable=True)


def _record(line: str) -> dict[str, Any] | None:
    """The JSON object on ``line``, or None when it holds none (cut off, another value, not JSON)."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON lines file (empty when the file is missing); a line that is not a JSON object (a
    record cut off by a crash, an edit) is skipped: these files are a run's history, read for reports."""
    if not path.is_file():
        return []
    records = (_record(ln) for ln in path.read_text(errors="replace").splitlines() if ln.strip())
    return [r for r in records if r is not None]


def git_commit() -> str | None:
    """The commit of the scnas source tree when it is a git checkout, else None."""
    source = Path(__file__).resolve().parents[2]
    if not (source / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device: str, seed: int, world_size: int) -> dict[str, Any]:
    """Versions, device, seed and git commit: what produced a run."""
    import nibabel
    import numpy
    import torch

    from scnas_dsl import __version__

    env: dict[str, Any] = {
        "scnas": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "torch": torch.__version__, "numpy": numpy.__version__, "nibabel": nibabel.__version__,
        "device": device, "world_size": world_size, "seed": seed, "git_commit": git_commit(),
        "threads": torch.get_num_threads(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cudnn"] = torch.backends.cudnn.version()
    return env
