"""Learning that can fail: on long-range videos, whose label only the combination of clips shows,
comem must beat the single-clip and the score-averaging (tsn) baselines by a wide margin.

It runs ``benchmarks/learning_video.py`` (comem's model, modes and step functions on real encoded
videos, decoded once) on a small version of the built-in ``distinct`` task: 160 + 48 videos of
32x32 pixels, three parts of 8 frames, each part with one coloured square; the label is how many
different colours the video shows. One clip sees one part, so a single clip says nothing about the
label, and averaging per-clip scores cannot compare clips: single and tsn stay near chance (33%).
The memory must carry what each clip saw to the others. Measured with the defaults (memories after
every stage, the plain two-pass gradient, the time-aware read), 12 epochs, seed 0, one thread per
process: comem 64.6%, single 29.2% (2026-12-06; the order-blind read, ``--clip-time none``: 75.0%).

The second test asks the same of time: on a small ``order`` set (red before blue or after, events
far enough apart that no clip sees two), the memory that reads the clips' times must beat the
order-blind one (``--clip-time none``), which cannot tell the classes apart. Measured with this set,
12 epochs, seed 0 (2026-12-06): relative 100.0% alone on the cores, none 58.3% (at most 64.6% at any
epoch; docs/learning.md, section 14). With other test processes beside it the relative run ended at
81.2% and 60.4% in two of six runs (none: 58.3% and 45.8%), a variation whose cause is not yet found,
so the test asks for a clear margin rather than the 100%.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "learning_video.py"
SMALL_SET = [
    *("--task", "distinct", "--size", "32", "--crop", "32", "--num-frames", "24"),
    *("--clip-len", "4", "--stride", "2", "--distractors", "0"),
    *("--train-videos", "160", "--val-videos", "48", "--epochs", "12", "--seed", "0"),
]


ORDER_SET = [
    *("--task", "order", "--size", "32", "--crop", "32", "--num-frames", "36"),
    *("--clip-len", "4", "--stride", "2", "--distractors", "0"),
    *("--train-videos", "160", "--val-videos", "48", "--epochs", "12", "--seed", "0"),
]


def start(mode: str, cache: Path, options: list[str] = SMALL_SET) -> subprocess.Popen:
    # one thread each: the float rounding (and with it the trajectory) is then the same on any core count
    command = [sys.executable, str(SCRIPT), *options, "--mode", mode, "--cache", str(cache)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    )


def val_top1(process: subprocess.Popen) -> float:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-2000:]
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))["val_top1"]


def test_comem_learns_what_only_the_whole_video_shows(tmp_path: Path) -> None:
    # one core for comem, the other for the two cheaper baselines one after the other (the first
    # process to start generates the videos; the others wait on the cache's lock)
    comem = start("comem", tmp_path)
    top1 = {"single": val_top1(start("single", tmp_path)), "tsn": val_top1(start("tsn", tmp_path))}
    top1["comem"] = val_top1(comem)
    assert top1["single"] <= 45 and top1["tsn"] <= 45, top1
    assert top1["comem"] >= 60 and top1["comem"] >= max(top1["single"], top1["tsn"]) + 20, top1


def test_the_memory_learns_order_from_the_clips_times(tmp_path: Path) -> None:
    # one core each; the first process generates the videos, the other waits on the cache's lock
    aware = start("comem", tmp_path, [*ORDER_SET, "--clip-time", "relative"])
    blind = start("comem", tmp_path, [*ORDER_SET, "--clip-time", "none"])
    top1 = {"none": val_top1(blind), "relative": val_top1(aware)}
    assert top1["none"] <= 65, top1
    assert top1["relative"] >= 60 and top1["relative"] >= top1["none"] + 10, top1
