"""``scnas export-nnunet`` reads the plans through one typed class (``integrations/nnunet_plans.Plans``): every
field it reads is checked, and a bad one is a message naming the file, the configuration and the field, with
nothing written; ``--patch`` gives the new configuration its own patch, checked against the network and the
plan's median image size. nnU-Net itself is not needed here (tests/integration/test_nnunet.py builds the result
with nnU-Net's own classes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scnas_dsl.integrations.nnunet_plans import Plans, PlansError
from tests.helpers import invoke

ROOT = Path(__file__).resolve().parents[2]
GENOTYPE = ROOT / "specs" / "genotypes" / "example.scn"  # three down-samplings: patches divide by 8


def _plans(patch: Any = (28, 28, 28), median: Any = (30, 30, 30), **config: Any) -> dict[str, Any]:
    base = {"patch_size": list(patch) if isinstance(patch, tuple) else patch, "batch_size": 2,
            "median_image_size_in_voxels": list(median) if isinstance(median, tuple) else median, **config}
    return {"plans_name": "nnUNetPlans", "configurations": {"3d_fullres": base}}


def _export(tmp_path: Path, document: Any, *extra: str) -> tuple[int, str, Path]:
    plans = tmp_path / "nnUNetPlans.json"
    plans.write_text(json.dumps(document))
    out = tmp_path / "nnUNetPlans_scnas.json"
    code, output = invoke("export-nnunet", GENOTYPE, "--plans", plans, "-o", out, "--stem-width", "4", *extra)
    return code, output, out


def test_a_planned_patch_the_network_cannot_take_names_patch_and_the_way_out(tmp_path: Path) -> None:
    code, output, out = _export(tmp_path, _plans())
    assert code == 1 and not out.exists()
    assert "patch_size [28, 28, 28]" in output and "not divisible by 8" in output and "--patch" in output


def test_patch_gives_the_new_configuration_its_own_patch(tmp_path: Path) -> None:
    code, output, out = _export(tmp_path, _plans(), "--patch", "32", "32", "24")
    assert code == 0, output
    config = json.loads(out.read_text())["configurations"]["3d_fullres_scnas"]
    assert config["patch_size"] == [32, 32, 24] and config["inherits_from"] == "3d_fullres"
    assert "patch [32, 32, 24]" in output
    # nnU-Net's resolution (the nearest definition wins): the new configuration's own patch
    assert Plans.read(out).patch_size("3d_fullres_scnas") == (32, 32, 24)
    assert Plans.read(out).patch_size("3d_fullres") == (28, 28, 28)


@pytest.mark.parametrize(("patch", "words"), [
    (("36", "32", "32"), ["--patch 36 32 32", "not divisible by 8"]),
    (("64", "32", "32"), ["--patch 64 32 32", "median [30, 30, 30]", "at most 32 32 32"]),
])
def test_a_patch_that_does_not_fit_is_refused(tmp_path: Path, patch: tuple[str, ...], words: list[str]) -> None:
    code, output, out = _export(tmp_path, _plans(), "--patch", *patch)
    assert code == 2 and not out.exists()
    for word in words:
        assert word in output, output


@pytest.mark.parametrize(("document", "words"), [
    ({"configurations": ["3d_fullres"]}, ["no 'configurations' object"]),
    ([1, 2], ["a JSON object is expected"]),
    ({"configurations": {"3d_fullres": [1]}}, ["configuration '3d_fullres'", "must be an object"]),
    (_plans(inherits_from=["3d_lowres"]), ["configuration '3d_fullres'", "inherits_from must be the name", '["3d_lowres"]']),
    (_plans(inherits_from="3d_lowres"), ["configuration '3d_fullres'", "inherits from '3d_lowres'", "lacks"]),
    (_plans(patch=["a", 16, 16]), ["configuration '3d_fullres'", "patch_size must be a list of positive integers",
                                   '["a", 16, 16]']),
    (_plans(patch=32), ["patch_size must be a list", "not 32"]),
    (_plans(patch=[32, 0, 32]), ["patch_size must be a list of positive integers"]),
    (_plans(patch=[32.0, 32, 32]), ["patch_size must be a list of positive integers"]),
    (_plans(patch=None), ["patch_size must be a list", "not null"]),
])
def test_a_bad_plans_field_is_named_and_nothing_is_written(tmp_path: Path, document: Any, words: list[str]) -> None:
    code, output, out = _export(tmp_path, document)
    assert code == 1 and not out.exists(), output
    assert "nnUNetPlans.json" in output and "Traceback" not in output
    for word in words:
        assert word in output, output


def test_inheritance_in_a_circle_and_a_file_that_is_not_json(tmp_path: Path) -> None:
    circle = {"configurations": {"a": {"inherits_from": "b"}, "b": {"inherits_from": "a"}}}
    code, output, out = _export(tmp_path, circle, "-c", "a")
    assert code == 1 and "inherit in a circle: a -> b -> a" in output and not out.exists()
    plans = tmp_path / "broken.json"
    plans.write_text("{ not json")
    with pytest.raises(PlansError, match="broken.json: not a readable JSON plans file"):
        Plans.read(plans)
