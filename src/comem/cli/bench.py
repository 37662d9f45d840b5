"""``comem bench KIND``: throughput benchmarks that print one JSON line per measurement.

Each benchmark is one module with ``HELP``, ``add_arguments(parser)`` and ``run(args)``; add new ones to
:data:`BENCHMARKS` (that line is the only edit this file should need).
"""

from __future__ import annotations

import argparse
from types import ModuleType

from comem.cli import bench_data, bench_plan, bench_train

NAME = "bench"

BENCHMARKS: dict[str, ModuleType] = {"data": bench_data, "plan": bench_plan, "train": bench_train}


def add_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(NAME, help="throughput benchmarks (JSON lines on stdout)")
    kinds = bench.add_subparsers(dest="benchmark", required=True)
    for name, module in BENCHMARKS.items():
        module.add_arguments(kinds.add_parser(name, help=module.HELP, description=module.HELP))


def run(args: argparse.Namespace) -> int:
    return BENCHMARKS[args.benchmark].run(args)
