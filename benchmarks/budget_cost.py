"""What a budget costs the search: the cost model's time on the CPU for a space (default: the paper's, at the
search's 128^3 patch, batch 4, stem width 48). Run by hand; results in docs/benchmarks.md ("Search under a budget").

Measured, each the median of ``--repeats``:

* ``check``: the impossible-budget check at the start for a budget of 75% of a random genotype's FLOPs (it stops at
  the first genotype within the budget);
* ``cheapest``: the cheapest genotype found by all four descents (the check's worst case: a budget just above it,
  or one below it);
* ``exact``: one exact count of a genotype (``scnas compile``'s, on the meta device): what a new most likely
  genotype costs in an architecture step;
* ``expected``: the expected cost and the penalty's backward in a step whose most likely genotype is cached (the
  usual step);
* ``table``: the operations' costs at a new genotype's widths.

``--self-check``: also the self-check's draws of 20 random genotypes within 10% of the FLOPs of the cheapest genotype
(rare in any space), once as ``scnas sample --match`` draws (all 4000 draws) and once stopping when hopeless, as
the self-check does.

    .venv/bin/python benchmarks/budget_cost.py
    .venv/bin/python benchmarks/budget_cost.py --spec specs/unet4cell.scn --patch 96 96 96 --batch 2
    .venv/bin/python benchmarks/budget_cost.py --spec demo --patch 16 16 16 --batch 2 --width 8 --repeats 1

Then the cheapest parameters, FLOPs and memory found in the space (all four descents).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default=str(ROOT / "specs" / "unet4cell.scn"))
    p.add_argument("--patch", type=int, nargs="+", default=[128, 128, 128])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--width", type=int, default=48)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--self-check", action="store_true", help="also time the self-check's draws (minutes)")
    args = p.parse_args()

    import torch

    from scnas_dsl.loader import load
    from scnas_dsl.nn.budget import CostModel, check_reachable, penalty
    from scnas_dsl.nn.random_genotypes import draw_genotypes

    if args.spec == "demo":  # the demo's space (scnas demo), stem width 8 unless --width says otherwise
        from scnas_dsl.loader import load_text
        from scnas_dsl.studies.demo import small_space

        space = load_text(small_space("demo", stem_width=args.width)).space()
    else:
        space = load(args.spec).space()

    def model() -> CostModel:
        return CostModel(space, patch=tuple(args.patch), batch_size=args.batch, in_channels=4, num_classes=4,
                         stem_width=args.width)

    def timed(fn) -> float:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    times: dict[str, list[float]] = {"check": [], "cheapest": [], "exact": [], "table": [], "expected": []}
    stream = draw_genotypes(space, seed=12345)  # not the descents' starting genotypes (seed 0)
    for r in range(args.repeats):
        costs = model()
        genotype = next(stream)
        limit = 0.75 * model().exact(genotype)["flops"]
        times["check"].append(timed(lambda costs=costs, limit=limit: check_reachable(costs, {"flops": limit}, "--budget")))
        times["cheapest"].append(timed(lambda limit=limit: model().cheapest({"flops": limit})))
        times["exact"].append(timed(lambda costs=costs, genotype=genotype: costs.exact(genotype)))
        times["table"].append(timed(lambda costs=costs, genotype=genotype: costs.tables(genotype)))
        generator = torch.Generator().manual_seed(r)
        alphas = {k: (1e-3 * torch.randn(len(costs.edges[k]), len(costs.op_names[k]), generator=generator))
                  .requires_grad_() for k in costs.keys}
        costs.expected(alphas)  # the most likely genotype counted once

        def step(costs: CostModel = costs, alphas: dict[str, torch.Tensor] = alphas) -> None:
            expected, _ = costs.expected(alphas)
            penalty(expected, {"flops": 0.5 * float(expected["flops"].detach())}, 1.0).backward()

        times["expected"].append(timed(step))
    print(f"{Path(args.spec).name}, patch {args.patch}, batch {args.batch}, width {args.width}, "
          f"median of {args.repeats} (torch {torch.__version__}, {torch.get_num_threads()} threads):")
    for name, values in times.items():
        print(f"  {name:9s} {statistics.median(values):8.3f} s")
    print(f"  expected / exact: {statistics.median(times['expected']) / statistics.median(times['exact']):.3f}")
    for metric in ("params", "flops", "memory"):  # what the impossible-budget check calls the cheapest
        found = model().cheapest({metric: 1.0})
        print(f"  cheapest {metric} found: {found.costs[metric]:,.0f} ({len(found.gave_up)} changes)")
    if args.self_check:
        _self_check(space, model(), args)


def _self_check(space, costs, args) -> None:  # type: ignore[no-untyped-def]
    """The self-check's FLOPs-matched draws for the cheapest genotype, without and with the early stop."""
    from scnas_dsl.nn.random_genotypes import SamplingError, sample_genotypes

    cheapest = costs.cheapest({"flops": 1.0}).genotype
    for early in (False, True):
        started = time.perf_counter()
        try:
            sample_genotypes(space, 20, like=cheapest, match="flops", patch=tuple(args.patch), in_channels=4,
                             num_classes=4, stem_width=args.width, seed=1, give_up_early=early)
            outcome = "found 20"
        except SamplingError as err:
            outcome = str(err).split(" with ")[0]
        print(f"  self-check draws, {'stopping when hopeless' if early else 'all draws':22s} "
              f"{time.perf_counter() - started:8.1f} s ({outcome})")


if __name__ == "__main__":
    main()
