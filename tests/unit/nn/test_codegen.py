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
