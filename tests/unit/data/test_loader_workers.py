"""The patch loader's worker processes, label types and batches delivered on a device (CPU standing in)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import scnas_dsl.data.loader as loader_module
from scnas_dsl.data.augment import AugmentConfig
from scnas_dsl.data.loader import default_workers, make_loader, on_device, to_device
from scnas_dsl.data.preprocess import Preprocessed, preprocess_dataset

SETTINGS = dict(patch_size=(16, 16, 16), batch_size=2, seed=0, num_batches=3)
#: spatial and intensity transforms drawn often, so that every batch of a few is changed
AUGMENT = AugmentConfig(p_rotation=0.5, p_scaling=0.5, p_noise=0.5, p_blur=0.5, p_gamma=0.5)


@pytest.fixture(scope="module")
def pre(brain_nnunet: Path, tmp_path_factory: pytest.TempPathFactory) -> Preprocessed:
    return preprocess_dataset(brain_nnunet, out=tmp_path_factory.mktemp("pre") / "p", spacing=None, progress=False)


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))


def _epoch(pre: Preprocessed, epoch: int, **kwargs) -> list:
    loader = make_loader(pre, pre.case_ids, **{**SETTINGS, **kwargs})  # type: ignore[arg-type]
    loader.set_epoch(epoch)
    return list(loader)


def _record_start(worker_id: int) -> None:
    """A worker_init_fn that notes each worker start in the file named by $SCNAS_TEST_STARTS."""
    with open(os.environ["SCNAS_TEST_STARTS"], "a") as out:
        out.write(f"{worker_id}\n")


def test_workers_start_once_and_draw_each_epochs_batches(pre: Preprocessed, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    starts = tmp_path / "starts"
    monkeypatch.setenv("SCNAS_TEST_STARTS", str(starts))
    monkeypatch.setattr(loader_module, "ignore_stop_signals", _record_start)
    loader = make_loader(pre, pre.case_ids, augment=AUGMENT, workers=2, **SETTINGS)  # type: ignore[arg-type]
    try:
        passes = [list(loader) for _ in range(3)]
        loader.set_epoch(1)
        again = list(loader)
        # a pass left after one batch: the next pass is still the whole of the next epoch
        partial = iter(loader)
        next(partial)
        partial.close()
        after_break = list(loader)
        assert sorted(starts.read_text().split()) == ["0", "1"]  # two workers, started once for five passes
    finally:
        loader.close()
    for epoch, batches in enumerate(passes):  # the persistent workers saw each pass's epoch
        assert _same(batches, _epoch(pre, epoch, augment=AUGMENT)), epoch
    assert not _same(passes[0], passes[1])
    assert _same(again, passes[1])
    assert _same(after_break, _epoch(pre, 3, augment=AUGMENT))


@pytest.mark.slow
def test_a_process_with_open_workers_exits(pre: Preprocessed) -> None:
    # the workers ignore SIGTERM, by which multiprocessing's exit handler ends daemonic children before it
    # waits for them: a loader left open (mid-pass, too) must still let the interpreter exit
    script = (
        "import sys\n"
        "from scnas_dsl.data.loader import make_loader\n"
        "from scnas_dsl.data.preprocess import Preprocessed\n"
        f"pre = Preprocessed({str(pre.root)!r})\n"
        "loader = make_loader(pre, pre.case_ids, patch_size=(8, 8, 8), batch_size=1, seed=0, num_batches=4, "
        "workers=2)\n"
        "list(loader)\n"
        "batches = iter(loader)\n"
        "next(batches)\n"
        "print('left open', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and "left open" in done.stdout, done.stderr


def test_device_augmentation_equals_the_workers_augmentation(pre: Preprocessed) -> None:
    # the trainer's "device" path on the CPU: workers crop, the batch is augmented after the move
    for epoch in (0, 2):
        in_workers = _epoch(pre, epoch, augment=AUGMENT, workers=1)
        on_device_ = _epoch(pre, epoch, augment=AUGMENT, workers=1, augment_in_loader=False, device="cpu")
        assert _same(in_workers, on_device_)
        assert not _same(on_device_, _epoch(pre, epoch, workers=1, device="cpu"))  # it did augment


def test_labels_above_255_keep_their_values(pre: Preprocessed) -> None:
    # a data set of 301 classes (enhancing tumour renumbered 300) stores int16 labels; so does the loader
    big = Preprocessed(pre.root)
    big.dataset = pre.dataset.model_copy(update={"labels": {**pre.dataset.labels, 300: "many"}})
    load = pre.load

    def renumbered(case_id: str, mmap: bool = True):  # noqa: ANN202
        image, label = load(case_id, mmap=False)
        assert label is not None
        return image, np.where(label == 3, 300, label.astype(np.int16))

    big.load = renumbered  # type: ignore[method-assign]
    settings = dict(foreground_fraction=1.0, num_batches=6)
    plain = _epoch(big, 0, **settings)
    assert all(label.dtype == torch.int16 for _, label in plain)
    assert any((label == 300).any() for _, label in plain)
    for (_, label), (_, small) in zip(plain, _epoch(pre, 0, **settings), strict=True):
        assert torch.equal(label.long(), torch.where(small == 3, 300, small.long()))
    augmented = _epoch(big, 0, augment=AUGMENT, augment_in_loader=False, device="cpu", **settings)
    assert _same(augmented, _epoch(big, 0, augment=AUGMENT, **settings))
    assert set(torch.cat([y.flatten() for _, y in augmented]).unique().tolist()) <= {0, 1, 2, 300}


def test_pinned_batches_without_workers(pre: Preprocessed) -> None:
    if not torch.cuda.is_available():  # pinning needs a CUDA driver
        pytest.skip("no CUDA device")
    batches = _epoch(pre, 0, pin_memory=True)
    assert all(x.is_pinned() and y.is_pinned() for x, y in batches)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_on_the_gpu_are_augmented_there_as_in_the_workers(pre: Preprocessed) -> None:
    # dense noise on the GPU comes from CUDA's generator (data/augment.py, on_device): compared without it
    quiet = AUGMENT.model_copy(update={"noise": False})
    cpu = _epoch(pre, 1, augment=quiet, workers=1)
    gpu = _epoch(pre, 1, augment=quiet, workers=1, augment_in_loader=False, device="cuda", pin_memory=True)
    for (x, y), (gx, gy) in zip(cpu, gpu, strict=True):
        assert gx.device.type == "cuda" and gy.device.type == "cuda" and gy.dtype == torch.uint8
        torch.testing.assert_close(gx.cpu(), x, atol=1e-3, rtol=1e-3)
        assert (gy.cpu() != y).float().mean() < 1e-3  # a label may flip where one-hot weights tie


def test_to_device_leaves_a_tensor_where_it_is() -> None:
    x = torch.zeros(2)
    assert to_device(x, torch.device("cpu")) is x
    assert on_device(x, torch.device("cpu")) and not on_device(x, torch.device("cuda", 0))
    if torch.cuda.is_available():
        g = to_device(x, torch.device("cuda", 0))
        assert g.device == torch.device("cuda", 0) and to_device(g, torch.device("cuda", 0)) is g


def test_default_workers() -> None:
    assert default_workers("cpu", cpus=16) == 0  # the CPU step uses every core itself
    assert default_workers("cuda", cpus=1) == 0
    assert default_workers("cuda", cpus=2) == 1
    assert default_workers("cuda", cpus=64) == loader_module.MAX_DEFAULT_WORKERS
    assert default_workers("cuda", local_processes=4, cpus=12) == 2  # 3 CPUs per GPU process
    assert default_workers("cuda") == max(0, min(loader_module.MAX_DEFAULT_WORKERS,
                                                 len(os.sched_getaffinity(0)) - 1))
