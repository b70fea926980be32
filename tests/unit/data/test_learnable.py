"""The generated labels can be learned from the images: a tiny plain 3D conv net gets a clearly good Dice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scnas_dsl.data.loader import make_loader
from scnas_dsl.data.preprocess import preprocess_dataset
from scnas_dsl.data.synth import synthesize


def _block(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1), nn.InstanceNorm3d(cout, affine=True), nn.LeakyReLU(0.01)
    )


class TinyNet(nn.Module):
    """Two levels, about 10k weights: small enough that only a learnable signal gives a good Dice."""

    def __init__(self, channels: int, classes: int, width: int = 8) -> None:
        super().__init__()
        self.top = _block(channels, width)
        self.low = nn.Sequential(_block(width, 2 * width), _block(2 * width, 2 * width))
        self.out = nn.Sequential(_block(3 * width, width), nn.Conv3d(width, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = self.top(x)
        low = F.interpolate(self.low(F.max_pool3d(top, 2)), size=top.shape[2:], mode="trilinear")
        return self.out(torch.cat([top, low], 1))


@pytest.mark.slow
def test_a_tiny_net_learns_the_heart_task(tmp_path: Path) -> None:
    torch.manual_seed(0)
    root = synthesize(tmp_path / "heart", task="heart", cases=6, shape=(32, 32, 32), seed=2)
    pre = preprocess_dataset(root, out=tmp_path / "pre", spacing=None, progress=False)
    train, held_out = pre.case_ids[:4], pre.case_ids[4:]
    net = TinyNet(1, 2)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    for image, label in make_loader(
        pre, train, patch_size=(24, 24, 24), batch_size=2, seed=0, num_batches=40
    ):
        loss = F.cross_entropy(net(image), label.long())  # the loader keeps the labels uint8
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.eval()
    dice = []
    with torch.no_grad():
        for case_id in held_out:
            image, label = pre.load(case_id, mmap=False)
            x = torch.from_numpy(image)[None]
            pad = [(-n) % 2 for n in x.shape[2:]]
            logits = net(F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0])))[
                ..., : x.shape[2], : x.shape[3], : x.shape[4]
            ]
            pred = logits.argmax(1)[0].numpy() == 1
            truth = label == 1
            dice.append(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
    assert np.mean(dice) > 0.7, dice
