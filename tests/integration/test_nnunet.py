"""A genotype inside nnU-Net v2: ``scnas export-nnunet`` adds a configuration to a plans file, and nnU-Net's own
``PlansManager`` and ``get_network_from_plans`` build ``ScnasNetwork`` from it; its deep-supervision switch
(``network.decoder.deep_supervision``, as nnU-Net's trainer sets it) gives a list or a tensor, and the scales
nnU-Net derives from the plan's strides match the outputs' sizes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from scnas_dsl.cli import app

try:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
except ImportError as err:  # pragma: no cover - depends on the environment
    pytest.skip(f"nnunetv2 cannot be imported ({err}): pip install 'scnas_dsl[nnunet]'", allow_module_level=True)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
GENOTYPE = ROOT / "specs" / "genotypes" / "example.scn"


def _plans(patch: list[int]) -> dict:
    """A minimal nnU-Net v2 plans file (the structure nnUNetv2_plan_and_preprocess writes)."""
    return {
        "dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [32, 32, 32],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"max": 1.0, "mean": 0.0, "median": 0.0, "min": -1.0,
                                                              "percentile_00_5": -1.0, "percentile_99_5": 1.0,
                                                              "std": 1.0}},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": patch, "median_image_size_in_voxels": [32, 32, 32],
            "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {"n_stages": 3, "features_per_stage": [8, 16, 32],
                                "conv_op": "torch.nn.modules.conv.Conv3d",
                                "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                                "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2],
                                "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                                "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                                "nonlin_kwargs": {"inplace": True}},
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": False}},
    }


def _export(tmp_path: Path, patch: list[int], *extra: str) -> tuple[Path, Path, str, object]:
    plans = tmp_path / "nnUNetPlans.json"
    plans.write_text(json.dumps(_plans(patch), indent=4))
    before = plans.read_bytes()
    out = tmp_path / "nnUNetPlans_scnas.json"
    result = CliRunner().invoke(app, ["export-nnunet", str(GENOTYPE), "--plans", str(plans), "--configuration",
                                      "3d_fullres", "-o", str(out), "--stem-width", "8", *extra])
    assert plans.read_bytes() == before  # the original is never written
    return plans, out, result.output, result


def test_export_adds_a_configuration_and_nnunet_builds_it(tmp_path: Path) -> None:
    plans, out, output, result = _export(tmp_path, [32, 32, 32])
    assert result.exit_code == 0, output  # type: ignore[attr-defined]
    assert "nnUNetv2_train DATASET 3d_fullres_scnas FOLD -p nnUNetPlans_scnas" in output
    written = json.loads(out.read_text())
    original = _plans([32, 32, 32])
    assert written["configurations"]["3d_fullres"] == original["configurations"]["3d_fullres"]
    new = written["configurations"]["3d_fullres_scnas"]
    assert new["inherits_from"] == "3d_fullres"
    arch = new["architecture"]
    assert arch["network_class_name"] == "scnas_dsl.integrations.nnunet.ScnasNetwork"
    assert arch["_kw_requires_import"] == []
    assert arch["arch_kwargs"]["genotype_file"] == str(GENOTYPE)
    assert written["plans_name"] == "nnUNetPlans_scnas"

    # nnU-Net's own reading of the plan: inheritance, the network and the deep-supervision scales
    cm = PlansManager(str(out)).get_configuration("3d_fullres_scnas")
    assert list(cm.patch_size) == [32, 32, 32] and cm.batch_size == 2
    scales = list(list(i) for i in 1 / np.cumprod(np.vstack(cm.pool_op_kernel_sizes), axis=0))[:-1]
    torch.manual_seed(0)
    x = torch.randn(2, 2, 32, 32, 32)
    for deep_supervision in (True, False):
        net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                     cm.network_arch_init_kwargs_req_import, 2, 3, allow_init=True,
                                     deep_supervision=deep_supervision)
        assert net.decoder.deep_supervision is deep_supervision
        y = net(x)
        if deep_supervision:
            assert isinstance(y, list) and len(y) == len(scales) >= 2
            for out_l, scale in zip(y, scales, strict=True):  # nnU-Net's targets have the outputs' sizes
                assert out_l.shape == (2, 3, *(round(32 * s) for s in scale))
            loss = sum(o.float().pow(2).mean() for o in y)
        else:
            assert isinstance(y, torch.Tensor) and y.shape == (2, 3, 32, 32, 32)
            loss = y.pow(2).mean()
        loss.backward()
        assert all(p.grad is not None for p in net.head.parameters())
        # the trainer's switch (nnUNetTrainer.set_deep_supervision_enabled) flips the output kind
        net.decoder.deep_supervision = not deep_supervision
        assert isinstance(net(x[:1]), list) is (not deep_supervision)
    # the heads are built either way, so a checkpoint trained with them loads for inference (deep_supervision=False)
    on = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs, [], 2, 3,
                                deep_supervision=True)
    off = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs, [], 2, 3,
                                 deep_supervision=False)
    off.load_state_dict(copy.deepcopy(on.state_dict()))


def test_export_errors(tmp_path: Path) -> None:
    plans, out, output, result = _export(tmp_path, [36, 32, 32])
    assert result.exit_code == 1 and "not divisible by 8" in output and not out.exists()  # type: ignore[attr-defined]
    runner = CliRunner()
    missing = runner.invoke(app, ["export-nnunet", str(GENOTYPE), "--plans", str(tmp_path / "no.json"), "-o",
                                  str(out)])
    assert missing.exit_code == 2 and "no such plans file" in missing.output
    plans.write_text(json.dumps(_plans([32, 32, 32])))
    wrong = runner.invoke(app, ["export-nnunet", str(GENOTYPE), "--plans", str(plans), "-c", "2d", "-o", str(out)])
    assert wrong.exit_code == 2 and "no configuration '2d'" in wrong.output and "3d_fullres" in wrong.output
    same = runner.invoke(app, ["export-nnunet", str(GENOTYPE), "--plans", str(plans), "-o", str(plans)])
    assert same.exit_code == 2 and "plans file itself" in same.output
    assert runner.invoke(app, ["export-nnunet", str(GENOTYPE), "--plans", str(plans), "-o", str(out)]).exit_code == 0
    again = runner.invoke(app, ["export-nnunet", str(GENOTYPE), "--plans", str(plans), "-o", str(out)])
    assert again.exit_code == 2 and "--force" in again.output


def test_a_genotype_without_levels_gets_a_head_on_every_decoder_level() -> None:
    # nnU-Net weighs its coarsest output 0: with heads on every decoder level, all but the coarsest train
    from scnas_dsl.integrations.nnunet import ScnasNetwork, nnunet_strides, output_levels

    example = Path(__file__).resolve().parents[2] / "specs" / "genotypes" / "example.scn"
    network = ScnasNetwork(1, 2, str(example), stem_width=4)
    assert output_levels(network) == (0, 1, 2)
    assert nnunet_strides(output_levels(network), 3) == [[1] * 3, [2] * 3, [2] * 3, [2] * 3]


def test_patch_is_the_patch_nnunet_trains_with(tmp_path: Path) -> None:
    # nnUNetv2_plan_and_preprocess planned 28^3, which the genotype's three down-samplings cannot take
    plans, out, output, result = _export(tmp_path, [28, 28, 28])
    assert result.exit_code == 1 and "--patch" in output and not out.exists()  # type: ignore[attr-defined]
    plans, out, output, result = _export(tmp_path, [28, 28, 28], "--patch", "32", "32", "32")
    assert result.exit_code == 0, output  # type: ignore[attr-defined]
    cm = PlansManager(str(out)).get_configuration("3d_fullres_scnas")
    assert list(cm.patch_size) == [32, 32, 32]
    assert list(PlansManager(str(out)).get_configuration("3d_fullres").patch_size) == [28, 28, 28]
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs, [], 1, 2,
                                 deep_supervision=False)
    assert net(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)
