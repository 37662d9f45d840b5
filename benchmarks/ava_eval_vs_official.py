"""Compare ``comem eval-ava`` with the official AVA evaluator on random ground-truth/detection CSVs.

The official evaluator is not vendored: point ``--official`` at ActivityNet's ``Evaluation`` folder
at commit eba0ec90 (the v2.1/v2.2 release with ``--exclusions``; ``git clone
https://github.com/activitynet/ActivityNet && git -C ActivityNet checkout eba0ec90``). It is run
unchanged in a subprocess, with aliases for the numpy names it uses that numpy 2 removed.

    python benchmarks/ava_eval_vs_official.py --official ActivityNet/Evaluation --cases 200

With ``--slowfast PATH`` (a PySlowFast checkout) it compares ``comem eval-ava --pyslowfast`` with
PySlowFast's own ``slowfast/utils/ava_eval_helper.py`` instead (its imports of the rest of PySlowFast
are stubbed). Prints the number of cases and the largest absolute mAP difference (0.0 when identical).
"""

from __future__ import annotations

import argparse
import math
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from comem.tasks.ava.evaluation import evaluate_files

RUNNER = r"""
import contextlib, io, logging, os, sys
import numpy as np
np.bool = bool; np.float = float; np.NAN = np.nan  # removed in numpy 2; the evaluator predates that
logging.warn = logging.warning
official, labelmap, gt, det, excl = sys.argv[1:6]
sys.path[:0] = [official, os.path.join(official, "ava")]
import get_ava_performance
from ava import object_detection_evaluation
metrics = {}
evaluate = object_detection_evaluation.PascalDetectionEvaluator.evaluate
def keep(self):
    metrics.update(evaluate(self))
    return metrics
object_detection_evaluation.PascalDetectionEvaluator.evaluate = keep
with contextlib.redirect_stdout(io.StringIO()):
    get_ava_performance.run_evaluation(open(labelmap), open(gt), open(det), open(excl))
print(repr(float(metrics["PascalBoxes_Precision/mAP@0.5IOU"])))
"""


SLOWFAST_RUNNER = r"""
import importlib, sys, types
slowfast, labelmap, gt, det, excl = sys.argv[1:6]
sys.path[:0] = [slowfast, slowfast + "/slowfast/utils"]
evaluation = importlib.import_module("ava_evaluation")  # the repo's top-level ava_evaluation package
for name in ("vision", "vision.fair", "vision.fair.slowfast"):
    sys.modules[name] = types.ModuleType(name)
sys.modules["vision.fair.slowfast.ava_evaluation"] = evaluation
from ava_evaluation import object_detection_evaluation, standard_fields
evaluation.object_detection_evaluation = object_detection_evaluation
evaluation.standard_fields = standard_fields
distributed = types.ModuleType("slowfast.utils.distributed")
distributed.is_master_proc = lambda *args, **kwargs: False
env = types.ModuleType("slowfast.utils.env")
env.pathmgr = types.SimpleNamespace(open=open)
for name in ("slowfast", "slowfast.utils"):
    sys.modules[name] = types.ModuleType(name)
sys.modules.update({"slowfast.utils.distributed": distributed, "slowfast.utils.env": env})
import ava_eval_helper as helper
categories, whitelist = helper.read_labelmap(labelmap)
truth = helper.read_csv(gt, whitelist, load_score=False)
detected = helper.read_csv(det, whitelist, load_score=True)
metrics = helper.run_evaluation(categories, truth, detected, helper.read_exclusions(excl))
print(repr(float(metrics["PascalBoxes_Precision/mAP@0.5IOU"])))
"""


def random_case(rng: random.Random, folder: Path) -> list[Path]:
    """Label map with gaps, coarse boxes (exact IoU ties and 0.5s), repeated timestamps written both
    as "902" and "0902", degenerate detections, duplicates, score ties, >50 rows per keyframe."""
    ids = sorted(rng.sample(range(1, 12), rng.randint(1, 6)))
    labelmap = folder / "map.pbtxt"
    labelmap.write_text("".join(f'item {{\n  name: "c{i}"\n  id: {i}\n}}\n' for i in ids))
    grid = rng.choice([4, 8, 100])

    def box() -> list[float]:
        if rng.random() < 0.03:
            return [round(rng.random(), 3) for _ in range(4)]
        x1, x2 = sorted(rng.sample(range(grid + 1), 2))
        y1, y2 = sorted(rng.sample(range(grid + 1), 2))
        return [x1 / grid, y1 / grid, x2 / grid, y2 / grid]

    keys = [(f"v{v}", t) for v in range(rng.randint(1, 3)) for t in range(902, 902 + rng.randint(1, 5))]
    gt, det = [], []
    for video, second in keys:
        for person in range(rng.randint(0, 4)):
            b = box()
            if b[0] > b[2] or b[1] > b[3]:
                continue
            for c in rng.sample(range(1, 13), rng.randint(1, 3)):
                stamp = str(second) if rng.random() < 0.5 else f"{second:04d}"
                gt.append(f"{video},{stamp},{b[0]},{b[1]},{b[2]},{b[3]},{c},{person}")
                for _ in range(rng.randint(0, 3)):
                    moved = [min(1, max(0, x + rng.choice([-1, 0, 0, 1]) / grid)) for x in b]
                    label = c if rng.random() < 0.7 else rng.randint(1, 12)
                    det.append((video, second, moved, label))
        for _ in range(rng.randint(0, 60 if rng.random() < 0.3 else 5)):
            det.append((video, second, box(), rng.randint(1, 12)))
    digits = rng.choice([1, 2, 4, 6])
    rows = [
        f"{v},{t:04d},{b[0]},{b[1]},{b[2]},{b[3]},{c},{round(rng.random(), digits)}" for v, t, b, c in det
    ]
    rng.shuffle(rows)
    rows += rows[: len(rows) // 3] if rng.random() < 0.2 else []
    paths = [labelmap, folder / "gt.csv", folder / "det.csv", folder / "excl.csv"]
    paths[1].write_text("".join(row + "\n" for row in gt))
    paths[2].write_text("".join(row + "\n" for row in rows))
    excluded = rng.sample(keys, rng.randint(0, min(2, len(keys))))
    paths[3].write_text("".join(f"{v},{t}\n" for v, t in excluded))
    return paths


def ava_sized_case(rng: random.Random, folder: Path, labelmap: Path) -> list[Path]:
    """Like a PySlowFast result file on a real label map: every box scored for all 80 AVA classes with
    4-decimal scores (ties), so the 50-per-keyframe cap always bites."""
    gt, det, keys = [], [], []
    for video in range(3):
        for second in range(902, 902 + rng.randint(2, 8)):
            keys.append((f"vid{video}", second))
            for person in range(rng.randint(1, 3)):
                x1, y1 = rng.random() * 0.6, rng.random() * 0.6
                b = [x1, y1, x1 + 0.1 + rng.random() * 0.3, y1 + 0.1 + rng.random() * 0.3]
                box = ",".join(f"{v:.3f}" for v in b)
                for c in rng.sample(range(1, 81), rng.randint(1, 4)):
                    gt.append(f"vid{video},{second:04d},{box},{c},{person}")
                moved = ",".join(f"{v + rng.uniform(-0.05, 0.05):.3f}" for v in b)
                det += [f"vid{video},{second:04d},{moved},{c},{rng.random() ** 3:.4f}" for c in range(1, 81)]
    paths = [labelmap, folder / "gt.csv", folder / "det.csv", folder / "excl.csv"]
    paths[1].write_text("".join(row + "\n" for row in gt))
    paths[2].write_text("".join(row + "\n" for row in det))
    paths[3].write_text("".join(f"{v},{t}\n" for v, t in rng.sample(keys, 2)))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    reference = parser.add_mutually_exclusive_group(required=True)
    reference.add_argument("--official", type=Path, help="ActivityNet/Evaluation at eba0ec90")
    reference.add_argument("--slowfast", type=Path, help="a PySlowFast checkout (compares --pyslowfast)")
    parser.add_argument("--labelmap", type=Path, help="AVA-sized cases on this real label map instead")
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    expected = {"--official": "get_ava_performance.py", "--slowfast": "slowfast/utils/ava_eval_helper.py"}
    flag, folder = ("--official", args.official) if args.official else ("--slowfast", args.slowfast)
    if not (folder / expected[flag]).is_file():
        parser.error(f"{flag} {folder}: no {expected[flag]} there")
    worst, nan_cases = 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for case in range(args.cases):
            rng = random.Random(args.seed * 1_000_003 + case)
            if args.labelmap:
                paths = ava_sized_case(rng, Path(tmp), args.labelmap.resolve())
            else:
                paths = random_case(rng, Path(tmp))
            runner, folder = (RUNNER, args.official) if args.official else (SLOWFAST_RUNNER, args.slowfast)
            command = [sys.executable, "-c", runner, str(folder.resolve()), *map(str, paths)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            official = float(output.strip().splitlines()[-1])
            ours = evaluate_files(*paths, pyslowfast=args.slowfast is not None)[0].mean_ap
            if math.isnan(official) or math.isnan(ours):
                nan_cases += 1
                if not (math.isnan(official) and math.isnan(ours)):
                    print(f"case {case}: reference {official} vs comem {ours}")
                    worst = math.inf
                continue
            if official != ours:
                print(f"case {case}: reference {official!r} vs comem {ours!r}")
            worst = max(worst, abs(official - ours))
    print(f"cases {args.cases} (no ground truth in {nan_cases}), max |reference - comem| mAP = {worst!r}")


if __name__ == "__main__":
    main()
