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


def resolved_configuration(configurations: dict[str, Any], name: str) -> dict[str, Any]:
    """The configuration ``name`` with what it inherits (``inherits_from``) filled in, as nnU-Net resolves it."""
    seen: list[str] = []
    chain: list[dict[str, Any]] = []
    while name is not None:
        if name in seen:
            raise usage(f"configurations inherit in a circle: {' -> '.join([*seen, name])}")
        seen.append(name)
        chain.append(configurations[name])
        name = configurations[name].get("inherits_from")
        if name is not None and name not in configurations:
            raise usage(f"configuration '{seen[-1]}' inherits from '{name}', which the plans file lacks")
    merged: dict[str, Any] = {}
    for config in reversed(chain):
        merged.update(config)
    return merged


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
    try:
        document = json.loads(plans.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise usage(f"{plans}: not a readable JSON plans file ({err})") from None
    configurations = document.get("configurations") if isinstance(document, dict) else None
    if not isinstance(configurations, dict):
        raise usage(f"{plans}: not an nnU-Net v2 plans file (no 'configurations')")
    if configuration not in configurations:
        raise usage(f"{plans} has no configuration '{configuration}'; it has: {', '.join(configurations) or 'none'}")
    new_name = name or f"{configuration}_scnas"
    if new_name in configurations and not force:
        raise usage(f"{plans} already has a configuration '{new_name}': choose another --name (or --force)")
    base = resolved_configuration(configurations, configuration)

    from scnas_dsl.integrations.nnunet import NETWORK_CLASS, ScnasNetwork, nnunet_strides, output_levels
    from scnas_dsl.nn.plan import size_problem

    ops_list = _ops_for_plan(ops)
    net = ScnasNetwork(1, 2, str(genotype.resolve()), stem_width=stem_width, genotype_name=genotype_name,
                       ops=ops_list)
    patch = [int(s) for s in base.get("patch_size", [])]
    problem = size_problem(tuple(patch), net.plan.levels, net.plan.dims)
    if problem:
        raise CompileError(f"configuration '{configuration}' of {plans}: its patch_size: {problem}; "
                           "set the new configuration's patch_size in -o to one that is")
    levels = output_levels(net)
    arch_kwargs: dict[str, Any] = {"genotype_file": str(genotype.resolve()), "stem_width": net.plan.stem_width,
                                   "genotype_name": net.genotype.name, "ops": ops_list,
                                   "strides": nnunet_strides(levels, net.plan.dims)}
    out_doc = dict(document)
    out_doc["plans_name"] = output.stem
    out_doc["configurations"] = {**configurations, new_name: {
        "inherits_from": configuration,
        "architecture": {"network_class_name": NETWORK_CLASS, "arch_kwargs": arch_kwargs, "_kw_requires_import": []},
    }}
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text(output, json.dumps(out_doc, indent=4) + "\n")
    typer.echo(f"wrote {output}: configuration '{new_name}' (inherits '{configuration}', patch {patch}) = genotype "
               f"{net.genotype.name}, stem width {net.plan.stem_width}, {net.plan.levels} levels, outputs at levels "
               f"{list(levels)} with deep supervision")
    typer.echo(f"train: nnUNetv2_train DATASET {new_name} FOLD -p {output.stem}")


def register(app: typer.Typer) -> None:
    app.command("export-nnunet")(export_nnunet_cmd)
