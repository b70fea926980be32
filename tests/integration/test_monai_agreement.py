"""A network built by scnas used with MONAI (``monai.inferers.sliding_window_inference``, ``monai.metrics.DiceMetric``)
gives the same probabilities, label maps and Dice as scnas's own inference (``scnas predict``) and metrics
(``scnas evaluate``) where the two are defined alike, and differs where they are not (docs/deploy.md, "With MONAI"):

- window placement: MONAI steps by ``int(patch * (1 - overlap))`` and moves the last window back to the border;
  scnas spaces its starts evenly between 0 and ``size - patch``. They coincide when every axis is the patch or
  the patch plus a multiple of the step (e.g. a multiple of half the patch at overlap 0.5);
- the Gaussian: the same curve (sigma = patch / 8, centred between the middle voxels), but MONAI does not scale
  it to a maximum of 1 before raising every weight to at least 1e-3, which flattens the window's rim; passing
  scnas's map as ``roi_weight_map`` removes the difference;
- what is blended: scnas blends softmax probabilities, MONAI whatever the predictor returns (the predictor
  must apply the softmax);
- mirroring: none in MONAI; a predictor that averages the flips gives scnas's ``mirror=True``;
- empty masks: scnas (nnU-Net's rule) leaves a label out when reference and prediction are both empty and
  scores 0 when only the reference is; MONAI's ``ignore_empty=True`` leaves out every case with an empty
  reference, ``ignore_empty=False`` scores both-empty 1.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

monai = pytest.importorskip("monai")
from monai.data.utils import dense_patch_slices  # noqa: E402
from monai.inferers import sliding_window_inference as monai_swi  # noqa: E402
from monai.inferers.utils import _get_scan_interval  # noqa: E402
from monai.metrics import DiceMetric  # noqa: E402

from scnas_dsl.data.pipeline import preprocess_image  # noqa: E402
from scnas_dsl.data.restore import restore_segmentation  # noqa: E402
from scnas_dsl.evaluation.metrics import dice_per_label, evaluate_folders  # noqa: E402
from scnas_dsl.inference.sliding_window import importance_map, sliding_window_inference, window_starts  # noqa: E402
from scnas_dsl.loader import load  # noqa: E402
from scnas_dsl.nn import build_network  # noqa: E402
from scnas_dsl.prediction.predict import load_trained, predict_run  # noqa: E402
from scnas_dsl.training.config import TrainConfig  # noqa: E402
from scnas_dsl.training.retrain import run_train  # noqa: E402
from tests.helpers import heart_cases  # noqa: E402

pytestmark = pytest.mark.slow

BASELINE = Path(__file__).resolve().parents[2] / "specs" / "baselines" / "unet3d.scn"
PATCH = (16, 16, 16)
CLASSES = 3
# float32 sums of the same weighted probabilities in another order
PROB_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    """The baseline genotype at stem width 4 with random weights, in eval mode."""
    torch.manual_seed(0)
    space, genotype = load(BASELINE).genotype()
    net = build_network(space, genotype, in_channels=1, num_classes=CLASSES, stem_width=4, deep_supervision=False)
    return net.eval()


def softmax_of(net: torch.nn.Module):  # type: ignore[no-untyped-def]
    """MONAI blends what the predictor returns: scnas blends probabilities."""
    def predictor(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(net(x).float(), dim=1)
    return predictor


def mirrored(net: torch.nn.Module):  # type: ignore[no-untyped-def]
    """scnas's ``mirror=True`` as a MONAI predictor: the mean of the softmax over the 8 flips."""
    flips = [c for r in range(4) for c in itertools.combinations((2, 3, 4), r)]

    def predictor(x: torch.Tensor) -> torch.Tensor:
        total = sum(torch.softmax(net(x.flip(f) if f else x).float(), 1).flip(f) if f
                    else torch.softmax(net(x).float(), 1) for f in flips)
        return total / len(flips)
    return predictor


def monai_probs(net: torch.nn.Module, image: torch.Tensor, *, scnas_weights: bool, mirror: bool = False
                ) -> torch.Tensor:
    """``(K, *S)`` from MONAI for one image ``(C, *S)``: Gaussian, overlap 0.5; with scnas's importance map
    (``roi_weight_map``) or MONAI's own (sigma_scale 0.125)."""
    with torch.no_grad():
        out = monai_swi(image[None], PATCH, sw_batch_size=2, predictor=mirrored(net) if mirror else softmax_of(net),
                        overlap=0.5, mode="gaussian", sigma_scale=0.125,
                        roi_weight_map=importance_map(PATCH, "gaussian") if scnas_weights else None)
    return out[0]


def monai_starts(size: int, patch: int) -> list[int]:
    interval = _get_scan_interval((size,), (patch,), 1, (0.5,))
    return sorted({s[0].start for s in dense_patch_slices((size,), (patch,), interval)})


def test_window_placement_coincides_on_multiples_of_half_the_patch_only() -> None:
    for size in (16, 24, 32, 40, 48):
        assert monai_starts(size, 16) == window_starts(size, 16, 0.5)
    # otherwise MONAI steps by 8 and moves the last window back; scnas spaces the windows evenly
    assert monai_starts(36, 16) == [0, 8, 16, 20]
    assert window_starts(36, 16, 0.5) == [0, 7, 13, 20]


def test_gaussian_is_the_same_curve_up_to_scale_but_monai_floors_the_rim() -> None:
    from monai.data.utils import compute_importance_map

    ours = importance_map(PATCH, "gaussian").double()
    theirs = compute_importance_map(PATCH, mode="gaussian", sigma_scale=0.125).double()
    centre = (slice(4, 12),) * 3  # well above MONAI's floor: only the scale differs
    ratio = theirs[centre] / ours[centre]
    assert torch.allclose(ratio, ratio.mean().expand_as(ratio), rtol=1e-5)
    assert theirs.min().item() == pytest.approx(1e-3)  # the floor
    assert ours.min().item() < 1e-8  # nnU-Net's map has no floor besides its smallest value
    assert (theirs == theirs.min()).float().mean().item() > 0.5  # the floor covers the window's rim (58%)


@pytest.mark.parametrize("shape", [(32, 32, 32), (16, 24, 40), (12, 32, 24)], ids=["cube", "box", "padded"])
@pytest.mark.parametrize("mirror", [False, True], ids=["plain", "mirrored"])
def test_same_probabilities_and_labels_where_windows_coincide(network: torch.nn.Module, shape: tuple[int, ...],
                                                              mirror: bool) -> None:
    """A volume a multiple of half the patch (an axis smaller than the patch is zero-padded by both alike)."""
    torch.manual_seed(1)
    image = torch.randn(1, *shape)
    ours = sliding_window_inference(network, image, PATCH, overlap=0.5, blend="gaussian", mirror=mirror)
    theirs = monai_probs(network, image, scnas_weights=True, mirror=mirror)
    assert theirs.shape == ours.shape == (CLASSES, *shape)
    assert (theirs - ours).abs().max().item() < PROB_TOLERANCE
    assert torch.equal(theirs.argmax(0), ours.argmax(0))


def measured(network: torch.nn.Module, shape: tuple[int, ...], *, scnas_weights: bool
             ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """scnas's and MONAI's probabilities on a random volume, their largest difference and the fraction of
    voxels whose argmax differs."""
    torch.manual_seed(1)
    image = torch.randn(1, *shape)
    ours = sliding_window_inference(network, image, PATCH, overlap=0.5, blend="gaussian")
    theirs = monai_probs(network, image, scnas_weights=scnas_weights)
    return (ours, theirs, (theirs - ours).abs().max().item(),
            (theirs.argmax(0) != ours.argmax(0)).float().mean().item())


def test_monai_gaussian_differs_measurably(network: torch.nn.Module) -> None:
    """MONAI's own Gaussian (floored at 1e-3) on the same windows: probabilities differ where windows overlap
    (random weights: max |dp| 0.29, argmax differs at 4.4% of the voxels)."""
    _, _, diff, changed = measured(network, (32, 32, 32), scnas_weights=False)
    print(f"MONAI's Gaussian: max |dp| {diff:.2e}, argmax differs at {changed:.2%} of voxels")
    assert diff > PROB_TOLERANCE


def test_window_placement_differs_measurably(network: torch.nn.Module) -> None:
    """36 voxels along an axis: MONAI's windows start at 0, 8, 16, 20, scnas's at 0, 7, 13, 20 (random weights:
    max |dp| 0.57, argmax differs at 12% of the voxels)."""
    ours, theirs, diff, changed = measured(network, (36, 32, 32), scnas_weights=True)
    print(f"window placement: max |dp| {diff:.2e}, argmax differs at {changed:.2%} of voxels")
    assert diff > PROB_TOLERANCE
    # the last window is the same, so the far end agrees (voxels 32.. are only in the windows starting at 20)
    assert (theirs[:, 32:] - ours[:, 32:]).abs().max().item() < PROB_TOLERANCE


def monai_dice(prediction: np.ndarray, reference: np.ndarray, *, ignore_empty: bool) -> list[float]:
    """Foreground Dice per label (1..CLASSES-1) from MONAI's DiceMetric on one-hot maps."""
    def one_hot(a: np.ndarray) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.from_numpy(a).long(), CLASSES).permute(3, 0, 1, 2)[None].float()

    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=ignore_empty)
    return metric(one_hot(prediction), one_hot(reference))[0].tolist()


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-6)


def test_dice_agrees_where_the_reference_has_the_label_and_the_empty_rules_differ() -> None:
    rng = np.random.default_rng(0)
    reference = rng.integers(0, CLASSES, size=(12, 12, 12))
    prediction = np.where(rng.random(reference.shape) < 0.2, rng.integers(0, CLASSES, reference.shape), reference)
    ours = dice_per_label(prediction, reference, [1, 2])
    for ignore_empty in (True, False):
        theirs = monai_dice(prediction, reference, ignore_empty=ignore_empty)
        assert all(same(ours[k], theirs[k - 1]) for k in (1, 2))
        assert 0.5 < ours[1] < 1

    # label 2 in neither map / label 2 only in the prediction
    neither = np.where(reference == 2, 0, reference), np.where(prediction == 2, 0, prediction)
    only_predicted = np.where(reference == 2, 0, reference), prediction
    for ref, pred, scnas, ignored, counted in [(*neither, math.nan, math.nan, 1.0),
                                               (*only_predicted, 0.0, math.nan, 0.0)]:
        assert same(dice_per_label(pred, ref, [2])[2], scnas)
        assert same(monai_dice(pred, ref, ignore_empty=True)[1], ignored)
        assert same(monai_dice(pred, ref, ignore_empty=False)[1], counted)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run trained for two steps on generated data, preprocessed to 2 mm: grids of about 12 x 12 x 21 voxels,
    on which the two window placements coincide (one window, or two at 0 and ``size - patch``)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("monai")
    raw, pre_root = heart_cases(root, (2.0, 2.0, 2.0))
    cfg = TrainConfig(genotype=str(BASELINE), data=str(pre_root), out=str(root / "run"), epochs=1, val_every=1,
                      batch_size=2, patch=PATCH, stem_width=4, batches_per_epoch=2, device="cpu",
                      progress=False, augment=False)
    assert run_train(cfg) is not None
    return {"root": root, "raw": raw, "run": root / "run"}


def test_scnas_predict_and_evaluate_match_monai_end_to_end(trained: dict[str, Path], tmp_path: Path) -> None:
    """``scnas predict`` (mirrored, the default) and ``scnas evaluate`` against the same weights through
    MONAI's sliding window with scnas's map and a mirroring predictor, and MONAI's DiceMetric."""
    images = sorted((trained["raw"] / "imagesTr").iterdir())[:2]
    predict_run(trained["run"], images, tmp_path / "pred", device="cpu", progress=False)
    scnas_eval = evaluate_folders(tmp_path / "pred", trained["raw"] / "labelsTr")
    model = load_trained(trained["run"])
    net = model.network.eval()
    for path in images:
        case = path.name.removesuffix(".nii.gz")
        data, meta = preprocess_image([path], model.pre)
        assert all(monai_starts(s, p) == window_starts(s, p, 0.5) for s, p in zip(data.shape[1:], PATCH, strict=True))
        assert max(data.shape[1:]) > PATCH[0]  # more than one window
        probs = monai_probs(net, torch.from_numpy(data), scnas_weights=True, mirror=True)
        labels = np.asarray(restore_segmentation(probs.numpy(), meta.model_copy(update={"case_id": case})).dataobj)
        ours = np.asarray(nib.load(str(tmp_path / "pred" / f"{case}.nii.gz")).dataobj)
        assert np.array_equal(labels, ours)
        reference = np.rint(np.asarray(nib.load(str(trained["raw"] / "labelsTr" / path.name)).dataobj)).astype(int)
        theirs = monai_dice(labels.astype(int), reference, ignore_empty=True)
        for k, score in scnas_eval.per_case[case].items():
            assert same(score, theirs[k - 1]), (case, k, score, theirs)
