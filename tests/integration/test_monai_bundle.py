"""``scnas export RUN --format monai-bundle -o DIR`` (issue 22, section 3): MONAI's own bundle commands verify the
network against the metadata and run the inference config on generated cases, with ``dataset_dir`` and
``output_dir`` as overrides; the label maps have the images' geometry and agree with ``scnas predict --no-mirror``
(they can differ: MONAI's window placement, importance map and resampling); the bundle's preprocessing, parsed by
MONAI from the written config, is the run's (MRI and CT intensity rules)."""

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

pytest.importorskip("monai")
pytest.importorskip("ignite")  # MONAI's engines (the bundle's evaluator)
pytest.importorskip("fire")  # MONAI's bundle command line

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("monai_bundle")]

BASELINE = Path(__file__).resolve().parents[2] / "specs" / "baselines" / "unet3d.scn"
TINY = ["--patch", "16", "16", "16", "--stem-width", "8", "--batch-size", "2", "--device", "cpu", "--quiet",
        "--median-spacing", "--no-augment"]


def _bundle_command(bundle: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=bundle, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * ((a > 0) & (b > 0)).sum() / max((a > 0).sum() + (b > 0).sum(), 1))


def test_a_run_as_a_monai_bundle_segments_as_scnas_predict_does(tmp_path: Path) -> None:
    data = synthesize(tmp_path / "data", "heart", cases=6, shape=(32, 32, 32), seed=0, test_cases=2)
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    code, output = invoke("train", BASELINE, "--data", data, "--out", run, "--epochs", "12", "--batches-per-epoch",
                          "10", "--val-every", "12", *TINY)
    assert code == 0, output
    code, output = invoke("export", run, "--format", "monai-bundle", "-o", bundle)
    assert code == 0, output
    assert "max abs difference 0" in output  # the bundle's own network file with its weights: the run's logits
    for part in ("configs/inference.json", "configs/metadata.json", "models/model.pt", "scripts/network.py",
                 "docs/README.md"):
        assert (bundle / part).is_file(), part

    said = _bundle_command(bundle, "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
                           "--config_file", "configs/inference.json")
    assert "verified with no error" in said
    out = tmp_path / "monai_out"
    _bundle_command(bundle, "run", "--config_file", "configs/inference.json", "--meta_file", "configs/metadata.json",
                    "--dataset_dir", str(data), "--output_dir", str(out))
    code, output = invoke("predict", run, "--input", data / "imagesTs", "--output", tmp_path / "scnas_out",
                          "--no-mirror", "--quiet")
    assert code == 0, output
    images = sorted((data / "imagesTs").glob("*.nii.gz"))
    assert len(images) == 2
    for image in images:
        case = image.name.removesuffix(".nii.gz")
        monai_map, scnas_map, img = (nib.load(out / f"{case}_seg.nii.gz"), nib.load(tmp_path / "scnas_out" / image.name),
                                     nib.load(image))
        theirs = np.asarray(monai_map.dataobj).squeeze()
        assert theirs.shape == img.shape and np.allclose(monai_map.affine, img.affine, atol=1e-4)
        # measured 0.86 and 0.93 (the two cases, this recipe); the same network and weights, different windows
        assert _dice(theirs, np.asarray(scnas_map.dataobj)) > 0.75, case


def test_a_bundle_is_refused_for_a_genotype_file_and_never_replaces_a_foreign_folder(tmp_path: Path) -> None:
    code, output = invoke("export", BASELINE, "--format", "monai-bundle", "-o", tmp_path / "b")
    assert code == 2 and "takes a `scnas train` run folder" in output
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    data = synthesize(tmp_path / "data", "lung", cases=5, shape=(24, 24, 24), seed=1)
    run = tmp_path / "run"
    code, output = invoke("train", BASELINE, "--data", data, "--out", run, "--epochs", "1", "--batches-per-epoch",
                          "1", *TINY)
    assert code == 0, output
    code, output = invoke("export", run, "--format", "monai-bundle", "-o", foreign, "--force")
    assert code == 1 and "not a bundle scnas export wrote" in output and (foreign / "notes.txt").read_text() == "keep me"
    bundle = tmp_path / "bundle"
    assert invoke("export", run, "--format", "monai-bundle", "-o", bundle)[0] == 0
    code, output = invoke("export", run, "--format", "monai-bundle", "-o", bundle)
    assert code == 1 and "--force" in output
    assert invoke("export", run, "--format", "monai-bundle", "-o", bundle, "--force")[0] == 0

    # the bundle's preprocessing, parsed by MONAI from the written config, is the run's CT rule
    from monai.bundle import ConfigParser

    from scnas_dsl.data.pipeline import preprocess_image
    from scnas_dsl.prediction.predict import load_trained

    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert config["clip_lower"] and config["intensity_mean"]  # CT statistics of the training set
    parser = ConfigParser(config)
    preprocessing = parser.get_parsed_content("preprocessing")
    case = sorted((data / "imagesTr").glob("*.nii.gz"))[0]
    theirs = np.asarray(preprocessing({"image": str(case)})["image"])
    ours, _ = preprocess_image([case], load_trained(run).pre)
    assert theirs.shape == ours.shape
    np.testing.assert_allclose(theirs, ours, atol=1e-4)  # at the data's own voxel size: no resampling
