"""Soft Jaccard loss and Dice on hand-made cases, empty masks included."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from scnas_dsl.errors import DataError
from scnas_dsl.evaluation.metrics import dice_per_label, evaluate_folders, nanmean
from scnas_dsl.training.losses import soft_jaccard_loss


def test_jaccard_is_zero_for_a_perfect_confident_prediction_and_one_for_a_wrong_one() -> None:
    target = torch.tensor([[[0, 1], [2, 1]]])  # (B=1, 2, 2), three classes
    perfect = 100.0 * torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float()
    assert soft_jaccard_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-4)
    wrong = 100.0 * torch.nn.functional.one_hot((target + 1) % 3, 3).movedim(-1, 1).float()
    assert soft_jaccard_loss(wrong, target).item() == pytest.approx(1.0, abs=1e-4)


def test_jaccard_matches_the_soft_iou_formula() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 4, 4, 4), generator=g)
    p = torch.softmax(logits, 1)
    ious = []
    for k in (1, 2):
        pk, gk = p[:, k], (target == k).float()
        inter = (pk * gk).sum()
        ious.append(inter / (pk.sum() + gk.sum() - inter))
    expected = 1 - sum(ious) / 2
    assert soft_jaccard_loss(logits, target, smooth=0.0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_jaccard_gives_gradients_to_every_logit() -> None:
    logits = torch.zeros(1, 2, 4, 4, 4, requires_grad=True)
    target = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    soft_jaccard_loss(logits, target).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def _two_class_logits(foreground_probability: torch.Tensor) -> torch.Tensor:
    """``(B, 2, *S)`` logits whose softmax gives ``foreground_probability`` to class 1, as a leaf tensor."""
    p = foreground_probability
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], 1).requires_grad_(True)


def test_confident_false_positives_on_an_all_background_batch_are_pushed_down() -> None:
    # A batch without foreground: the IoU of class 1 is 0/0. The smoothed IoU gave loss ~1 for any prediction
    # and a gradient of s * p(1-p) / (sum p)^2 ~ 5e-13 here; the false-positive rate sum p / V gives the loss
    # p and d loss / d logit_1 = p(1-p) / V at every voxel (4.6e-5 here), positive: descent lowers the logit.
    target = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    voxels = target.numel()
    p = 0.95
    logits = _two_class_logits(torch.full((2, 8, 8, 8), p))
    loss = soft_jaccard_loss(logits, target)
    loss.backward()
    assert loss.item() == pytest.approx(p, rel=1e-5)
    assert logits.grad is not None
    assert torch.allclose(logits.grad[:, 1], torch.full_like(logits.grad[:, 1], p * (1 - p) / voxels), rtol=1e-4)
    assert torch.allclose(logits.grad[:, 0], -logits.grad[:, 1])  # the softmax: background goes up as much
    # a clean prediction of the same batch scores its (small) false-positive mass, not ~1
    clean = soft_jaccard_loss(_two_class_logits(torch.full((2, 8, 8, 8), 1e-3)), target)
    assert clean.item() == pytest.approx(1e-3, rel=1e-4)
    # half the voxels wrong: half the loss (linear, no saturation)
    half = torch.full((2, 8, 8, 8), 1e-6)
    half[:, :4] = 1 - 1e-6
    assert soft_jaccard_loss(_two_class_logits(half), target).item() == pytest.approx(0.5, abs=1e-4)


def test_a_class_absent_from_the_batch_is_scored_by_its_false_positive_rate_the_others_by_iou() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, 4, generator=g)
    target = torch.randint(0, 2, (2, 4, 4, 4), generator=g)  # class 2 absent
    p = torch.softmax(logits, 1)
    inter = (p[:, 1] * (target == 1)).sum()
    iou = inter / (p[:, 1].sum() + (target == 1).sum() - inter)
    expected = ((1 - iou) + p[:, 2].mean()) / 2
    assert soft_jaccard_loss(logits, target, smooth=0.0).item() == pytest.approx(expected.item(), rel=1e-5)
    # without a process group the reduction over ranks changes nothing
    assert torch.equal(soft_jaccard_loss(logits, target, reduce_over_ranks=True), soft_jaccard_loss(logits, target))


def test_dice_on_hand_made_cases_with_the_empty_mask_rule() -> None:
    ref = np.zeros((4, 4, 4), np.int64)
    pred = np.zeros_like(ref)
    ref[0, 0, :2] = 1  # 2 voxels
    pred[0, 0, 1:4] = 1  # 3 voxels, 1 shared
    ref[3, 3, 3] = 2  # label 2 only in the reference
    scores = dice_per_label(pred, ref, [1, 2, 3])
    assert scores[1] == pytest.approx(2 * 1 / 5)
    assert scores[2] == 0.0  # missed completely
    assert math.isnan(scores[3])  # both empty: undefined, left out of means
    assert nanmean([0.5, float("nan"), 1.0]) == pytest.approx(0.75)
    assert math.isnan(nanmean([float("nan")]))


def _save(path, data, affine=None):  # type: ignore[no-untyped-def]
    nib.save(nib.Nifti1Image(data.astype(np.uint8), np.eye(4) if affine is None else affine), str(path))


def test_evaluate_folders_writes_table_csv_and_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    a = np.zeros((4, 4, 4))
    a[:2] = 1
    _save(ref / "c1.nii.gz", a)
    _save(pred / "c1.nii.gz", a)  # perfect
    _save(ref / "c2.nii.gz", np.zeros((4, 4, 4)))
    _save(pred / "c2.nii.gz", np.zeros((4, 4, 4)))  # both empty: NaN, not counted
    _save(ref / "c3.nii.gz", a)  # no prediction: listed as missing
    result = evaluate_folders(pred, ref, label_names={1: "tumour"})
    assert result.mean_dice() == {"tumour": 1.0}
    assert result.missing == ["c3"]
    csv_path, json_path = result.write(pred)
    import json

    data = json.loads(json_path.read_text())
    assert data["mean_dice"] == {"tumour": 1.0} and data["foreground_mean"] == 1.0
    assert data["per_case"]["c2"]["tumour"] is None
    assert "c1" in csv_path.read_text() and "tumour" in result.table()


def test_evaluate_refuses_a_prediction_on_another_grid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    _save(ref / "c1.nii.gz", np.zeros((4, 4, 4)))
    _save(pred / "c1.nii.gz", np.zeros((4, 4, 5)))
    with pytest.raises(DataError, match="case c1.*shape"):
        evaluate_folders(pred, ref, labels=[1])
    _save(pred / "c1.nii.gz", np.zeros((4, 4, 4)), affine=np.diag([2.0, 1, 1, 1]))
    with pytest.raises(DataError, match="case c1.*affines"):
        evaluate_folders(pred, ref, labels=[1])
