"""End to end, the result must be GOOD, not only well formed: a short retraining on generated heart data, then
``scnas predict`` on the held-out cases, scored here (numpy) against the reference labels on the original image
grid. The Dice must be well above what an empty and an all-foreground prediction get, so that inverted or
misplaced label maps (right shape, right affine, wrong voxels) fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from scnas_dsl.data.synth import synthesize
from scnas_dsl.studies.demo import small_space
from tests.helpers import invoke

# A genotype of the demo's kind of space (two levels, two nodes per cell, the paper's operations), written by
# hand: every cell has convolutions, so the network learns quickly whatever a search would have found.
GENOTYPE = small_space("tiny", levels=2, stem_width=8) + """
genotype handmade of tiny {
  cell enc {
    n0 = conv3(in0) + skip(in1)
    n1 = dil2(n0) + conv3(in1)
  }
  cell red {
    n0 = conv3(in0) + conv3(in1)
    n1 = conv3(n0) + maxpool(in1)
  }
  cell dec {
    n0 = conv3(in0) + conv3(in1)
    n1 = conv3(n0) + skip(in1)
  }
  cell exp {
    n0 = conv3(in0) + conv3(in1)
    n1 = dil2(n0) + skip(in1)
  }
}
"""


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two boolean masks (both empty: 1)."""
    total = int(prediction.sum()) + int(reference.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & reference).sum()) / total


@pytest.mark.slow
def test_a_short_retraining_predicts_well_on_the_original_grid(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors; other tests share the cores
    try:
        data = synthesize(tmp_path / "data", "heart", cases=6, shape=(32, 32, 32), seed=0)
        (tmp_path / "genotype.scn").write_text(GENOTYPE)
        # Adam at 3e-3 instead of the paper's 3e-4: 60 steps must be enough here
        (tmp_path / "settings.json").write_text(json.dumps({"optimizer": {"lr": 3e-3, "betas": [0.9, 0.999]}}))
        code, output = invoke("train", tmp_path / "genotype.scn", "--data", data, "--out", tmp_path / "train",
                              "--epochs", "1", "--batches-per-epoch", "60", "--batch-size", "2",
                              "--patch", "24", "24", "24", "--stem-width", "8", "--device", "cpu", "--quiet",
                              "--no-augment", "--median-spacing", "--config", tmp_path / "settings.json")
        assert code == 0, output
        held_out = json.loads((tmp_path / "train" / "split.json").read_text())["val"]
        assert len(held_out) >= 2
        images = [data / "imagesTr" / f"{case}.nii.gz" for case in held_out]
        code, output = invoke("predict", tmp_path / "train", *[a for i in images for a in ("--input", i)],
                              "--output", tmp_path / "pred", "--device", "cpu", "--quiet")
        assert code == 0, output
    finally:
        torch.set_num_threads(threads)

    scores = {}
    for case in held_out:
        predicted = nib.load(str(tmp_path / "pred" / f"{case}.nii.gz"))
        reference = nib.load(str(data / "labelsTr" / f"{case}.nii.gz"))
        assert predicted.shape == reference.shape  # the original grid, not the preprocessed one
        assert np.allclose(predicted.affine, reference.affine, atol=1e-4)
        truth = np.asarray(reference.dataobj) == 1
        mask = np.asarray(predicted.dataobj) == 1
        empty, full = dice(np.zeros_like(truth), truth), dice(np.ones_like(truth), truth)
        scores[case] = dice(mask, truth)
        # measured (heart_004, heart_005): Dice 0.956 and 0.938; empty 0.0, all foreground 0.052; with the
        # label maps inverted in predict under 0.001, mirrored along one axis 0.03 (heart_005). The test takes
        # about 18 s of CPU on one thread (20-30 s wall on a busy machine).
        assert scores[case] > max(empty, full) + 0.5, (case, scores[case], empty, full)

    # scnas evaluate scores the same files the same way
    code, output = invoke("evaluate", "--pred", tmp_path / "pred", "--ref", data / "labelsTr", "--out",
                          tmp_path / "scores")
    assert code == 0, output
    result = json.loads((tmp_path / "scores" / "dice.json").read_text())
    assert result["foreground_mean"] == pytest.approx(np.mean(list(scores.values())), abs=1e-5)
