"""A run's batches: augmented on the training device or in the loader (the same augmentation), delivered on
the device with small integer labels that the losses take as they are, and the default number of workers."""

from __future__ import annotations

import pytest
import torch

from scnas_dsl.data.loader import default_workers
from scnas_dsl.training.config import SearchConfig
from scnas_dsl.training.data_context import (
    augments_on_device,
    epoch_batches,
    loader,
    loader_workers,
    open_data,
)
from scnas_dsl.training.device import Runtime
from scnas_dsl.training.losses import deep_supervision_loss, soft_jaccard_loss
from tests.helpers import generated_set

CPU = Runtime(device=torch.device("cpu"))
GPU = Runtime(device=torch.device("cuda", 0))  # only its description: nothing here runs on it


@pytest.fixture(scope="module")
def run_data(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("device_batches")
    _, pre = generated_set(root, "brain", size=20, seed=2)
    cfg = SearchConfig(spec="unused.scn", data=str(pre), batch_size=2, patch=(16, 16, 16), stem_width=4,
                       batches_per_epoch=3, progress=False)
    return cfg, open_data(cfg, CPU)


def _epochs(cfg: SearchConfig, ctx, runtime: Runtime, epochs: int = 2) -> list:  # type: ignore[no-untyped-def]
    source = loader(cfg, ctx, runtime, ctx.fold.weight_part, (16, 16, 16), stream=1)
    try:
        return [batch for epoch in range(epochs) for batch in epoch_batches(source, epoch, 0)]
    finally:
        source.close()


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))


def test_augmenting_on_the_device_gives_the_loaders_augmentation(run_data) -> None:  # type: ignore[no-untyped-def]
    cfg, ctx = run_data
    in_loader = _epochs(cfg.model_copy(update={"augment_on": "loader"}), ctx, CPU)
    on_device = _epochs(cfg.model_copy(update={"augment_on": "device"}), ctx, CPU)
    with_workers = _epochs(cfg.model_copy(update={"augment_on": "device", "workers": 1}), ctx, CPU)
    plain = _epochs(cfg.model_copy(update={"augment": False}), ctx, CPU)
    assert _same(in_loader, on_device) and _same(on_device, with_workers)
    assert not _same(on_device, plain)  # it did augment
    assert all(y.dtype == torch.uint8 for _, y in on_device)


def test_where_the_run_augments_and_how_many_workers_it_starts(run_data) -> None:  # type: ignore[no-untyped-def]
    cfg, ctx = run_data
    assert not augments_on_device(cfg, CPU) and augments_on_device(cfg, GPU)  # auto: on a GPU
    assert augments_on_device(cfg.model_copy(update={"augment_on": "device"}), CPU)
    assert not augments_on_device(cfg.model_copy(update={"augment_on": "loader"}), GPU)
    assert cfg.workers is None and loader_workers(cfg, CPU) == 0 and loader_workers(cfg, GPU) == default_workers("cuda")
    assert loader_workers(cfg.model_copy(update={"workers": 3}), GPU) == 3
    # on a GPU the workers only crop; batches are pinned, moved to the GPU and augmented there
    source = loader(cfg, ctx, GPU, ctx.fold.weight_part, (16, 16, 16), stream=1)
    assert source.dataset.augment is None and source.augment is not None
    assert source.device == GPU.device and source.pin_memory
    source = loader(cfg, ctx, CPU, ctx.fold.weight_part, (16, 16, 16), stream=1)
    assert source.dataset.augment is not None and source.augment is None and not source.pin_memory


def test_losses_take_small_integer_labels() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, 8, generator=generator, requires_grad=True)
    coarse = torch.randn(2, 4, 4, 4, 4, generator=generator, requires_grad=True)
    target = torch.randint(0, 4, (2, 8, 8, 8), generator=generator)
    for loss in (lambda y: soft_jaccard_loss(logits, y),
                 lambda y: deep_supervision_loss([logits, coarse], y, [1])):
        wide = loss(target)
        (grad_wide,) = torch.autograd.grad(wide, logits)
        small = loss(target.to(torch.uint8))
        (grad_small,) = torch.autograd.grad(small, logits)
        assert torch.equal(wide, small) and torch.equal(grad_wide, grad_small)


def test_to_device_keeps_a_batch_already_there() -> None:
    x = torch.zeros(3)
    assert CPU.to_device(x) is x


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_run_gets_its_batches_augmented_on_the_gpu(run_data) -> None:  # type: ignore[no-untyped-def]
    cfg, ctx = run_data
    gpu = Runtime(device=torch.device("cuda", torch.cuda.current_device()))
    on_gpu = _epochs(cfg.model_copy(update={"workers": 1}), ctx, gpu)
    in_loader = _epochs(cfg, ctx, CPU)
    for (gx, gy), (x, y) in zip(on_gpu, in_loader, strict=True):
        assert gx.device.type == "cuda" and gy.device.type == "cuda" and gy.dtype == torch.uint8
        assert gpu.to_device(gx) is gx
        torch.testing.assert_close(gx.cpu(), x, atol=1e-3, rtol=1e-3)
        assert (gy.cpu() != y).float().mean() < 1e-3
        assert float(soft_jaccard_loss(torch.zeros(2, 4, 16, 16, 16, device="cuda"), gy)) > 0
