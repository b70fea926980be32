"""What the search reports on itself: per-edge figures, changed edges, parameter-free share, the
discretisation gap (without disturbing the search), the shared colour scale of the heat maps, and the loop's
report line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scnas_dsl.evaluation.metrics import dice_per_label
from scnas_dsl.nn import build_supernet
from scnas_dsl.training.config import SearchConfig
from scnas_dsl.training.data_context import loader, open_data
from scnas_dsl.training.device import Runtime
from scnas_dsl.training.losses import soft_jaccard_loss
from scnas_dsl.training.plots import probability_figure
from scnas_dsl.training.search_report import (
    changed_edges,
    choices_of,
    discretisation_gap,
    edge_table,
    parameter_free_share,
)
from tests.helpers import generated_set
from tests.unit.nn.spaces import unet_space

PROBS = {
    "enc": {"in0->n0": {"conv3": 0.7, "skip": 0.2, "none": 0.1},
            "in1->n0": {"conv3": 0.2, "skip": 0.5, "none": 0.3}},
    "red": {"in0->n0": {"conv3": 0.34, "skip": 0.33, "none": 0.33}},
}


def test_edge_table_changed_edges_and_parameter_free_share() -> None:
    table = edge_table(PROBS)
    assert table["enc"]["in0->n0"]["op"] == "conv3" and table["enc"]["in0->n0"]["p"] == 0.7
    assert table["enc"]["in1->n0"]["op"] == "skip"
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert table["enc"]["in0->n0"]["entropy"] == pytest.approx(h)
    now = choices_of(table)
    before = {"enc": {"in0->n0": "conv3", "in1->n0": "none"}, "red": {"in0->n0": "skip"}}
    assert changed_edges(before, now) == 2
    assert changed_edges(now, now) == 0 and changed_edges(None, now) == 0
    free = {"enc": {"skip", "none"}, "red": {"skip", "none"}}
    assert parameter_free_share(now, free) == pytest.approx(1 / 3)  # skip on one edge of three


def test_the_supernet_knows_its_parameter_free_operations() -> None:
    net = build_supernet(unet_space(levels=1), in_channels=1, num_classes=2)
    free = net.parameter_free()
    for key in net.op_names:
        assert free[key] == {"maxpool", "avgpool", "skip", "none"}, key


@pytest.fixture(scope="module")
def search_data(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gap")
    _, pre = generated_set(root, "heart", size=20, seed=1)
    cfg = SearchConfig(spec="unused.scn", data=str(pre), batch_size=2, patch=(16, 16, 16), stem_width=4,
                       progress=False, augment=False)
    runtime = Runtime(device=torch.device("cpu"))
    ctx = open_data(cfg, runtime)
    return cfg, runtime, ctx


def test_the_gap_measures_the_argmax_architecture_and_leaves_the_search_alone(search_data) -> None:  # type: ignore[no-untyped-def]
    cfg, runtime, ctx = search_data
    space = unet_space(dims=3, levels=1, width=4)
    model = build_supernet(space, in_channels=1, num_classes=2, sampling="pair", seed=5)
    with torch.no_grad():  # a clear preference on every edge
        for alpha in model.arch.values():
            alpha.copy_(torch.randn(alpha.shape, generator=torch.Generator().manual_seed(0)) * 3)
    model.train()
    patches = loader(cfg, ctx, runtime, ctx.fold.arch_part, (16, 16, 16), stream=4, augment=False, num_batches=2)
    generator_before = model.generator.get_state().clone()
    counts_before = {k: v.clone() for k, v in model._counts.items()}

    gap = discretisation_gap(model, patches, runtime, seed=3)

    assert torch.equal(model.generator.get_state(), generator_before)  # the search's draws are not disturbed
    assert all(torch.equal(model._counts[k], v) for k, v in counts_before.items())
    assert model.training
    # by hand: the argmax architecture on the same patches
    model.eval()
    losses, preds, refs = [], [], []
    with torch.no_grad():
        patches.set_epoch(0)
        for x, y in patches:
            logits = model(x, samples=model.argmax_samples())
            losses.append(float(soft_jaccard_loss(logits, y)))
            preds.append(logits.argmax(1).numpy())
            refs.append(y.numpy())
    assert gap["argmax_loss"] == pytest.approx(np.mean(losses), rel=1e-6)
    expected = dice_per_label(np.concatenate(preds), np.concatenate(refs), [1])[1]
    assert gap["argmax_dice"] == pytest.approx(expected, rel=1e-6)
    assert 0.0 <= gap["sampled_dice"] <= 1.0 and gap["sampled_loss"] > 0
    # the same patches every time: measuring twice gives the same figures
    assert discretisation_gap(model, patches, runtime, seed=3) == gap


def test_heat_maps_share_one_colour_scale_and_show_their_values() -> None:
    figure = probability_figure({"enc": {"a->b": {"x": 0.1230, "y": 0.1267, "z": 0.7503}},
                                 "red": {"a->b": {"x": 0.33, "y": 0.33, "z": 0.34}}})
    images = [image for axes in figure.axes for image in axes.get_images()]
    assert len(images) == 2
    assert all(image.get_clim() == (0.0, 1.0) for image in images)
    texts = {t.get_text() for axes in figure.axes for t in axes.texts}
    assert {".12", ".13", ".75", ".33", ".34"} <= texts
