"""A trained run as a MONAI bundle (``scnas export RUN --format monai-bundle -o DIR``), the format MONAI's model
zoo, MONAI Label and MONAI Deploy consume::

    DIR/
      configs/metadata.json     the network's input and output (channels, patch, labels), versions
      configs/inference.json    MONAI's transforms as the run's preprocessing, its sliding windows, a NIfTI writer
      models/model.pt           the weights (a plain state_dict)
      scripts/network.py        the network as standalone PyTorch source (``scnas compile --emit torch``)
      docs/README.md            what the bundle does, how to run it, where it differs from ``scnas predict``
      .scnas-bundle             marks a folder scnas wrote (only such a folder is replaced, with --force)

The inference config takes ``dataset_dir`` (its ``imagesTs/*.nii.gz``) and ``output_dir`` as overrides, as the model
zoo's bundles do; run it from the bundle folder::

    python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
        --dataset_dir DATA --output_dir OUT

The transforms follow the run's preprocessing (``scnas_dsl/data/pipeline.py``): RAS orientation, a crop to the
non-zero region, resampling to the run's voxel size, and its intensity rule (MRI: z-score per channel over the
non-zero voxels; CT: the training set's clipping range, mean and std per channel); then the run's patch in
``SlidingWindowInferer`` with 50% overlap and Gaussian blending, softmax, the inverse of every transform back to
the image's grid, argmax, one label map per image. What differs from ``scnas predict``: MONAI's resampling (its
third-order spline in one pass, where scnas resamples thick slices out of plane with nearest neighbours as
nnU-Net does) and importance map, and no test-time mirroring.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scnas_dsl.errors import RunError
from scnas_dsl.files import write_text
from scnas_dsl.folders import folder_state, foreign_folder

MARKER = ".scnas-bundle"
#: the windows' overlap (scnas predict's and nnU-Net's)
OVERLAP = 0.5
#: how closely the bundle's network must reproduce the run's logits
TOLERANCE = 1e-4


@dataclass
class BundleResult:
    path: Path
    patch: tuple[int, ...]
    spacing: tuple[float, ...] | None
    normalization: str
    max_difference: float


def _transforms(spacing: tuple[float, ...] | None, norm: Any) -> list[dict[str, Any]]:
    """MONAI transforms that preprocess an image as the run's ``preprocess_image`` does."""
    steps: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": False},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        # scnas crops to the voxels that are not zero in any channel (MONAI's default keeps only positive ones)
        {"_target_": "CropForegroundd", "keys": "image", "source_key": "image", "select_fn": "$lambda x: x != 0",
         "margin": 0, "allow_smaller": True},
    ]
    if spacing is not None:
        steps.append({"_target_": "Spacingd", "keys": "image", "pixdim": list(spacing), "mode": 3,
                      "padding_mode": "edge"})
    if norm.scheme == "ct":
        steps += [
            {"_target_": "Lambdad", "keys": "image",
             "func": "$lambda x: torch.stack([x[c].clamp(lo, hi) for c, (lo, hi) in "
                     "enumerate(zip(@clip_lower, @clip_upper))])"},
            {"_target_": "NormalizeIntensityd", "keys": "image", "subtrahend": "@intensity_mean",
             "divisor": "@intensity_std", "channel_wise": True},
        ]
    else:
        steps.append({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True})
    steps.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"})
    return steps


def inference_config(*, in_channels: int, num_classes: int, stem_width: int, patch: tuple[int, ...],
                     spacing: tuple[float, ...] | None, norm: Any) -> dict[str, Any]:
    """The bundle's ``configs/inference.json``."""
    config: dict[str, Any] = {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, 'imagesTs', '*.nii.gz')))",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "patch_size": list(patch),
        "network_def": {"_target_": "scripts.network.Network", "in_channels": in_channels,
                        "num_classes": num_classes, "stem_width": stem_width},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": _transforms(spacing, norm)},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@patch_size", "sw_batch_size": 1,
                    "overlap": OVERLAP, "mode": "gaussian", "sigma_scale": 0.125},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "separate_folder": False, "resample": False, "output_dtype": "$numpy.uint8"},
        ]},
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
             "load_dict": {"model": "@network"}, "map_location": "@device"},
        ],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }
    if norm.scheme == "ct":
        config.update(clip_lower=list(norm.lower), clip_upper=list(norm.upper), intensity_mean=list(norm.mean),
                      intensity_std=[max(s, 1e-8) for s in norm.std])
    return config


def metadata(*, in_channels: int, num_classes: int, patch: tuple[int, ...], modalities: list[str],
             labels: dict[int, str], source: str, is_ct: bool) -> dict[str, Any]:
    """The bundle's ``configs/metadata.json`` (MONAI's schema of 2022-03-24, as the model zoo's bundles)."""
    import numpy

    from scnas_dsl import __version__

    try:
        import monai

        monai_version = monai.__version__
    except ImportError:  # the bundle is written without MONAI; it needs MONAI to run
        monai_version = "1.3.0"
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by scnas {__version__} from {source}"},
        "monai_version": monai_version,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"nibabel": _version("nibabel")},
        "name": f"scnas {Path(source).name}",
        "task": "3D segmentation",
        "description": "A network found by scnas (SCNAS, Kim et al., MICCAI 2019) and trained by scnas train",
        "authors": "scnas",
        "copyright": "the owner of the training data and run",
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "hounsfield" if is_ct else "magnitude",
                "modality": "CT" if is_ct else "MR", "num_channels": in_channels, "spatial_shape": list(patch),
                "dtype": "float32", "value_range": [], "is_patch_data": True,
                "channel_def": {str(i): m for i, m in enumerate(modalities)}}},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": num_classes,
                "spatial_shape": list(patch), "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
                "channel_def": {str(k): v for k, v in sorted(labels.items())}}},
        },
    }


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return ""


def _readme(source: str, patch: tuple[int, ...], spacing: tuple[float, ...] | None, norm: str) -> str:
    return f"""# A scnas network as a MONAI bundle

Exported by `scnas export --format monai-bundle` from {source}: the network (`scripts/network.py`, plain PyTorch
written by scnas) with its weights (`models/model.pt`), and an inference config that preprocesses as the run did
(RAS orientation, crop to the non-zero region, {'resampling to ' + ' x '.join(f'{s:g}' for s in spacing) + ' mm' if spacing else 'no resampling'},
{norm} normalisation), runs sliding windows of {' x '.join(map(str, patch))} voxels with 50% overlap and Gaussian
blending, and writes one label map per image on the image's own grid.

Run it from this folder:

    python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
        --dataset_dir DATA --output_dir OUT

Each image `DATA/imagesTs/<case>.nii.gz` gives the label map `OUT/<case>_seg.nii.gz` on the image's own grid.
Check the network against the metadata:

    python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json \\
        --config_file configs/inference.json

Where it differs from `scnas predict`: MONAI's resampling (a third-order spline in one pass, where scnas resamples
thick slices out of plane with nearest neighbours, as nnU-Net does), MONAI's Gaussian importance map, and no
test-time mirroring.
"""


def write_bundle(run: Path | str, out: Path | str, *, which: str = "last", ops: tuple[str, ...] = (),
                 force: bool = False) -> BundleResult:
    """Write the bundle of ``run`` (a ``scnas train`` run folder) to ``out``; checked: the bundle's own network
    file, with its weights, gives the run's logits on a generated patch. The folder appears whole or not at all
    (written beside it, then renamed); with ``force`` a bundle scnas wrote there before is replaced."""
    from scnas_dsl.loader import load
    from scnas_dsl.nn.codegen import emit_torch
    from scnas_dsl.ops.plugins import load_operations
    from scnas_dsl.prediction.predict import load_trained
    from scnas_dsl.training.runs import GENOTYPE, read_network

    run, out = Path(run), Path(out)
    state = folder_state(out, MARKER)
    if state == "foreign":
        raise foreign_folder(out, "a bundle scnas export wrote", "--force", "-o")
    if state == "ours" and not force:
        raise RunError(f"{out}: a bundle is there already; pass --force to replace it, or choose another -o")
    model = load_trained(run, which, ops)
    recipe = read_network(run)
    extra = load_operations(tuple(ops))
    space, genotype = load(run / GENOTYPE, signatures=extra.library.signatures).genotype()
    network = model.network.eval()
    source_code = emit_torch(space, genotype, in_channels=recipe.in_channels, num_classes=recipe.num_classes,
                             stem_width=recipe.stem_width, deep_supervision=recipe.deep_supervision,
                             library=extra.library)
    pre = model.pre
    spacing = tuple(float(s) for s in pre.spacing) if pre.spacing is not None else None
    patch = tuple(int(p) for p in model.patch)
    config = inference_config(in_channels=recipe.in_channels, num_classes=recipe.num_classes,
                              stem_width=recipe.stem_width, patch=patch, spacing=spacing, norm=pre.normalization)
    meta = metadata(in_channels=recipe.in_channels, num_classes=recipe.num_classes, patch=patch,
                    modalities=list(pre.dataset.modalities), labels=dict(pre.dataset.labels),
                    source=str(run), is_ct=pre.dataset.is_ct)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for sub in ("configs", "models", "scripts", "docs"):
            (staging / sub).mkdir()
        write_text(staging / "scripts" / "__init__.py", "")
        write_text(staging / "scripts" / "network.py", source_code)
        write_text(staging / "configs" / "inference.json", json.dumps(config, indent=2) + "\n")
        write_text(staging / "configs" / "metadata.json", json.dumps(meta, indent=2) + "\n")
        write_text(staging / "docs" / "README.md", _readme(str(run), patch, spacing, pre.normalization.scheme))
        torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, staging / "models" / "model.pt")
        difference = _check(staging, network, recipe.in_channels, recipe.num_classes, recipe.stem_width, patch)
        write_text(staging / MARKER, f"scnas export --format monai-bundle\n{run}\n")
        if out.exists():
            shutil.rmtree(out)  # ours (checked above) or an empty folder
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return BundleResult(path=out, patch=patch, spacing=spacing, normalization=pre.normalization.scheme,
                        max_difference=difference)


def _check(bundle: Path, network: torch.nn.Module, in_channels: int, num_classes: int, stem_width: int,
           patch: tuple[int, ...]) -> float:
    """The bundle's ``scripts/network.py`` with ``models/model.pt`` against the run's network on one generated
    patch: the largest absolute difference of the logits (an ExportError beyond :data:`TOLERANCE`)."""
    import importlib.util

    from scnas_dsl.deployment.export import ExportError, probe_volume

    spec = importlib.util.spec_from_file_location(f"_scnas_bundle_{os.getpid()}", bundle / "scripts" / "network.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rebuilt = module.Network(in_channels=in_channels, num_classes=num_classes, stem_width=stem_width).eval()
    rebuilt.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    x = probe_volume(in_channels, patch)  # the input every export is checked on
    with torch.no_grad():
        difference = float((rebuilt(x) - network(x)).abs().max())
    if not difference <= TOLERANCE:
        raise ExportError(f"the bundle's network gives logits {difference:.3g} away from the run's (tolerance "
                          f"{TOLERANCE:g}); please report this")
    return difference
