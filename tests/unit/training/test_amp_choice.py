"""Mixed precision: bf16 only where the GPU computes it natively, fp16 otherwise, none when switched off; the
command line's --amp/--no-amp reaches the run's settings."""

from __future__ import annotations

import torch

from scnas_dsl.training.config import SearchConfig, TrainConfig, resolve_config
from scnas_dsl.training.device import amp_dtype_for


def test_bf16_only_on_gpus_that_compute_it_natively() -> None:
    assert amp_dtype_for((7, 0)) is torch.float16  # V100: bf16 would be emulated
    assert amp_dtype_for((7, 5)) is torch.float16  # T4
    assert amp_dtype_for((8, 0)) is torch.bfloat16  # A100
    assert amp_dtype_for((9, 0)) is torch.bfloat16  # H100 / H200


def test_switched_off_or_without_a_gpu_there_is_none() -> None:
    assert amp_dtype_for((9, 0), amp=False) is None
    assert amp_dtype_for(None) is None


def test_the_command_line_switch_reaches_the_settings() -> None:
    from typer.testing import CliRunner

    from scnas_dsl.cli import app

    # the option exists on the three training commands (a run's config.json records it:
    # test_deep_supervision_training.py trains with --no-amp)
    for command in ("search", "train", "cv"):
        assert "--no-amp" in CliRunner().invoke(app, [command, "--help"], terminal_width=200).output
    assert resolve_config(TrainConfig, None, genotype="g.scn", data="d", amp=False).amp is False
    assert resolve_config(SearchConfig, None, spec="s.scn", data="d", amp=None).amp is True
