"""``scnas sample SPACE -n N -o DIR``: random genotypes of a space (the random-search baseline), optionally
matched to a genotype's FLOPs or parameters, written as ``.scn`` files that ``scnas train``/``cv`` accept.

Exit status: 0 done, 1 a problem with the space or the request (a message, no traceback), 2 a usage problem
(a missing file, contradicting options, files in the way of -o).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from scnas_dsl.cli.exits import usage, user_errors
from scnas_dsl.errors import ScnasError
from scnas_dsl.folders import refuse_data_set


def _table(samples: list[Any]) -> str:
    matched = samples[0].settings.match is not None
    rows = [("file", "GFLOPs", "params", "draws", *(["vs target"] if matched else []))]
    for s in samples:
        rows.append((f"{s.genotype.name}.scn", f"{s.flops / 1e9:,.2f}", f"{s.params:,}", str(s.draws),
                     *([f"{s.relative_difference:+.1%}"] if matched else [])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                                      enumerate(zip(r, widths, strict=True))) for r in rows)


#: the most genotypes one call draws (each is built and costed: about 10 ms apiece on a CPU)
MAX_SAMPLES = 10_000


@user_errors
def sample_cmd(
    space_file: Path = typer.Argument(..., metavar="SPACE", help="a .scn file with the space"),  # noqa: B008
    n: int = typer.Option(..., "-n", help=f"how many genotypes (at most {MAX_SAMPLES})"),
    output: Path = typer.Option(..., "-o", "--output", help="folder for the .scn files and samples.json"),  # noqa: B008
    seed: int = typer.Option(0, "--seed", help="random seed: the same seed gives the same genotypes"),
    like: Path = typer.Option(None, "--like", help="a genotype file whose FLOPs or params to match"),  # noqa: B008
    like_name: str = typer.Option(None, "--like-genotype", help="which genotype of --like (default: the only one)"),
    match: str = typer.Option(None, "--match", help="flops or params (default with --like: flops)"),
    tolerance: float = typer.Option(0.1, "--tolerance", help="relative tolerance of the match (0.1 = 10%)"),
    patch: tuple[int, int, int] = typer.Option(  # noqa: B008
        None, "--patch", help="patch size D H W for FLOPs (2D spaces use H W of it); default 128 per dimension"),
    in_channels: int = typer.Option(1, "--in-channels", min=1, help="input channels (modalities)"),
    classes: int = typer.Option(2, "--classes", min=1, help="output classes"),
    stem_width: int = typer.Option(None, "--stem-width", min=1, help="stem width (default: the space's)"),
    max_draws: int = typer.Option(None, "--max-draws", help="most genotypes to draw (default: 200 per sample)"),
    prefix: str = typer.Option("random", "--prefix", help="genotype and file names: PREFIX_000, PREFIX_001, ..."),
    allow_duplicates: bool = typer.Option(False, "--allow-duplicates", help="let two samples be the same"),
    space_name: str = typer.Option(None, "--space", help="which space of SPACE (default: the only one)"),
    force: bool = typer.Option(False, "--force", help="overwrite files of an earlier sample in -o"),
) -> None:
    """Draw N random genotypes of SPACE (uniform operation per edge, every cell with a live path), optionally
    with FLOPs or parameters within a tolerance of a --like genotype, and write them to -o DIR."""
    from scnas_dsl.loader import load
    from scnas_dsl.nn import random_genotypes as rg

    if n > MAX_SAMPLES:  # each genotype is built and costed: 1e8 of them would run silently for days
        raise usage(f"-n {n}: at most {MAX_SAMPLES:,} genotypes per call")
    for path in [space_file] + ([like] if like is not None else []):
        if not path.is_file():
            raise usage(f"{path}: no such file")
    if match is not None and like is None:
        raise usage(f"--match {match} needs --like GENOTYPE, the genotype to match")
    if match is not None and match not in ("flops", "params"):
        raise usage(f"--match {match}: choose flops or params")
    refuse_data_set(output)
    if output.exists() and not output.is_dir():
        raise usage(f"{output}: is a file; -o takes a folder")
    if n >= 1:
        planned = [output / rg.SPACE_FILE, *(output / f"{name}.scn" for name in rg.sample_names(n, prefix)),
                   output / rg.SUMMARY_FILE]
        existing = [p.name for p in planned if p.exists()]
        if existing and not force:
            more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
            raise usage(f"{output}: {', '.join(existing[:3])}{more} exist already; pass --force to overwrite "
                         "them, or choose another -o (or --prefix)")
    space = load(space_file).space(space_name)
    like_genotype = None
    if like is not None:
        like_space, like_genotype = load(like).genotype(like_name)
        if like_space.name == space.name and like_space != space:
            raise ScnasError(f"{like}: genotype '{like_genotype.name}' is of a space '{space.name}' that differs "
                             f"from the one in {space_file}; give a genotype of this very space (a search run's "
                             "genotype.scn imports its space.scn)")
    spatial = tuple(patch[-space.unet.dims:]) if patch is not None else None
    started = time.perf_counter()
    samples = rg.sample_genotypes(space, n, seed=seed, like=like_genotype, match=match,  # type: ignore[arg-type]
                                  tolerance=tolerance, patch=spatial, in_channels=in_channels, num_classes=classes,
                                  stem_width=stem_width, max_draws=max_draws, name_prefix=prefix,
                                  unique=not allow_duplicates)
    seconds = time.perf_counter() - started
    rg.write_samples(space_file, samples, output, force=force)
    s = samples[0].settings
    head = (f"{n} random genotype{'s' if n != 1 else ''} of space '{space.name}' (seed {seed}; patch "
            f"{'x'.join(map(str, s.patch))}, in_channels {s.in_channels}, classes {s.num_classes}, "
            f"stem width {s.stem_width})")
    if s.match is not None:
        head += (f", {rg.quantity(s.match)} within {s.tolerance:.0%} of '{s.like}' "
                 f"({rg.describe(s.match, s.target or 0)})")
    typer.echo(head + ":")
    typer.echo(_table(samples))
    draws = sum(x.draws for x in samples)
    typer.echo(f"wrote {output}: {n} genotype files, {rg.SPACE_FILE}, {rg.SUMMARY_FILE} "
               f"({draws} draws, {seconds:.1f} s); train one with: scnas train {output / samples[0].genotype.name}.scn "
               "--data DATA")


def register(app: typer.Typer) -> None:
    """Add ``scnas sample`` to ``app``."""
    app.command("sample")(sample_cmd)
