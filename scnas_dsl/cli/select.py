"""``scnas derive`` (choose a finished search's genotype by another method) and ``scnas rank`` (score genotypes on
a search's trained supernet)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from scnas_dsl.cli.exits import user_errors
from scnas_dsl.cli.options import OPS
from scnas_dsl.training.runs import CONFIG

RUN = typer.Argument(..., help="the folder of a search (scnas search --out), finished or not")
DATA = typer.Option(None, "--data", help="the search's data set, when it has moved (default: the recorded path)")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda")
BY = typer.Option(None, "--by", help="rank by dice (mean foreground Dice, ties by loss; default) or loss")
BATCHES = typer.Option(None, "--score-batches",
                       help="fixed un-augmented batches of the architecture part per score (default: 8)")


def _settings(run: Path, **given: Any) -> Any:
    """The run's own selection settings (its config.json), overridden by the options given."""
    import json

    from pydantic import ValidationError

    from scnas_dsl.errors import RunError
    from scnas_dsl.training.config import SelectionConfig

    recorded: dict[str, Any] = {}
    try:
        recorded = dict(json.loads((run / CONFIG).read_text()).get("selection") or {})
    except (OSError, ValueError, AttributeError):
        pass  # open_search reports a missing or broken config.json with its own message
    try:
        return SelectionConfig.model_validate({**recorded, **{k: v for k, v in given.items() if v is not None}})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in err.errors())
        raise RunError(f"invalid selection settings: {problems}") from err


@user_errors
def derive_cmd(
    run: Path = RUN,  # noqa: B008
    select: str = typer.Option(..., "--select", help="alpha (the paper's), projection or sampled"),
    out: Path | None = typer.Option(  # noqa: B008
        None, "-o", "--out", help="the genotype file to write (default: RUN/genotype_<method>.scn)"),
    force: bool = typer.Option(False, "--force", help="replace an earlier derived genotype file"),
    samples: int | None = typer.Option(None, "--samples", help="sampled: random genotypes scored (default: 32)"),
    match: str | None = typer.Option(None, "--match", help="sampled: none (default) or flops (within 10% of the "
                                                          "alpha genotype's FLOPs)"),
    tune_steps: int | None = typer.Option(None, "--tune-steps",
                                          help="projection: weight steps after each edge's decision (default: 5)"),
    order: str | None = typer.Option(None, "--order", help="projection: random (seeded, default) or network"),
    draws: int | None = typer.Option(None, "--draws",
                                     help="projection: architectures drawn for the undecided edges per score "
                                          "(default: 4)"),
    check_samples: int | None = typer.Option(
        None, "--check-samples", help="self-check: random genotypes of the choice's FLOPs scored next to it "
                                      "(default: 20; 0 switches it off)"),
    by: str | None = BY, score_batches: int | None = BATCHES, data: str | None = DATA, device: str = DEVICE,
    ops: list[str] | None = OPS,
) -> None:
    """Choose the genotype of a search by another method (its own genotype.scn stays), with the self-check."""
    from scnas_dsl.training.derive_run import derive, open_search

    settings = _settings(run, method=select, samples=samples, match=match, tune_steps=tune_steps, order=order,
                         draws=draws, check_samples=check_samples, by=by, score_batches=score_batches)
    search = open_search(run, data=data, device=device, ops=tuple(ops or ()))
    selection, check, target = derive(search, settings, out, force)
    typer.echo(f"genotype: {target}")
    for line in selection.pruning:
        typer.echo(f"  {line}")
    if selection.method == "projection":
        typer.echo(f"projection: {selection.details['changed_from_alpha']} of {len(selection.details['edges'])} "
                   "edges chose another operation than alpha's largest logit")
    if check is not None:
        typer.echo(check["text"])
    from scnas_dsl.training.budgeting import budget_line

    report = budget_line(selection.details, target.name, f"selection_{selection.method}.json")
    if report:  # the search's budget, kept by every method
        typer.echo(report)
        for line in selection.details["budget"]["gave_up"]:
            typer.echo(f"  gave up: {line}")
    typer.echo(f"record: {run / f'selection_{selection.method}.json'}")


def _genotypes(paths: list[Path], ops: list[str] | None) -> list[Any]:
    from scnas_dsl.cli.options import operations
    from scnas_dsl.errors import RunError
    from scnas_dsl.loader import load

    signatures = operations(ops).library.signatures
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.scn"))
            if not found:
                raise RunError(f"{path}: a folder without .scn files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise RunError(f"{path}: no such file or folder")
    out = []
    for file in files:
        loaded = load(file, signatures=signatures)
        out += list(loaded.genotypes.values())
    if not out:
        raise RunError(f"no genotype in {', '.join(map(str, paths))}")
    names = [g.name for g in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RunError(f"genotype name(s) {', '.join(twice)} given more than once: each row of the table is "
                       "named by its genotype")
    return out


@user_errors
def rank_cmd(
    run: Path = RUN,  # noqa: B008
    genotypes: list[Path] = typer.Argument(..., help=".scn files or folders of them (e.g. scnas sample -o)"),  # noqa: B008
    out: Path | None = typer.Option(None, "-o", "--out", help="write the table as CSV (.csv) or JSON (.json)"),  # noqa: B008
    force: bool = typer.Option(False, "--force", help="replace an existing table"),
    by: str | None = BY, score_batches: int | None = BATCHES, data: str | None = DATA, device: str = DEVICE,
    ops: list[str] | None = OPS,
) -> None:
    """Score genotypes on a search's trained supernet (each fixed, inherited weights, evaluation mode, the
    architecture part's un-augmented patches): loss and Dice, best first."""
    import json

    from scnas_dsl.errors import RunError
    from scnas_dsl.files import atomic_write
    from scnas_dsl.training.derive_run import check_not_in_run, open_search, rank, rank_table_csv

    if out is not None:
        if out.suffix not in (".csv", ".json"):
            raise RunError(f"{out}: the table is written as .csv or .json")
        check_not_in_run(out, run)
        if out.exists() and not force:
            raise RunError(f"{out}: exists; give --force to replace it")
    settings = _settings(run, by=by, score_batches=score_batches)
    chosen = _genotypes(genotypes, ops)
    search = open_search(run, data=data, device=device, ops=tuple(ops or ()))
    rows = rank(search, chosen, settings)
    width = max(len(r["genotype"]) for r in rows)
    typer.echo(f"{'rank':>4}  {'genotype':<{width}}  {'loss':>8}  {'Dice':>6}")
    for r in rows:
        typer.echo(f"{r['rank']:>4}  {r['genotype']:<{width}}  {r['loss']:>8.4f}  {r['dice']:>6.4f}")
    if out is not None:
        text = rank_table_csv(rows) if out.suffix == ".csv" else json.dumps(
            {"run": str(run), "by": settings.by, "epochs_done": search.epochs_done, "rows": rows}, indent=1) + "\n"
        try:
            atomic_write(out, lambda f: f.write(text), mode="w")
        except OSError as err:
            raise RunError(f"{out}: cannot be written ({err.strerror or err})") from err
        typer.echo(f"written: {out}")


def register(app: typer.Typer) -> None:
    """Add ``derive`` and ``rank`` to ``app``."""
    app.command("derive")(derive_cmd)
    app.command("rank")(rank_cmd)
