"""Run settings as pydantic models, with the paper's values as defaults (Kim et al. 2019, "Training set-up").

Search: Adam for the weights lr 0.025, betas (0.9, 0.999) (the paper prints (0.1, 0.001): see
docs/training.md for why the default departs from it); Adam for the logits lr 0.003, betas (0.5, 0.999);
both learning rates x0.1 after 20 epochs without improvement of the training loss; 200 epochs; batch 4;
stem width 48. Retraining: Adam lr 3e-4, betas (0.9, 0.999); x0.2 after a 30-epoch plateau; stop after 500
epochs or when the learning rate falls under 1e-7; batch 8; stem width 68. Patches of 128^3, resampling to
0.7 mm. Settings come from the command line or a JSON / TOML (/ YAML with PyYAML installed) file; the command
line wins over the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scnas_dsl.errors import RunError

Device = Literal["auto", "cpu", "cuda"]
Sampling = Literal["pair", "single", "full", "fair"]


class AdamConfig(BaseModel):
    """One Adam optimiser."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    lr: float = Field(gt=0)
    betas: tuple[float, float]
    weight_decay: float = Field(default=0.0, ge=0)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):  # NaN fails too
            raise ValueError(f"Adam's betas must each be at least 0 and below 1 (got {v[0]:g}, {v[1]:g})")
        return v


class PlateauConfig(BaseModel):
    """Multiply the learning rate by ``factor`` after ``patience`` epochs without a better training loss."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    factor: float = Field(gt=0, lt=1)
    patience: int = Field(ge=0)
    #: relative improvement needed to count as better (torch's ReduceLROnPlateau threshold, "rel" mode)
    threshold: float = Field(default=1e-4, ge=0)


class TemperatureConfig(BaseModel):
    """Gumbel-softmax temperature from ``initial`` to ``final`` over the search (the compiler's schedule)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    initial: float = Field(default=5.0, gt=0)
    final: float = Field(default=0.1, gt=0)
    kind: Literal["linear", "exponential"] = "exponential"


class CommonConfig(BaseModel):
    """What search and retraining share."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    data: str
    fold: int = Field(default=0, ge=0)
    out: str | None = None
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    #: patch size (D, H, W); None: 128^3 as the paper, shrunk to the median preprocessed shape
    patch: tuple[int, int, int] | None = None
    stem_width: int = Field(ge=1)
    device: Device = "auto"
    seed: int = 0
    #: training batches per epoch (nnU-Net's 250)
    batches_per_epoch: int = Field(default=250, ge=1)
    #: target voxel size in mm when the data set is preprocessed here; None (or "median") = the data set's
    #: median spacing
    spacing: tuple[float, float, float] | None = (0.7, 0.7, 0.7)
    splits_seed: int = 12345
    foreground_fraction: float = Field(default=1 / 3, ge=0, le=1)
    augment: bool = True
    #: where augmentation runs: "loader" in the loader's worker processes on the CPU, "device" on the training
    #: device in batches after the move there (the workers only crop), "auto" on the device when it is a GPU,
    #: else in the loader; the same seed gives the same transforms either way (on a GPU the dense noise comes
    #: from CUDA's generator: docs/data.md)
    augment_on: Literal["auto", "loader", "device"] = "auto"
    #: loader worker processes; None: on a GPU min(4, CPUs per GPU process - 1), on the CPU 0
    #: (``scnas_dsl.data.loader.default_workers``)
    workers: int | None = Field(default=None, ge=0)
    #: mixed precision on CUDA (bf16 where supported, else fp16 with a gradient scaler); ignored on the CPU
    amp: bool = True
    #: activation checkpointing per cell (``--checkpoint-cells``): keeps only the cells' inputs and outputs and
    #: recomputes each cell in its backward (less GPU memory, more time); "auto": on only when the GPU memory
    #: estimate says the step would not fit without it but would with it
    checkpoint_cells: bool | Literal["auto"] = "auto"
    progress: bool = True
    #: operation modules (``--ops``: importable names or .py paths) besides the installed plugins
    ops: tuple[str, ...] = ()
    #: experiment trackers besides the run's own files (``--log tensorboard,wandb``; training/tracking.py)
    log: tuple[str, ...] = ()

    @field_validator("log", mode="before")
    @classmethod
    def _trackers(cls, v: Any) -> Any:
        from scnas_dsl.training.tracking import parse_trackers

        return parse_trackers(v)

    @field_validator("spacing", mode="before")
    @classmethod
    def _median(cls, v: Any) -> Any:
        return None if v == "median" else v

    @field_validator("checkpoint_cells", mode="before")
    @classmethod
    def _true_false_auto(cls, v: Any) -> Any:
        words = {"true": True, "false": False, "auto": "auto"}
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lower() in words:
            return words[v.strip().lower()]
        raise ValueError(f'should be true, false or "auto" (got {v!r})')

    @field_validator("patch")
    @classmethod
    def _patch_positive(cls, v: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if v is not None and min(v) < 1:
            raise ValueError("patch sizes must be positive")
        return v


Select = Literal["alpha", "projection", "sampled"]
SELECTIONS: tuple[str, ...] = ("alpha", "projection", "sampled")


class SelectionConfig(BaseModel):
    """How a finished search chooses its genotype, and its self-check (``scnas_dsl.training.selection``).

    Every score is measured on the trained supernet with inherited weights, in evaluation mode, on
    ``score_batches`` fixed un-augmented batches of the fold's architecture part; ``by`` ranks the scores
    (``dice``: mean foreground Dice, ties by loss; ``loss``: the soft Jaccard loss)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    #: ``alpha``: the paper's, the largest logit on each edge; ``projection``: edge by edge the candidate whose
    #: presence scores best on the supernet, the shared weights fine-tuned after each decision (DARTS-PT);
    #: ``sampled``: the best of ``samples`` random genotypes on the supernet (random search with weight sharing)
    method: Select = "alpha"
    by: Literal["dice", "loss"] = "dice"
    score_batches: int = Field(default=8, ge=1)
    #: ``sampled``: genotypes drawn and scored; ``match`` "flops" draws them within 10% of the FLOPs of the
    #: alpha genotype
    samples: int = Field(default=32, ge=1)
    match: Literal["none", "flops"] = "none"
    #: the self-check: this many random genotypes of the chosen genotype's FLOPs (within 10%) are scored next
    #: to it; 0 switches it off
    check_samples: int = Field(default=20, ge=0)
    #: ``projection``: weight steps on the weight part after each edge's decision, the order of the edges
    #: (``random``, seeded; ``network``: the U-Net's), and the architectures drawn for the edges not yet
    #: decided (``draws`` per score, by the search's sampling at ``temperature``; the same draws for every
    #: candidate of an edge)
    tune_steps: int = Field(default=5, ge=0)
    order: Literal["random", "network"] = "random"
    draws: int = Field(default=4, ge=1)
    temperature: float = Field(default=1.0, gt=0)


class BudgetConfig(BaseModel):
    """A search's budget (``--budget flops=40G,params=5M,memory=12GB``): limits on the chosen genotype's FLOPs (one
    forward pass of one sample at the search's patch), parameters and training memory (a step of the search's
    batch), measured as ``scnas compile`` measures them at stem width ``width`` (None: the search's). The search
    adds ``weight * sum max(0, expected / limit - 1)`` to its architecture loss; the weight grows linearly from
    0 over the first ``ramp`` share of the architecture epochs (``scnas_dsl.nn.budget``, docs/training.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    flops: float | None = None
    params: float | None = None
    memory: float | None = None
    width: int | None = Field(default=None, ge=1)
    #: 0.1: closer to the budget and better retrained than 1 in the budget study (docs/benchmarks.md)
    weight: float = Field(default=0.1, ge=0)
    ramp: float = Field(default=0.25, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, data: Any) -> Any:
        from scnas_dsl.nn.budget import METRICS, parse_budget, parse_quantity

        if isinstance(data, (str, list, tuple)):
            data = parse_budget(data if isinstance(data, str) else [str(d) for d in data])
        if isinstance(data, BudgetConfig):
            return data
        if not isinstance(data, dict):
            raise ValueError(f"a budget is KEY=VALUE text or a table of them (e.g. flops=40G or {{flops = \"40G\"}}), "
                             f"not {data!r}")
        out = {str(k).lower(): v for k, v in data.items()}
        known = (*METRICS, "width", "weight", "ramp")
        unknown = [k for k in out if k not in known]
        if unknown:
            raise ValueError(f"unknown budget key '{unknown[0]}': the limits are flops, params and memory (e.g. "
                             "flops=40G, params=5M, memory=12GB), the other keys width, weight and ramp")
        for metric in METRICS:
            if out.get(metric) is not None:
                out[metric] = parse_quantity(metric, out[metric])
        if all(out.get(m) is None for m in METRICS):
            raise ValueError("a budget needs a limit: flops, params or memory (e.g. flops=40G)")
        for key in ("width", "weight", "ramp"):  # "68" from the command line is the number 68
            value = out.get(key)
            if isinstance(value, str):
                try:
                    out[key] = int(value) if key == "width" else float(value)
                except ValueError:
                    kind = "a whole number of channels" if key == "width" else "a number"
                    raise ValueError(f"budget {key}={value}: not {kind}") from None
        return out

    def limits(self) -> dict[str, float]:
        """metric -> limit, for the limited metrics."""
        return {m: v for m, v in (("flops", self.flops), ("params", self.params), ("memory", self.memory))
                if v is not None}


class SearchConfig(CommonConfig):
    """``scnas search``: the bi-level search with the paper's settings as defaults."""

    spec: str
    space: str | None = None
    epochs: int = Field(default=200, ge=1)
    batch_size: int = Field(default=4, ge=1)
    stem_width: int = Field(default=48, ge=1)
    sampling: Sampling = "pair"
    #: the paper's learning rate; Adam's usual betas instead of the paper's (0.1, 0.001), which made the
    #: supernet diverge in the search study (docs/benchmarks.md); ``--weight-betas 0.1 0.001`` restores them
    weight_optimizer: AdamConfig = AdamConfig(lr=0.025, betas=(0.9, 0.999))
    arch_optimizer: AdamConfig = AdamConfig(lr=0.003, betas=(0.5, 0.999))
    plateau: PlateauConfig = PlateauConfig(factor=0.1, patience=20)
    temperature: TemperatureConfig = TemperatureConfig()
    #: epochs at the start in which only the weights are trained (sampled architectures, no architecture step;
    #: the temperature stays at its initial value and is annealed over the epochs after them); 0: the paper's
    #: search, which updates the logits from the first step
    arch_warmup_epochs: int = Field(default=0, ge=0)
    #: batches of the architecture part (the same every epoch, not augmented) on which the argmax architecture
    #: and the sampled supernet are compared after each epoch (the discretisation gap); 0 switches it off
    gap_batches: int = Field(default=4, ge=0)
    #: how the genotype is chosen at the end and the self-check (``--select``; the paper's ``alpha`` by default)
    selection: SelectionConfig = SelectionConfig()
    #: a limit on the chosen genotype's FLOPs, parameters or training memory (``--budget``); None: no limit
    budget: BudgetConfig | None = None

    @model_validator(mode="after")
    def _fair_needs_scores(self) -> SearchConfig:
        if self.sampling == "fair" and self.selection.method == "alpha":
            raise ValueError("fair sampling trains the shared weights only (the logits stay as they start): "
                             "choose the genotype by measured scores, --select projection or --select sampled")
        return self


class TrainConfig(CommonConfig):
    """``scnas train``: retraining a genotype from scratch with the paper's settings as defaults."""

    genotype: str
    genotype_name: str | None = None
    optimizer: AdamConfig = AdamConfig(lr=3e-4, betas=(0.9, 0.999))
    plateau: PlateauConfig = PlateauConfig(factor=0.2, patience=30)
    #: stop after ``epochs`` or when the learning rate falls under ``min_lr``
    min_lr: float = Field(default=1e-7, ge=0)
    epochs: int = Field(default=500, ge=1)
    batch_size: int = Field(default=8, ge=1)
    #: the retraining width; None: the spec's own width when the genotype's file defines its space (a
    #: hand-written network such as specs/baselines/), else the paper's retraining width, 68 (a searched
    #: genotype, whose imported space carries the search's width): see ``retraining_width``
    stem_width: int | None = Field(default=None, ge=1)  # type: ignore[assignment]
    #: validation Dice (sliding windows on the fold's validation cases) every this many epochs and at the end
    val_every: int = Field(default=10, ge=1)
    #: at most this many validation cases per check (None: all); the final check always uses all
    val_cases: int | None = Field(default=None, ge=1)
    blend: Literal["gaussian", "constant"] = "gaussian"
    #: deep supervision: None as the spec says (its ``deep_supervision`` levels), False off, True on (the
    #: spec's levels, or every decoder level but the coarsest when it names none)
    deep_supervision: bool | None = None
    mirror_validation: bool = True  # nnU-Net mirrors its validation; --no-mirror (scnas train) turns it off
    #: ``torch.compile`` the network for the training steps (``--compile``); falls back to eager with a note
    #: where it cannot compile (``scnas_dsl.training.compiling``). Validation stays eager.
    compile: bool = False


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a ``.json``, ``.toml`` or ``.yaml``/``.yml`` file (a mapping of setting -> value)."""
    if not path.is_file():
        raise RunError(f"{path}: configuration file not found")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            value = json.loads(text, object_pairs_hook=_no_repeats)
        elif suffix == ".toml":
            value = _toml(path, text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml  # type: ignore[import-untyped]
            except ImportError as err:
                raise RunError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or write the "
                               "settings as .json or .toml") from err
            value = yaml.load(text, Loader=_yaml_loader(yaml))  # noqa: S506 (a SafeLoader)
        else:
            raise RunError(f"{path}: unknown configuration format '{suffix}': use .json, .toml or .yaml")
    except json.JSONDecodeError as err:
        raise RunError(f"{path}: cannot be parsed ({err})") from err
    except _RepeatedKey as err:  # TOML refuses repeated keys itself
        raise RunError(f"{path}: the setting '{err}' is given twice in one table; keep one") from err
    except RunError:
        raise
    except Exception as err:  # yaml's errors, when PyYAML is there
        raise RunError(f"{path}: cannot be parsed ({err})") from err
    if not isinstance(value, dict):
        raise RunError(f"{path}: expected a mapping of settings at the top level")
    return value


class _RepeatedKey(ValueError):
    """A JSON object with a key twice (json keeps the last silently; a setting given twice is a mistake)."""


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen[key] = value
    return seen


def _yaml_loader(yaml: Any) -> Any:
    """PyYAML's SafeLoader, refusing a mapping with a key twice (PyYAML keeps the last silently)."""

    class Loader(yaml.SafeLoader):  # type: ignore[misc,name-defined]
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
            repeated = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
            if repeated is not None:
                raise _RepeatedKey(repeated)
            return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]

    return Loader


def _toml(path: Path, text: str) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError as err:  # Python 3.10
        raise RunError(f"{path}: reading TOML needs Python 3.11 or newer; write the settings as .json") from err
    return tomllib.loads(text)


def resolve_config(kind: type[CommonConfig], file: Path | None, **cli: Any) -> Any:
    """The validated configuration: file settings, overridden by every command-line value that is not None."""
    values: dict[str, Any] = {}
    # nested settings (one optimiser's betas, say) are merged over the default, then the file, then the
    # command line: a file or an option may give only the part it changes
    given = read_config_file(file) if file is not None else {}
    for source in (given, {k: v for k, v in cli.items() if v is not None}):
        for key, value in source.items():
            default = kind.model_fields[key].default if key in kind.model_fields else None
            if isinstance(value, dict) and isinstance(default, BaseModel):
                earlier = values.get(key, default.model_dump())
                value = {**(earlier if isinstance(earlier, dict) else {}), **value}
            values[key] = value
    try:
        return kind.model_validate(values)
    except ValidationError as err:
        cli_keys = {k for k, v in cli.items() if v is not None}

        def origin(key: str) -> str:  # the command line wins over the file for a key both give
            return "" if file is None else (" (from the command line)" if key in cli_keys else f" (from {file})")

        raise RunError(f"invalid settings: {settings_problems(err, origin)}") from err


def settings_problems(err: ValidationError, origin: Callable[[str], str] = lambda key: "") -> str:
    """A validation error of settings in words, one ``setting.path: what is wrong`` per problem (``origin``: where
    a top-level setting came from, e.g. ``' (from search.json)'``)."""
    problems = []
    for e in err.errors():
        where = ".".join(str(x) for x in e["loc"]) or "settings"
        message = str(e["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}{origin(str(e['loc'][0])) if e['loc'] else ''}: {message}")
    return "; ".join(problems)


#: the paper's retraining width: about the FLOPs of its 3D U-ResNet baseline at 32
PAPER_RETRAINING_WIDTH = 68


def retraining_width(given: int | None, spec_width: int | None, defines_space: bool) -> tuple[int, str]:
    """The stem width a retraining uses and why: ``--stem-width`` when given; the spec's width when the
    genotype's file defines its own space (a hand-written network: the width is part of its design); else the
    paper's retraining width (a searched genotype imports the space it was searched in, whose width is the
    search's, 48 in the paper)."""
    if given is not None:
        return given, "--stem-width"
    if defines_space and spec_width is not None:
        return spec_width, "the spec's: its file defines the network"
    return PAPER_RETRAINING_WIDTH, ("the paper's retraining width for a genotype of an imported (searched) space"
                                    + (f"; the space says {spec_width}" if spec_width is not None else ""))
