"""Learning that can fail: on long-range data, whose label only the combination of clips shows,
comem with a counting memory read and a hidden gate layer must beat the single-clip and the
score-averaging (tsn) baselines by a wide margin.

It runs ``benchmarks/learning_micro.py`` (the feature-level model of the built-in ``parity`` task
that docs/learning.md's ablations use: three clips, each a noisy vector of one part's colour, label
= odd number of red parts; comem's own memory, modes and optimizer). No single clip says anything
about the label, and averaging per-clip scores cannot compare clips, so single and tsn stay at
chance (50%); the memory must carry what each clip saw to the others.
"""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "learning_micro.py"
MEMORY = ["--memory", "sigmoid", "--gate-hidden", "64"]  # the memory options that learn parity here


def val_top1(mode: str) -> float:
    command = [
        sys.executable,
        str(SCRIPT),
        "--task",
        "parity",
        "--mode",
        mode,
        *MEMORY,
        "--seed",
        "0",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))["val_top1"]


def test_comem_learns_what_only_the_whole_video_shows() -> None:
    top1 = {mode: val_top1(mode) for mode in ("comem", "single", "tsn")}
    assert top1["single"] <= 62 and top1["tsn"] <= 62, top1
    assert top1["comem"] >= 90, top1
