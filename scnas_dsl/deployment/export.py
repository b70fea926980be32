"""A trained network as a plain model for deployment: ONNX (checked with ``onnx.checker`` and run in
onnxruntime) or a ``torch.export`` ExportedProgram (saved with ``torch.export.save``, loaded back).

The exported model maps one patch ``(1, C, *S)`` (``S`` = D H W, or H W for a 2D space) to logits
``(1, K, *S)``: the network at its full-resolution head (deep supervision off), in eval mode. Sliding windows,
Gaussian blending, mirroring, softmax and argmax stay outside it (``docs/deploy.md`` shows them around an
onnxruntime session). With ``dynamic`` the spatial sizes are free, but each must stay a multiple of
``2**levels`` (the U-Net's down-samplings); the ExportedProgram enforces this, ONNX cannot state it.

Every export is verified: the saved model runs on a generated volume (a fixed seed) at the patch size (and,
when dynamic, at a second size) and its output is compared with PyTorch's; a difference above
:data:`TOLERANCE` fails the export.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from scnas_dsl.errors import CheckpointError, RunError, ScnasError, first_line
from scnas_dsl.files import write_text
from scnas_dsl.nn.network import FixedNetwork
from scnas_dsl.nn.plan import size_problem

FORMATS = ("onnx", "torch-export")
#: the ONNX opset of every export
OPSET = 17
#: most absolute difference allowed between the exported model's logits and PyTorch's (float32; measured
#: differences are about 1e-4 for untrained networks on a unit-variance volume, well below 1e-6 for torch.export)
TOLERANCE = 1e-3
INSTALL_HINT = "pip install 'scnas_dsl[export]'"


class ExportError(ScnasError):
    """An export that cannot be made or does not reproduce the network."""


@dataclass
class Exportable:
    """A network ready for export, with the patch it was trained on and what it is (for messages)."""

    network: FixedNetwork
    #: default patch: the run's (or None for a genotype file)
    patch: tuple[int, ...] | None
    source: str
    in_channels: int
    num_classes: int


@dataclass
class ExportResult:
    """What :func:`export_network` wrote and how closely it reproduces PyTorch."""

    path: Path
    format: str
    patch: tuple[int, ...]
    dynamic: bool
    #: ``(spatial size, max absolute difference)`` for each size the saved model was run at
    checks: list[tuple[tuple[int, ...], float]] = field(default_factory=list)
    opset: int | None = None

    @property
    def max_difference(self) -> float:
        return max(d for _, d in self.checks)


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ExportError(f"ONNX export needs the onnx and onnxruntime packages ({err.name} is missing): "
                          f"{INSTALL_HINT}") from None
    return onnx, onnxruntime


def from_run(run: Path | str, which: str = "last", ops: Sequence[str] = ()) -> Exportable:
    """The network of a ``scnas train`` run folder with its ``last`` or ``best`` weights."""
    from scnas_dsl.prediction.predict import load_trained

    model = load_trained(run, which, ops)
    network = cast(FixedNetwork, model.network)
    return Exportable(network=network, patch=tuple(model.patch), source=f"{run} ({model.weights.label()})",
                      in_channels=network.in_channels, num_classes=network.num_classes)


def from_genotype(genotype: Path | str, weights: Path | str, *, in_channels: int, num_classes: int,
                  stem_width: int | None = None, ops: Sequence[str] = (), name: str | None = None) -> Exportable:
    """A genotype file's network with a state dict (a plain ``state_dict()`` file or a scnas checkpoint)."""
    from scnas_dsl.loader import load
    from scnas_dsl.nn import build_network
    from scnas_dsl.ops.plugins import load_operations

    genotype, weights = Path(genotype), Path(weights)
    if not genotype.is_file():
        raise RunError(f"{genotype}: no such genotype file")
    if not weights.is_file():
        raise CheckpointError(f"{weights}: no such weights file")
    extra = load_operations(tuple(ops))
    space, geno = load(genotype, signatures=extra.library.signatures).genotype(name)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise CheckpointError(f"{weights}: not a PyTorch state dict ({first_line(err, 200)})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{weights}: not a state dict (a {type(state).__name__})")
    # the deep-supervision heads the weights were trained with, so that they load strictly
    levels = sorted({int(k.split(".")[1]) for k in state if k.startswith("ds_heads.")})
    network = build_network(space, geno, in_channels=in_channels, num_classes=num_classes, stem_width=stem_width,
                            deep_supervision=levels or False, library=extra.library)
    try:
        network.load_state_dict(state)
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"{weights}: does not fit the network of {genotype} with in_channels {in_channels}, "
                              f"classes {num_classes}, stem width {stem_width or 'the spec default'} "
                              f"({str(err)[:300]})") from None
    return Exportable(network=network, patch=None, source=f"{genotype} with {weights}", in_channels=in_channels,
                      num_classes=num_classes)


def check_patch(network: FixedNetwork, patch: Sequence[int]) -> tuple[int, ...]:
    """``patch`` as the network's spatial size (a 2D network takes the last two of D H W), or ExportError."""
    plan = network.plan
    spatial = tuple(int(p) for p in patch)
    if len(spatial) == 3 and plan.dims == 2:
        spatial = spatial[1:]
    problem = size_problem(spatial, plan.levels, plan.dims)
    if problem:
        raise ExportError(f"--patch {' '.join(map(str, patch))}: {problem}")
    return spatial


def probe_volume(in_channels: int, spatial: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """The seeded random input every export is checked on: (1, in_channels, *spatial)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((1, in_channels, *spatial), generator=generator)


def _second_size(spatial: tuple[int, ...], levels: int) -> tuple[int, ...]:
    """Another valid size for checking a dynamic export: one step of ``2**levels`` more along each axis but
    the last (so that the axes differ)."""
    step = 2**levels
    return tuple(s + step if i < len(spatial) - 1 else s for i, s in enumerate(spatial))


def export_network(network: FixedNetwork, patch: Sequence[int], fmt: str, out: Path | str, *,
                   dynamic: bool = False, opset: int = OPSET, force: bool = False,
                   tolerance: float = TOLERANCE) -> ExportResult:
    """Export ``network`` (eval mode, deep supervision off) for inputs ``(1, C, *patch)`` to ``out`` and verify
    the saved file against PyTorch; raises ExportError when it differs by more than ``tolerance``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format '{fmt}': use onnx or torch-export")
    out = Path(out)
    if out.exists() and not force:
        raise ExportError(f"{out}: exists already; pass --force to overwrite it, or choose another -o")
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; -o takes a file name")
    if fmt == "onnx":
        _require_onnx()
    spatial = check_patch(network, patch)
    network.eval()
    network.deep_supervision = False
    out.parent.mkdir(parents=True, exist_ok=True)
    levels = network.plan.levels
    sizes = [spatial] + ([_second_size(spatial, levels)] if dynamic else [])
    result = ExportResult(path=out, format=fmt, patch=spatial, dynamic=dynamic,
                          opset=opset if fmt == "onnx" else None)
    example = probe_volume(network.in_channels, spatial)
    if fmt == "onnx":
        run = _export_onnx(network, example, out, dynamic, opset)
    else:
        run = _export_program(network, example, out, dynamic, levels)
    for size in sizes:
        x = probe_volume(network.in_channels, size, seed=len(result.checks))
        with torch.no_grad():
            expected = network(x)
        got = run(x)
        if tuple(got.shape) != tuple(expected.shape):
            raise ExportError(f"{out}: the exported model gives shape {tuple(got.shape)} for input "
                              f"{tuple(x.shape)}, PyTorch {tuple(expected.shape)}")
        result.checks.append((size, float((got - expected).abs().max())))
    worst = result.max_difference
    if not worst <= tolerance:
        raise ExportError(f"{out}: the exported model differs from PyTorch by {worst:.3g} (max absolute "
                          f"difference of the logits; allowed {tolerance:g}); the file is kept for inspection")
    return result


def _export_onnx(network: torch.nn.Module, example: torch.Tensor, out: Path, dynamic: bool, opset: int) -> Any:
    onnx, ort = _require_onnx()
    dims = example.dim() - 2
    names = "DHW"[3 - dims:]
    axes = {i + 2: n for i, n in enumerate(names)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about the Python shape checks, deprecation notes
        # the TorchScript exporter: the dynamo one needs onnxscript and states no more for these networks
        try:
            torch.onnx.export(network, (example,), str(out), dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": axes, "logits": axes} if dynamic else None)
        except Exception as err:  # noqa: BLE001 - torch's exporter raises many kinds for an opset it cannot use
            out.unlink(missing_ok=True)
            raise ExportError(f"--opset {opset}: this torch cannot export the network at that ONNX opset "
                              f"({first_line(err, 200)}); use the default, {OPSET}, or another from 13 on") from None
    try:
        onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    except Exception as err:  # noqa: BLE001 - onnx raises its own ValidationError and others
        raise ExportError(f"{out}: onnx.checker rejects the exported model ({str(err)[:300]})") from None
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])

    return run


def _export_program(network: torch.nn.Module, example: torch.Tensor, out: Path, dynamic: bool, levels: int) -> Any:
    shapes = None
    if dynamic:
        step = 2**levels
        # each spatial size a multiple of 2**levels, from 2**levels up to 2**levels * 64 (1024 for 4 levels)
        multiples = [torch.export.Dim(f"{n}_over_{step}", min=1, max=64)
                     for n in "DHW"[3 - (example.dim() - 2):]]
        shapes = ({i + 2: step * m for i, m in enumerate(multiples)},)
    try:
        with torch.no_grad():
            program = torch.export.export(network, (example,), dynamic_shapes=shapes)
    except Exception as err:  # noqa: BLE001 - torch.export raises many kinds
        hint = " (try without --dynamic)" if dynamic else ""
        raise ExportError(f"torch.export cannot export this network{hint}: {first_line(err, 300)}") \
            from None
    torch.export.save(program, str(out))
    loaded = torch.export.load(str(out)).module()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loaded(x)  # type: ignore[no-any-return]

    return run


def write_record(result: ExportResult, exportable: Exportable) -> Path:
    """``<file>.json`` next to the export: what it is, what it takes and returns, and its verification."""
    record = {
        "file": result.path.name, "format": result.format, "source": exportable.source,
        "opset": result.opset, "input": {"name": "image", "shape": [1, exportable.in_channels, *result.patch]},
        "output": {"name": "logits", "shape": [1, exportable.num_classes, *result.patch]},
        "dynamic": result.dynamic,
        "size_multiple": 2 ** exportable.network.plan.levels,
        "tolerance": TOLERANCE,
        "checks": [{"spatial": list(s), "max_abs_difference": d} for s, d in result.checks],
    }
    path = record_path(result.path)
    check_record_replaceable(path)
    write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def record_path(export: Path) -> Path:
    """Where the record of ``export`` goes: ``<file>.json`` beside it."""
    return export.with_name(export.name + ".json")


def check_record_replaceable(path: Path) -> None:
    """An existing file at the record's place is replaced only when it is an earlier export's record: ``-o
    data/Task02_Heart/dataset`` must not replace the data set's ``dataset.json``, whatever the flags."""
    if not path.exists():
        return
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        earlier = None
    if not (isinstance(earlier, dict) and {"file", "format", "checks"} <= set(earlier)):
        raise ExportError(f"{path}: the export's record would replace this file, which scnas export did not "
                          "write; it is never replaced (not even with --force). Choose another -o")
