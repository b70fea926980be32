"""Add your own candidate operation from Python, without editing scnas.

An operation is two things: its *signature* (name, declared parameters: what the ``.scn`` checker reads)
and its *factory* (an ``nn.Module`` class called as ``Factory(c_in, c_out, stride, dims, **params)``).
``default_library().register(signature, factory)`` returns a new library; pass its ``signatures`` to the
loader and the library itself to the compiler. Nothing global changes.

From the command line, this file is an operation module: ``register(library)`` below adds ``se_conv``, so
``scnas check|compile|draw|search|train|predict|cv ... --ops examples/custom_operation.py`` can use it
(see docs/dsl.md, "Your own operations from the command line").

Here: a squeeze-and-excitation convolution, ``se_conv(kernel=3, reduction=4)``, offered next to the
paper's operations. Run:  .venv/bin/python examples/custom_operation.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scnas_dsl.loader import load_text
from scnas_dsl.nn import build_network, build_supernet
from scnas_dsl.nn.codegen import emit_torch
from scnas_dsl.ops.library import Library, default_library
from scnas_dsl.ops.signatures import OpSignature, ParamDecl


class SEConv(nn.Module):
    """LeakyReLU -> conv -> instance norm, rescaled per channel by a squeeze-and-excitation gate.
    ``(B, c_in, *S) -> (B, c_out, *ceil(S / stride))``. Self-contained (torch, nn, F only), so that
    ``scnas compile --emit torch`` can copy it into generated files."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dims: int = 3, kernel: int = 3,
                 reduction: int = 4) -> None:
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.conv = conv(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.norm = (nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d)(c_out, affine=True)
        hidden = max(1, c_out // reduction)
        self.squeeze = nn.Linear(c_out, hidden)
        self.excite = nn.Linear(hidden, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(F.leaky_relu(x, 0.01)))
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(y.flatten(2).mean(dim=2)))))
        return y * gate.view(*gate.shape, *([1] * (y.dim() - 2)))


SE_CONV = OpSignature(
    "se_conv",
    (ParamDecl("kernel", "kernel", default=3, minimum=1, maximum=7, odd=True, doc="window size"),
     ParamDecl("reduction", "int", default=4, minimum=1, maximum=64, doc="channel reduction of the gate")),
    "LeakyReLU -> conv -> instance norm with a squeeze-and-excitation gate",
)

def register(library: Library) -> Library:
    """What ``--ops examples/custom_operation.py`` calls: ``library`` with ``se_conv`` added."""
    return library.register(SE_CONV, SEConv)


SPEC = """
space se_space {
  ops mine {
    conv3 = conv(kernel=3)
    se3 = se_conv(kernel=3, reduction=2)
    skip = identity
    none = zero
  }
  cell enc normal { nodes 2; inputs 2; ops mine }
  cell red reduction { nodes 2; inputs 2; ops mine }
  cell dec normal { nodes 2; inputs 2; ops mine }
  cell exp expansion { nodes 2; inputs 2; ops mine }
  unet {
    dims 3
    stem conv_block(kernel=3) -> 4
    encoder red
    bridge enc
    decoder exp dec
    head logits(kernel=1)
  }
}
"""


def main(out_dir: Path) -> tuple[nn.Module, Path]:
    """Check the spec with the extended table, search one step, derive, compile and emit source."""
    library = register(default_library())
    space = load_text(SPEC, "se_space.scn", signatures=library.signatures).space()

    supernet = build_supernet(space, in_channels=1, num_classes=2, library=library, seed=0)
    x = torch.randn(1, 1, 16, 16, 16)
    supernet(x).mean().backward()  # one sampled pair per edge: se3 runs only where it was drawn
    genotype, report = supernet.derive("se_found")
    print("\n".join(report) or "nothing cut or pruned")

    network = build_network(space, genotype, in_channels=1, num_classes=2, library=library)
    target = out_dir / "se_network.py"
    target.write_text(emit_torch(space, genotype, in_channels=1, num_classes=2, library=library))
    print(f"network output {tuple(network(x).shape)}; standalone source in {target}")
    return network, target


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd())
