"""``scnas export-nnunet GENOTYPE --plans nnUNetPlans.json --configuration 3d_fullres -o PLANS``: a copy of an
nnU-Net v2 plans file with one more configuration, inheriting from the given one, whose network is the genotype's
(``scnas_dsl.integrations.nnunet.ScnasNetwork``); train it with ``nnUNetv2_train DATASET NAME FOLD -p PLANS``
(docs/deploy.md, "Inside nnU-Net v2"). The original plans file is never written.

Exit status: 0 written, 1 a problem with the genotype or the plan (a message, no traceback), 2 a usage problem
(a missing file, an unknown configuration, a file or configuration in the way without --force).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from scnas_dsl.cli.exits import usage, user_errors
from scnas_dsl.cli.options import OPS
from scnas_dsl.errors import CompileError
from scnas_dsl.files import write_text
from scnas_dsl.folders import refuse_data_set, refuse_inputs


def _check_against_median(plans: Any, configuration: str, patch: tuple[int, ...], divisor: int) -> None:
    """A ``--patch`` larger than the configuration's median image (rounded up to what the network divides by)
    only trains on padding: refused, naming the largest that is not."""
    median = plans.resolved(configuration).get("median_image_size_in_voxels")
    if not isinstance(median, list) or len(median) != len(patch):
        return  # a plans file without it: nothing to check against
    try:
        largest = [-(-int(round(float(m))) // divisor) * divisor for m in median]
    except (TypeError, ValueError):
        return
    if any(p > m for p, m in zip(patch, largest, strict=True)):
        raise usage(f"--patch {' '.join(map(str, patch))}: larger than the images of configuration "
                    f"'{configuration}' (median {median}); a patch of at most {' '.join(map(str, largest))} "
                    f"trains on image, not padding")


def _ops_for_plan(ops: list[str] | None) -> list[str]:
    """``--ops`` as the plan records them: .py paths made absolute (nnU-Net runs from anywhere)."""
    return [str(Path(m).resolve()) if m.endswith(".py") else m for m in (ops or [])]


@user_errors
def export_nnunet_cmd(
    genotype: Path = typer.Argument(..., metavar="GENOTYPE", help="a .scn file with the genotype"),  # noqa: B008
    plans: Path = typer.Option(..., "--plans", help="nnU-Net v2 plans file (nnUNetPlans.json)"),  # noqa: B008
    configuration: str = typer.Option("3d_fullres", "--configuration", "-c",
                                      help="the configuration to inherit from (data, patch, batch size)"),
    output: Path = typer.Option(..., "-o", "--output",  # noqa: B008
                                help="the plans file to write, next to the original: nnUNetv2_train -p takes its stem"),
    name: str = typer.Option(None, "--name", help="the new configuration's name (default: CONFIGURATION_scnas)"),
    genotype_name: str = typer.Option(None, "--genotype", help="which genotype of GENOTYPE (default: the only one)"),
    stem_width: int = typer.Option(None, "--stem-width", min=1,
                                   help="stem width (default: as scnas train: the spec's for a file that defines "
                                        "its network, else the paper's retraining width)"),
    ops: list[str] = OPS,  # noqa: B008
    patch: tuple[int, int, int] = typer.Option(  # noqa: B008
        None, "--patch", help="the new configuration's own patch_size D H W (2D: H W of it); default: the one it "
                              "inherits. It must fit the network and the plan's median image size"),
    force: bool = typer.Option(False, "--force", help="replace -o, or a configuration of that name in it"),
) -> None:
    """Write -o: the plans of --plans with a configuration that trains GENOTYPE inside nnU-Net v2."""
    if not genotype.is_file():
        raise usage(f"no such genotype file: {genotype}")
    if not plans.is_file():
        raise usage(f"no such plans file: {plans} (nnU-Net writes it to nnUNet_preprocessed/DATASET/ when it "
                     "plans: nnUNetv2_plan_and_preprocess -d DATASET)")
    if output.resolve() == plans.resolve():
        raise usage(f"-o {output} is the plans file itself: write a new file next to it (e.g. nnUNetPlans_scnas.json)")
    refuse_inputs([output], [genotype, plans])  # the genotype (and what it imports) are never replaced
    refuse_data_set(output)
    if output.exists() and not force:
        raise usage(f"{output} exists: use --force to replace it")
    from scnas_dsl.integrations.nnunet_plans import Plans

    plan_file = Plans.read(plans)
    if configuration not in plan_file.configurations:
        raise usage(f"{plans} has no configuration '{configuration}'; it has: {', '.join(plan_file.names) or 'none'}")
    new_name = name or f"{configuration}_scnas"
    if new_name in plan_file.configurations and not force:
        raise usage(f"{plans} already has a configuration '{new_name}': choose another --name (or --force)")
    planned = plan_file.patch_size(configuration)
    own_patch = tuple(patch[-len(planned):]) if patch is not None else None  # a 2D configuration: H W

    from scnas_dsl.integrations.nnunet import NETWORK_CLASS, ScnasNetwork, nnunet_strides, output_levels
    from scnas_dsl.nn.plan import size_problem

    ops_list = _ops_for_plan(ops)
    net = ScnasNetwork(1, 2, str(genotype.resolve()), stem_width=stem_width, genotype_name=genotype_name,
                       ops=ops_list)
    if own_patch is not None:
        problem = size_problem(own_patch, net.plan.levels, net.plan.dims)
        if problem:
            raise usage(f"--patch {' '.join(map(str, own_patch))}: {problem}")
        _check_against_median(plan_file, configuration, own_patch, 2 ** net.plan.levels)
    else:
        problem = size_problem(planned, net.plan.levels, net.plan.dims)
        if problem:
            raise CompileError(f"configuration '{configuration}' of {plans}: its patch_size {list(planned)}: "
                               f"{problem}; give the new configuration its own with --patch")
    levels = output_levels(net)
    arch_kwargs: dict[str, Any] = {"genotype_file": str(genotype.resolve()), "stem_width": net.plan.stem_width,
                                   "genotype_name": net.genotype.name, "ops": ops_list,
                                   "strides": nnunet_strides(levels, net.plan.dims)}
    architecture = {"network_class_name": NETWORK_CLASS, "arch_kwargs": arch_kwargs, "_kw_requires_import": []}
    out_doc = plan_file.with_configuration(new_name, configuration, architecture, output.stem,
                                           patch_size=own_patch)
    patch_used = list(own_patch) if own_patch is not None else list(planned)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text(output, json.dumps(out_doc, indent=4) + "\n")
    typer.echo(f"wrote {output}: configuration '{new_name}' (inherits '{configuration}', patch {patch_used}) = genotype "
               f"{net.genotype.name}, stem width {net.plan.stem_width}, {net.plan.levels} levels, outputs at levels "
               f"{list(levels)} with deep supervision")
    typer.echo(f"train: nnUNetv2_train DATASET {new_name} FOLD -p {output.stem}")


def register(app: typer.Typer) -> None:
    app.command("export-nnunet")(export_nnunet_cmd)
