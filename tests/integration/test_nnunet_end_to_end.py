"""A found genotype through nnU-Net v2's own pipeline, end to end (issue 22, section 1): nnU-Net plans and
preprocesses a generated set in its raw layout, ``scnas export-nnunet --patch`` adds the genotype's configuration,
``nnUNetv2_train`` trains it (a one-epoch trainer variant on the CPU) and runs its final validation, and
``nnUNetv2_predict`` segments the test case; the prediction has the image's geometry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scnas_dsl.data.synth import synthesize
from tests.helpers import invoke

pytest.importorskip("nnunetv2")

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("nnunet_end_to_end")]

ROOT = Path(__file__).resolve().parents[2]
GENOTYPE = ROOT / "specs" / "genotypes" / "example.scn"
CLI = Path(__file__).with_name("nnunet_cli.py")
BIN = Path(sys.executable).parent


def _run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_nnunet_plans_trains_validates_and_predicts_a_genotype(tmp_path: Path) -> None:
    raw, pre, results = tmp_path / "raw", tmp_path / "preprocessed", tmp_path / "results"
    dataset = synthesize(raw / "Dataset501_Heart", "heart", cases=6, shape=(32, 32, 32), seed=0, layout="nnunet",
                         test_cases=1)
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(results),
           "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1", "nnUNet_compile": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    _run([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", "501", "-c", "3d_fullres", "-np", "1"], env, tmp_path)
    plans = pre / "Dataset501_Heart" / "nnUNetPlans.json"
    planned = json.loads(plans.read_text())["configurations"]["3d_fullres"]["patch_size"]
    out = plans.with_name("nnUNetPlans_scnas.json")
    code, output = invoke("export-nnunet", GENOTYPE, "--plans", plans, "-o", out, "--stem-width", "4")
    if any(size % 8 for size in planned):  # nnU-Net planned a patch the genotype's three levels cannot take
        assert code == 1 and "--patch" in output and not out.exists(), output
    code, output = invoke("export-nnunet", GENOTYPE, "--plans", plans, "-o", out, "--stem-width", "4", "--force",
                          "--patch", "32", "32", "32")
    assert code == 0, output

    _run([sys.executable, str(CLI), "nnUNetv2_train", "501", "3d_fullres_scnas", "0", "-p", "nnUNetPlans_scnas",
          "-tr", "nnUNetTrainer_scnasTest", "-device", "cpu"], env, tmp_path)
    fold = results / "Dataset501_Heart" / "nnUNetTrainer_scnasTest__nnUNetPlans_scnas__3d_fullres_scnas" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    summary = json.loads((fold / "validation" / "summary.json").read_text())  # nnU-Net's final validation
    assert summary["metric_per_case"] and "Dice" in summary["foreground_mean"]

    predictions = tmp_path / "predictions"
    _run([sys.executable, str(CLI), "nnUNetv2_predict", "-i", str(dataset / "imagesTs"), "-o", str(predictions),
          "-d", "501", "-c", "3d_fullres_scnas", "-p", "nnUNetPlans_scnas", "-tr", "nnUNetTrainer_scnasTest",
          "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env, tmp_path)
    images = sorted((dataset / "imagesTs").glob("*_0000.nii.gz"))
    assert images
    for image in images:
        predicted = predictions / image.name.replace("_0000.nii.gz", ".nii.gz")
        img, seg = nib.load(image), nib.load(predicted)
        assert seg.shape == img.shape[:3]
        np.testing.assert_allclose(seg.affine, img.affine, atol=1e-4)
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1}
