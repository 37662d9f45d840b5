"""How long the ``comem`` command takes to print its help, and whether that imports torch.

Runs ``comem --help`` and ``comem train -h`` (as ``python -m comem``, the current interpreter) five times
each and prints the median wall time of each, then checks ``python -X importtime -m comem --help`` for
torch, torchvision and scikit-learn among the modules it imported.

    PYTHONPATH=src python benchmarks/cli_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "torchvision", "sklearn")


def wall_times(argv: list[str], runs: int) -> list[float]:
    """Seconds of wall time of each of ``runs`` runs of ``python -m comem ARGV``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "comem", *argv], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def imported_heavy(argv: list[str]) -> list[str]:
    """The top-level packages among :data:`HEAVY` that ``python -X importtime -m comem ARGV`` imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "comem", *argv],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    names = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    return [name for name in HEAVY if name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for argv in (["--help"], ["train", "-h"]):
        times = wall_times(argv, args.runs)
        print(
            f"comem {' '.join(argv)}: median {statistics.median(times):.2f} s of {args.runs} "
            f"(min {min(times):.2f}, max {max(times):.2f})"
        )
    heavy = imported_heavy(["--help"])
    print(f"comem --help imports: {', '.join(heavy) if heavy else 'none of ' + ', '.join(HEAVY)}")


if __name__ == "__main__":
    main()
