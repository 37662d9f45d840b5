"""comem's clips/s as a fraction of its FLOP bound on this machine, median of repeated bench runs.

The FLOP bound is the clips/s comem would train at if its steps ran at single-clip training's
TFLOP/s; the fraction is comem's TFLOP/s over single's, each run measured back to back with
`comem bench train`'s code (float32, the bench's default memory stages). Usage:

    OMP_NUM_THREADS=1 python benchmarks/cpu_flop_bound.py --backbone tiny --batch-size 4 \
        --clip-len 8 --crop-size 64 --clips 2,4,8 --runs 3 [--grad-chunk 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import fields

from comem.diagnostics.bench import BenchSpec, run_bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--clip-len", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--clips", default="2,4,8")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--grad-chunk", type=int, default=1)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    options = dict(
        backbone=args.backbone,
        batch_size=args.batch_size,
        clip_len=args.clip_len,
        crop_size=args.crop_size,
        clips=tuple(int(n) for n in args.clips.split(",")),
        modes=("single", "comem"),
        steps=args.steps,
        warmup=1,
        workers=0,
        device="cpu",
    )
    if "grad_chunk" in {f.name for f in fields(BenchSpec)}:
        options["grad_chunk"] = args.grad_chunk
    fractions: dict[int, list[float]] = {}
    speeds: dict[int, list[float]] = {}
    for run in range(args.runs):
        report = run_bench(BenchSpec(**options))
        single = next(row for row in report.rows if row.mode == "single")
        for row in report.rows:
            if row.mode == "comem":
                fractions.setdefault(row.clips, []).append(row.achieved_tflops / single.achieved_tflops)
                speeds.setdefault(row.clips, []).append(row.speed_vs_single)
        print(
            f"run {run + 1}: " + ", ".join(f"N={n} {f[-1]:.3f}" for n, f in fractions.items()),
            file=sys.stderr,
        )
    result = {
        "options": options,
        "fraction_of_flop_bound": {n: statistics.median(f) for n, f in fractions.items()},
        "speed_vs_single": {n: statistics.median(s) for n, s in speeds.items()},
        "runs": {n: f for n, f in fractions.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
