"""Learning that can fail: on videos whose label only the order of the clips shows, comem with the
time-aware memory must learn it, and every mode that cannot see order across clips must not.

It runs ``benchmarks/learning_video.py`` (comem's model, modes and step functions on real encoded
videos, decoded once) on a small version of the built-in ``order`` task: 160 + 48 videos of 32x32
pixels, 36 frames; one event is a red square, another a blue one, the third a green one, each a
4-frame flash laid out for the run's clips (4 frames at stride 2: each event where the sampler puts
the clip of its segment, all shifted by one random amount, at least a clip apart), so no clip sees
two events or can tell its part; the label is whether red comes before blue (chance 50%).
Single-clip training and score averaging (tsn) see one clip at a time, and the order-blind memory
(``--clip-time none``) reads the clips as a set: all three stay near chance. The memory that reads
when each clip happened (``--clip-time relative``, the default) must learn it. Measured with this
set, 12 epochs, one thread per process, 2026-12-07 on 2 AVX-512 cores, seeds 0 and 1: relative
100.0% and 100.0%, none 43.8% and 33.3%, single 52.1% and 37.5%, tsn 47.9% and 43.8% (48
validation videos: one standard deviation of a coin's score is 7.2 points).

One seed of the time-aware memory is not a guarantee on 160 videos, and the videos of one
generator seed can still differ in a few files between processes (docs/learning.md section 14):
on one such set (events in the middle thirds of equal parts) seed 0 stayed at 79.2% while seeds
1 and 2 reached 100.0% and 97.9%. So when seed 0 falls short, the test trains seed 1 on the same
videos and asks the better of the two to learn; the order-blind modes get no second try.
The built-in ``distinct`` and ``parity`` sets squeeze their parts so that a clip can straddle two
of them at this size; single-clip training then learns from the straddling clips (52.1% and 56.2%,
seeds 0 and 1, on a small ``distinct`` set after 24 epochs), so counting is measured on the full
sets in docs/learning.md.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "learning_video.py"
ORDER_SET = [
    *("--task", "order", "--size", "32", "--crop", "32", "--num-frames", "36"),
    *("--clip-len", "4", "--stride", "2", "--distractors", "0"),
    *("--train-videos", "160", "--val-videos", "48", "--epochs", "12", "--seed", "0"),
]


def start(options: list[str], cache: Path) -> subprocess.Popen:
    # one thread each: the float rounding (and with it the trajectory) is then the same on any core count
    command = [sys.executable, str(SCRIPT), *ORDER_SET, *options, "--cache", str(cache)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    )


def val_top1(process: subprocess.Popen) -> float:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-2000:]
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))["val_top1"]


def test_only_the_time_aware_memory_learns_order_across_clips(tmp_path: Path) -> None:
    # two processes at a time, one per core; the first to start generates the videos, the others
    # wait on the cache's lock
    aware = start(["--mode", "comem", "--clip-time", "relative"], tmp_path)
    blind = start(["--mode", "comem", "--clip-time", "none"], tmp_path)
    top1 = {"relative": val_top1(aware), "none": val_top1(blind)}
    single, tsn = start(["--mode", "single"], tmp_path), start(["--mode", "tsn"], tmp_path)
    top1 |= {"single": val_top1(single), "tsn": val_top1(tsn)}
    blind_modes = max(top1["none"], top1["single"], top1["tsn"])
    assert blind_modes <= 72, top1  # chance (50%) plus three standard deviations of 48 videos
    if top1["relative"] < 85:  # a second training seed on the same videos (module docstring)
        top1["relative, seed 1"] = val_top1(
            start(["--mode", "comem", "--clip-time", "relative", "--seed", "1"], tmp_path)
        )
    aware_best = max(value for name, value in top1.items() if name.startswith("relative"))
    assert aware_best >= 85 and aware_best >= blind_modes + 20, top1
