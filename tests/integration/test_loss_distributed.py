"""The soft Jaccard loss under ``torchrun`` (2 processes, gloo, CPU): a global batch split over the ranks
gives the loss and the parameter gradients of one process on the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scnas_dsl.training.losses import soft_jaccard_loss
from tests.integration.torchrun import run_ranks

# A tiny 3-class segmentation network, built alike by the test and by every rank.
NET = """\
import torch

def tiny_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.LeakyReLU(0.01),
                               torch.nn.Conv3d(4, 3, 1))
"""

# Each rank takes its share of the batch, wraps the network in DDP (which averages the gradients over the
# ranks) and writes its loss and the parameter gradients.
SCRIPT = NET + """
import sys
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from scnas_dsl.training.losses import soft_jaccard_loss

case_file, out = sys.argv[1:3]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
case = torch.load(case_file, weights_only=True)
net = tiny_net()
net.load_state_dict(case["state"])
model = DistributedDataParallel(net)
x, y = case["x"].chunk(world)[rank], case["y"].chunk(world)[rank]
loss = soft_jaccard_loss(model(x), y, reduce_over_ranks=True)
loss.backward()
torch.save({"loss": loss.detach(), "grads": {n: p.grad for n, p in net.named_parameters()}},
           f"{out}/rank{rank}.pt")
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_give_the_loss_and_gradients_of_one_on_the_global_batch(tmp_path: Path) -> None:
    namespace: dict = {}
    exec(NET, namespace)  # noqa: S102 - the network the ranks build, from the same text
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = namespace["tiny_net"]()
    x = torch.randn(4, 1, 6, 6, 6, generator=g)
    y = torch.zeros(4, 6, 6, 6, dtype=torch.long)
    # rank 0's half holds only class 1, rank 1's only class 2: a per-rank statistic would score each rank's
    # missing class by its false-positive rate, the global one scores both classes by their IoU
    y[:2, 1:4, 1:4, 1:5] = 1
    y[2:, 2:5, 0:3, 2:6] = 2
    case_file = tmp_path / "case.pt"
    torch.save({"state": net.state_dict(), "x": x, "y": y}, case_file)
    run_ranks([str(case_file), str(tmp_path)], tmp_path, SCRIPT, timeout=300)

    loss = soft_jaccard_loss(net(x), y)  # one process, the whole batch
    loss.backward()
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["loss"].item() == pytest.approx(loss.item(), rel=1e-5), rank
        for name, param in net.named_parameters():
            assert param.grad is not None
            assert torch.allclose(result["grads"][name], param.grad, rtol=1e-4, atol=1e-7), (rank, name)
