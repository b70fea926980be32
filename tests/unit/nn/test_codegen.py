"""Generated PyTorch source == the compiled fixed network (keys, outputs), standalone."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from scnas_dsl.errors import CompileError
from scnas_dsl.nn import build_network
from scnas_dsl.nn.codegen import emit_torch
from scnas_dsl.ops.library import default_library
from scnas_dsl.ops.signatures import OpSignature
from tests.unit.nn.spaces import baseline_genotype, baseline_space, random_genotype, unet_space


def load_source(path: Path, source: str) -> ModuleType:
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("space", "genotype", "dims"), [
    (unet_space(levels=2, nodes=3, width=3), random_genotype(unet_space(levels=2, nodes=3), 5, True), 2),
    (unet_space(levels=1, nodes=2, dims=3, width=2, share="by_level", output="sum"),
     random_genotype(unet_space(levels=1, nodes=2, share="by_level"), 2), 3),
    (unet_space(levels=2, nodes=3, width=3, node_width="full"),
     random_genotype(unet_space(levels=2, nodes=3), 5, True), 2),
    (baseline_space(), baseline_genotype(), 2),
])
def test_generated_source_equals_compiled_network(tmp_path: Path, space, genotype, dims: int) -> None:
    torch.manual_seed(0)
    fixed = build_network(space, genotype, in_channels=2, num_classes=3)
    source = emit_torch(space, genotype, in_channels=2, num_classes=3)
    module = load_source(tmp_path / "net_gen.py", source)
    generated = module.Network()
    assert set(generated.state_dict()) == set(fixed.state_dict())
    state = {k: torch.randn_like(v) for k, v in fixed.state_dict().items()}
    fixed.load_state_dict(state, strict=True)
    generated.load_state_dict(state, strict=True)
    x = torch.randn(2, 2, *([8] * dims))
    assert torch.allclose(fixed(x), generated(x), atol=1e-6)
    # the constructor arguments are free: transfer to another task works without scnas too
    other = module.Network(in_channels=1, num_classes=5, stem_width=2)
    assert other(torch.randn(1, 1, *([8] * dims))).shape == (1, 5, *([8] * dims))


def test_generated_file_needs_only_torch(tmp_path: Path) -> None:
    space = unet_space(levels=1)
    (tmp_path / "standalone_net.py").write_text(
        emit_torch(space, random_genotype(space), in_channels=1, num_classes=2))
    script = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); import standalone_net as m; "
        "y = m.Network()(torch.randn(1, 1, 8, 8)); "
        "assert y.shape == (1, 2, 8, 8); assert not [k for k in sys.modules if k.startswith('scnas')]; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                         cwd=tmp_path, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


class Doubler(torch.nn.Module):
    """A user operation: 2 * a 1x1 convolution."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dims: int = 2, gain: float = 2.0) -> None:
        super().__init__()
        self.conv = (torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)(c_in, c_out, 1, stride=stride)
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * self.conv(x)


def test_user_operations_are_copied_or_refused(tmp_path: Path) -> None:
    from scnas_dsl.ops.signatures import ParamDecl

    sig = OpSignature("doubler", (ParamDecl("gain", "float", default=2.0),), "2 x conv1x1")
    library = default_library().register(sig, Doubler)
    ops = (("twice", "doubler", {"gain": 3.0}), ("skip", "identity", {}), ("none", "zero", {}))
    space = unet_space(levels=1, ops=ops)
    genotype = random_genotype(space, 1)
    fixed = build_network(space, genotype, in_channels=1, num_classes=2, library=library)
    module = load_source(tmp_path / "net_custom.py",
                         emit_torch(space, genotype, in_channels=1, num_classes=2, library=library))
    generated = module.Network()
    generated.load_state_dict(fixed.state_dict(), strict=True)
    x = torch.randn(1, 1, 8, 8)
    assert torch.allclose(fixed(x), generated(x), atol=1e-6)
    by_function = default_library().register(sig, lambda c_in, c_out, stride, dims, gain: Doubler(c_in, c_out))
    with pytest.raises(CompileError, match="registered with a function"):
        emit_torch(space, genotype, in_channels=1, num_classes=2, library=by_function)


# ---------------------------------------------------------------- names cannot collide (issue 12)

def _same_network(tmp_path: Path, space, genotype, library=None, dims: int = 2, name: str = "net_names") -> str:  # type: ignore[no-untyped-def]
    """Emit, load strictly with random weights, compare outputs with build_network; return the source."""
    torch.manual_seed(0)
    fixed = build_network(space, genotype, in_channels=1, num_classes=2, library=library)
    source = emit_torch(space, genotype, in_channels=1, num_classes=2, library=library)
    generated = load_source(tmp_path / f"{name}.py", source).Network()
    state = {k: torch.randn_like(v) for k, v in fixed.state_dict().items()}
    fixed.load_state_dict(state, strict=True)
    generated.load_state_dict(state, strict=True)
    fixed.eval()
    generated.eval()
    x = torch.randn(1, 1, *([8] * dims))
    assert torch.allclose(fixed(x), generated(x), atol=1e-6)
    return source


class ConvOp(torch.nn.Module):
    """A user operation named like the built-in class: same state_dict keys (conv, norm), other maths."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dims: int = 2, kernel: int = 3) -> None:
        super(ConvOp, self).__init__()  # noqa: UP008 - refers to its own name: the renaming must follow
        conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
        self.conv = conv(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.norm = (torch.nn.InstanceNorm3d if dims == 3 else torch.nn.InstanceNorm2d)(c_out, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.tanh(self.norm(self.conv(x)))


def test_user_class_named_like_a_builtin_keeps_both(tmp_path: Path) -> None:
    from scnas_dsl.ops.signatures import ParamDecl

    sig = OpSignature("tanh_conv", (ParamDecl("kernel", "kernel", default=3),), "tanh conv")
    library = default_library().register(sig, ConvOp)
    ops = (("mine", "tanh_conv", {"kernel": 3}), ("conv3", "conv", {"kernel": 3}), ("none", "zero", {}))
    space = unet_space(levels=1, ops=ops)
    chosen = set()
    for seed in range(50):
        genotype = random_genotype(space, seed)
        chosen = {e.op for c in genotype.cells for n in c.nodes for e in n.edges}
        if chosen == {"mine", "conv3"}:
            break
    assert chosen == {"mine", "conv3"}
    source = _same_network(tmp_path, space, genotype, library)
    assert source.count("class ConvOp(") == 1


def _renamed_cells(space, renames: dict[str, str]):  # type: ignore[no-untyped-def]
    from scnas_dsl import model as m

    cells = tuple(c.model_copy(update={"name": renames.get(c.name, c.name)}) for c in space.cells)

    def refs(seq):  # type: ignore[no-untyped-def]
        return tuple(m.CellRef(name=renames.get(r.name, r.name)) for r in seq)

    unet = space.unet.model_copy(update={"encoder": refs(space.unet.encoder), "bridge": refs(space.unet.bridge),
                                         "decoder": refs(space.unet.decoder)})
    return space.model_copy(update={"cells": cells, "unet": unet})


def test_cell_types_with_the_same_class_name_stay_apart(tmp_path: Path) -> None:
    space = _renamed_cells(unet_space(levels=1), {"enc": "enc_a", "dec": "encA"})
    genotype = random_genotype(space, 3)
    by_cell = {c.cell: c for c in genotype.cells}
    assert by_cell["enc_a"].nodes != by_cell["encA"].nodes
    _same_network(tmp_path, space, genotype)


def test_user_classes_with_the_same_name_from_two_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scnas_dsl.ops.signatures import ParamDecl

    classes = []
    for mod, gain in (("scale_mod_a", 2.0), ("scale_mod_b", -5.0)):
        body = (
            "import torch\nfrom torch import nn\n\n\n"
            "class Scale(nn.Module):\n"
            "    def __init__(self, c_in, c_out, stride=1, dims=2):\n"
            "        super().__init__()\n"
            "        self.conv = (nn.Conv3d if dims == 3 else nn.Conv2d)(c_in, c_out, 1, stride=stride)\n\n"
            f"    def forward(self, x):\n        return {gain} * self.conv(x)\n"
        )
        module = load_source(tmp_path / f"{mod}.py", body)
        monkeypatch.setitem(sys.modules, mod, module)  # inspect.getsource finds the file through it
        classes.append(module.Scale)
    library = default_library()
    for name, cls in zip(("scale_a", "scale_b"), classes, strict=True):
        library = library.register(OpSignature(name, (), name), cls)
    del ParamDecl
    ops = (("a", "scale_a", {}), ("b", "scale_b", {}), ("none", "zero", {}))
    space = unet_space(levels=1, ops=ops)
    for seed in range(50):
        genotype = random_genotype(space, seed)
        if {e.op for c in genotype.cells for n in c.nodes for e in n.edges} == {"a", "b"}:
            break
    source = _same_network(tmp_path, space, genotype, library)
    assert source.count("class Scale") == 2


def _classes(source: str) -> set[str]:
    import re

    return set(re.findall(r"^class (\w+)\(", source, flags=re.MULTILINE))


def test_generated_file_carries_only_the_classes_it_uses(tmp_path: Path) -> None:
    ops = (("conv3", "conv", {"kernel": 3}), ("skip", "identity", {}), ("none", "zero", {}))
    space = unet_space(levels=1, ops=ops)
    source = _same_network(tmp_path, space, random_genotype(space, 1), name="net_used")
    cells = {c for c in _classes(source) if c.startswith("Cell")}
    assert _classes(source) - cells == {"Projection", "ConvOp", "IdentityOp", "ConvBlock", "Logits", "Resample",
                                        "Edge", "Network"}
    assert "def _conv(" in source and "def _norm(" in source
    baseline = _same_network(tmp_path, baseline_space(), baseline_genotype(), name="net_base")
    assert "class ResBlock(" in baseline and "class ConvBlock(" not in baseline
    assert "class AttentionGate(" not in baseline and "AttentionGate" not in baseline


def test_attention_gate_class_only_with_gates() -> None:
    from scnas_dsl.loader import load_text
    from tests.unit.nn.test_deep_supervision_attention import spec

    for extra, present in (("", False), ("skips attention", True)):
        space, genotype = load_text(spec(extra)).genotype()
        source = emit_torch(space, genotype, in_channels=1, num_classes=2)
        assert ("class AttentionGate(" in source) is present
        assert ("AttentionGate" in source) is present
