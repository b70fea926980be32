"""examples/custom_operation.py runs, and its generated file equals the compiled network."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from scnas_dsl.errors import SpecError
from scnas_dsl.loader import load_text

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "custom_operation.py"


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # inspect.getsource finds classes through sys.modules
    spec.loader.exec_module(module)
    return module


def test_custom_operation_example(tmp_path: Path) -> None:
    example = _load(EXAMPLE, "custom_operation_example")
    try:
        network, target = example.main(tmp_path)
        source = target.read_text()
        assert "class SEConv(nn.Module)" in source
        generated = _load(target, "se_network_generated").Network()
    finally:
        sys.modules.pop("custom_operation_example", None)
        sys.modules.pop("se_network_generated", None)
    generated.load_state_dict(network.state_dict(), strict=True)
    x = torch.randn(1, 1, 16, 16, 16)
    assert torch.allclose(network(x), generated(x), atol=1e-6)
    # without the registration the checker refuses the spec, naming the operation
    with pytest.raises(SpecError, match="se_conv"):
        load_text(example.SPEC, "se_space.scn")
