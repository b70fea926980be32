"""Peak memory and time of preprocessing one large CT-like case (issue 11), each run in a fresh process.

Run by hand: ``.venv/bin/python benchmarks/large_ct.py [--shape 512 512 200] [--spacing 0.7 0.7 0.7]
[--old-source DIR] [--repeat 1]``. Generates one case of the ``lung`` task (CT, 0.8 x 0.8 x 2.5 mm, like MSD
Task06) with ``scnas data synth``'s generator in a temporary folder, then preprocesses it to the paper's 0.7 mm
in a fresh Python process and reports that process's peak resident memory (``VmHWM`` of ``/proc/self/status``,
the whole process: interpreter, numpy, torch), the same minus what the process held before preprocessing (after
its imports), and the wall time, against the size of the resampled float32 volume. The bound of issue 11 is
a peak of at most 3 x that size.

``--old-source DIR`` runs the same in a second fresh process with the scnas package found in ``DIR`` (for
example ``git archive <commit> scnas_dsl | tar -x -C DIR``), for a before/after comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from scnas_dsl.data.preprocess import preprocess_dataset
import scnas_dsl.data.preprocess as pp
try:
    import torch  # imported by the new resampler: counted in the baseline, not in the preprocessing
except ImportError:
    pass

def status(key):  # kB -> bytes; VmHWM is this process's own peak (ru_maxrss would carry the parent's over exec)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

root, out, spacing = sys.argv[1], sys.argv[2], [float(s) for s in sys.argv[3:6]]
before = status("VmHWM")
start = time.perf_counter()
pre = preprocess_dataset(root, out=Path(out), spacing=spacing, progress=False)
seconds = time.perf_counter() - start
peak = status("VmHWM")
case = pre.case_ids[0]
shape = list(pre.meta(case).shape)
print(json.dumps({"seconds": seconds, "peak": peak, "baseline": before, "shape": shape,
                  "spacing": list(pre.meta(case).spacing), "version": pp.PIPELINE_VERSION}))
"""


def _run(root: Path, out: Path, spacing: list[float], source: Path | None) -> dict:
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    args = [str(root), str(out), *map(str, spacing)]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], env=env, capture_output=True, text=True, check=False,
        cwd=out.parent,  # not the repository: `-c` puts the working folder first on sys.path
    )
    if done.returncode != 0:
        raise SystemExit(f"preprocessing failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 200])
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.7, 0.7, 0.7])
    parser.add_argument("--old-source", type=Path, default=None, help="folder holding an older scnas_dsl")
    parser.add_argument("--repeat", type=int, default=1, help="fresh runs of each; the best time is kept")
    parser.add_argument("--keep", type=Path, default=None, help="generate into (or reuse) this folder")
    args = parser.parse_args()

    from scnas_dsl.data.synth import synthesize

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep if args.keep is not None else Path(tmp) / "lung"
        if not (root / "dataset.json").exists():
            start = time.perf_counter()
            synthesize(root, task="lung", cases=1, shape=args.shape, seed=0)
            print(f"generated {'x'.join(map(str, args.shape))} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        runs: dict[str, dict] = {}
        for name, source in [("new", None), ("old", args.old_source)]:
            if name == "old" and source is None:
                continue
            for r in range(args.repeat):
                result = _run(root, Path(tmp) / f"pre-{name}-{r}", args.spacing, source)
                if name not in runs or result["seconds"] < runs[name]["seconds"]:
                    runs[name] = result

    shape = runs["new"]["shape"]
    volume = 4 * shape[0] * shape[1] * shape[2]
    gib = 1024**3
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end; one lung-like CT case of {'x'.join(map(str, args.shape))} "
        f"voxels at 0.8 x 0.8 x 2.5 mm -> {' x '.join(f'{s:g}' for s in args.spacing)} mm: "
        f"{'x'.join(map(str, shape))} voxels, float32 volume {volume / gib:.2f} GiB"
    )
    print()
    print("| pipeline | wall time | peak RSS | peak / volume | peak above baseline / volume |")
    print("| --- | --- | --- | --- | --- |")
    for name, run in runs.items():
        print(
            f"| {name} (version {run['version']}) | {run['seconds']:.1f} s | {run['peak'] / gib:.2f} GiB | "
            f"{run['peak'] / volume:.2f} | {(run['peak'] - run['baseline']) / volume:.2f} |"
        )
    if "old" in runs:
        print(f"\ntime old / new: {runs['old']['seconds'] / runs['new']['seconds']:.2f}")


if __name__ == "__main__":
    main()
