"""The AVA frame-mAP evaluator against hand-worked cases, one per rule of the official evaluator.

Every expected number below is worked out by hand in the comment above it. Boxes in CSV rows are
``x1,y1,x2,y2``; halves and quarters keep IoUs exact in binary floating point.
"""

import math
import random
from pathlib import Path

import numpy as np
import pytest

from comem.cli import main
from comem.tasks.ava.evaluation import (
    AvaFormatError,
    evaluate_files,
    image_key,
    iou_matrix,
    read_boxes_csv,
    read_labelmap,
    voc_average_precision,
)

LABELMAP = """item {
  name: "stand"
  id: 1
}
item {
  name: "sit"
  id: 2
}
item {
  name: "talk to (e.g., self, a person, a group)"
  id: 3
}
"""
FULL = "0.0,0.0,1.0,1.0"  # the whole frame
LEFT = "0.0,0.0,0.5,1.0"  # left half: IoU with FULL is exactly 0.5
RIGHT = "0.5,0.0,1.0,1.0"
EDGE = "0.75,0.0,1.0,1.0"  # right quarter: IoU 0.25 with FULL, 0 with LEFT


def write(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(row + "\n" for row in rows))
    return path


def run_eval(tmp_path: Path, gt: list[str], det: list[str], exclusions: list[str] | None = None, *,
             labelmap: str = LABELMAP, capacity: int = 50):  # fmt: skip
    excl = write(tmp_path / "excl.csv", exclusions) if exclusions is not None else None
    result, _ = evaluate_files(
        write(tmp_path / "map.pbtxt", [labelmap]),
        write(tmp_path / "gt.csv", gt),
        write(tmp_path / "det.csv", det),
        excl,
        capacity=capacity,
    )
    return result


def test_perfect_detections_give_map_one(tmp_path: Path) -> None:
    gt = [f"vid,0902,{FULL},1,0", f"vid,0902,{LEFT},2,1", f"vid,0903,{RIGHT},1,0"]
    det = [f"vid,0902,{FULL},1,0.9", f"vid,0902,{LEFT},2,0.8", f"vid,0903,{RIGHT},1,0.7"]
    result = run_eval(tmp_path, gt, det)
    assert result.mean_ap == 1.0
    assert result.per_class[1] == 1.0 and result.per_class[2] == 1.0
    assert math.isnan(result.per_class[3])  # no ground truth: NaN, left out of the mean


def test_iou_exactly_half_is_a_match_and_just_below_is_not(tmp_path: Path) -> None:
    assert iou_matrix(np.array([[0.0, 0.0, 1.0, 0.5]]), np.array([[0.0, 0.0, 1.0, 1.0]]))[0, 0] == 0.5
    # IoU 0.5 >= 0.5: a hit.
    assert run_eval(tmp_path, [f"v,0902,{FULL},1,0"], [f"v,0902,{LEFT},1,0.5"]).mean_ap == 1.0
    # Quarter-width boxes inside a half-width box: 0.25/0.5 = 0.5 exactly, also a hit.
    half = run_eval(tmp_path, ["v,0902,0.25,0.0,0.75,1.0,1"], ["v,0902,0.25,0.0,0.5,1.0,1,0.9"])
    assert half.mean_ap == 1.0
    # IoU 0.4999: a miss; the only ground truth is never found, AP 0.
    assert run_eval(tmp_path, [f"v,0902,{FULL},1,0"], ["v,0902,0.0,0.0,0.4999,1.0,1,0.9"]).mean_ap == 0.0


def test_duplicate_detection_is_a_false_positive(tmp_path: Path) -> None:
    # Frame 0902: two detections of the same box (0.9 hit, 0.8 duplicate: miss); frame 0903: 0.7 hit.
    # Ranked: hit, miss, hit over 2 ground truths: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # Envelope at recall 1/2 is 1, at recall 1 it is 2/3: AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    gt = [f"v,0902,{FULL},1,0", f"v,0903,{FULL},1,0"]
    det = [f"v,0902,{FULL},1,0.9", f"v,0902,{FULL},1,0.8", f"v,0903,{FULL},1,0.7"]
    assert run_eval(tmp_path, gt, det).mean_ap == pytest.approx(5 / 6, abs=1e-12)


def test_detection_whose_best_box_is_taken_is_a_miss_even_if_another_box_fits(tmp_path: Path) -> None:
    # Ground truths A = [0, 0.5] and B = [0.25, 1] (x ranges, full height).
    # D1 = A (0.9): best A, IoU 1: hit. D2 = [0, 0.625] (0.8): IoU with A = 0.5/0.625 = 0.8,
    # with B = 0.375/1 = 0.375... make B overlap D2 >= 0.5 too: B = [0.125, 0.75]: IoU(D2, B) =
    # 0.5/0.75 = 2/3 < IoU(D2, A) = 0.8, so D2 looks only at A, which is taken: a miss.
    # Ranked: hit, miss over 2 ground truths: AP = 1/2 * 1 = 0.5 (a one-to-one assignment would give 1).
    gt = ["v,0902,0.0,0.0,0.5,1.0,1", "v,0902,0.125,0.0,0.75,1.0,1"]
    det = ["v,0902,0.0,0.0,0.5,1.0,1,0.9", "v,0902,0.0,0.0,0.625,1.0,1,0.8"]
    assert run_eval(tmp_path, gt, det).mean_ap == 0.5


def test_equal_iou_goes_to_the_first_ground_truth_box(tmp_path: Path) -> None:
    # D = [0.25, 0.75] has IoU 1/3 with both A = [0, 0.5] and B = [0.5, 1]: below 0.5, both missed.
    # D' = [0.125, 0.625] overlaps A by 0.375 (union 0.625: IoU 0.6) and B by 0.125: hits A.
    gt = ["v,0902,0.0,0.0,0.5,1.0,1", "v,0902,0.5,0.0,1.0,1.0,1"]
    det = ["v,0902,0.125,0.0,0.625,1.0,1,0.9", "v,0902,0.0,0.0,0.5,1.0,1,0.8"]
    # Both detections look at A: hit then miss; recall 1/2 at precision 1: AP 0.5.
    assert run_eval(tmp_path, gt, det).mean_ap == 0.5


def test_detections_of_a_frame_are_matched_by_descending_score_not_file_order(tmp_path: Path) -> None:
    # File order: 0.3 (IoU 1) before 0.8 (IoU 0.5). Matched by score: 0.8 takes the box, 0.3 misses.
    # Ranked: hit, miss over 1 ground truth: AP 1. In file order it would be 0.3 hit, 0.8 miss: AP 0.5.
    det = [f"v,0902,{FULL},1,0.3", f"v,0902,{LEFT},1,0.8"]
    assert run_eval(tmp_path, [f"v,0902,{FULL},1,0"], det).mean_ap == 1.0
    # PySlowFast's in-training reader keeps file order: 0.3 takes the box, 0.8 misses. Ranked: miss
    # (0.8), hit (0.3): precision 1/2 at recall 1: AP 0.5.
    write(tmp_path / "map.pbtxt", [LABELMAP])
    write(tmp_path / "gt.csv", [f"v,0902,{FULL},1,0"])
    write(tmp_path / "det.csv", det)
    files = (tmp_path / "map.pbtxt", tmp_path / "gt.csv", tmp_path / "det.csv")
    assert evaluate_files(*files, pyslowfast=True)[0].mean_ap == 0.5


def test_classes_without_ground_truth_are_nan_and_classes_without_detections_zero(tmp_path: Path) -> None:
    # Class 1: found (AP 1). Class 2: has ground truth, no detection (AP 0). Class 3: detections but no
    # ground truth (NaN, not in the mean). mAP = (1 + 0) / 2.
    gt = [f"v,0902,{FULL},1,0", f"v,0902,{LEFT},2,0"]
    det = [f"v,0902,{FULL},1,0.9", f"v,0902,{FULL},3,0.95"]
    result = run_eval(tmp_path, gt, det)
    assert result.per_class[1] == 1.0 and result.per_class[2] == 0.0 and math.isnan(result.per_class[3])
    assert result.mean_ap == 0.5


def test_no_ground_truth_at_all_gives_nan(tmp_path: Path) -> None:
    assert math.isnan(run_eval(tmp_path, [f"v,0902,{FULL},7,0"], [f"v,0902,{FULL},1,0.9"]).mean_ap)


def test_excluded_keys_drop_ground_truth_and_detections(tmp_path: Path) -> None:
    # Frame 0903 holds a missed ground truth and a confident false positive; excluding it leaves
    # frame 0902 only, found perfectly. Not excluded: ranked miss(0.99), hit(0.9) over 2: precision
    # 0, 1/2 at recall 0, 1/2: AP = 1/2 * 1/2 = 0.25.
    gt = [f"v,0902,{FULL},1,0", f"v,0903,{FULL},1,0"]
    det = [f"v,0902,{FULL},1,0.9", f"v,0903,{EDGE},1,0.99"]
    assert run_eval(tmp_path, gt, det).mean_ap == 0.25
    assert run_eval(tmp_path, gt, det, ["v,0903"]).mean_ap == 1.0
    assert run_eval(tmp_path, gt, det, ["v,903"]).mean_ap == 1.0  # keys are "%04d" of int(timestamp)
    assert run_eval(tmp_path, gt, det, ["w,0903"]).mean_ap == 0.25


def test_detections_on_frames_without_ground_truth_are_false_positives(tmp_path: Path) -> None:
    # 0.95 on frame 0904 (no ground truth: miss) ranks above the 0.9 hit: AP = 1 * 1/2 = 0.5.
    det = [f"v,0902,{FULL},1,0.9", f"v,0904,{FULL},1,0.95"]
    assert run_eval(tmp_path, [f"v,0902,{FULL},1,0"], det).mean_ap == 0.5


def test_only_label_map_classes_count(tmp_path: Path) -> None:
    # Class 9 is not in the label map: its missed ground truth and its detections are ignored.
    # Ids need not be contiguous: with ids {1, 3}, class 2's ground truth is dropped too.
    labelmap = 'item {\n  name: "a"\n  id: 1\n}\nitem {\n  name: "c"\n  id: 3\n}\n'
    gt = [f"v,0902,{FULL},1,0", f"v,0902,{FULL},9,0", f"v,0902,{FULL},2,0"]
    det = [f"v,0902,{FULL},1,0.9", f"v,0902,{RIGHT},9,0.99"]
    result = run_eval(tmp_path, gt, det, labelmap=labelmap)
    assert result.mean_ap == 1.0 and set(result.per_class) == {1, 3}


def test_timestamps_key_as_int_and_video_id_verbatim(tmp_path: Path) -> None:
    assert image_key("abc", "902") == "abc,0902" == image_key("abc", "0902")
    # Ground truth at "902", detection at "0902": the same keyframe.
    assert run_eval(tmp_path, [f"v,902,{FULL},1,0"], [f"v,0902,{FULL},1,0.9"]).mean_ap == 1.0


def test_person_id_column_and_missing_score(tmp_path: Path) -> None:
    # Ground truth has the 8th column person_id (read as a score, unused); detections without a score
    # count 1.0 and are ordered after higher scores.
    frames = read_boxes_csv(write(tmp_path / "d.csv", [f"v,0902,{FULL},1", f"v,0902,{LEFT},1,0.5"]), None)
    assert frames["v,0902"].scores == [1.0, 0.5]
    assert frames["v,0902"].boxes[0] == [0.0, 0.0, 1.0, 1.0]
    left = read_boxes_csv(write(tmp_path / "l.csv", ["v,0902,0.1,0.2,0.3,0.4,1"]), None)["v,0902"].boxes
    assert left == [[0.2, 0.1, 0.4, 0.3]]  # stored y1, x1, y2, x2


def test_degenerate_detections_are_discarded(tmp_path: Path) -> None:
    # A zero-width 0.99 detection is dropped (not a false positive): AP stays 1.
    det = ["v,0902,0.5,0.0,0.5,1.0,1,0.99", f"v,0902,{FULL},1,0.9"]
    assert run_eval(tmp_path, [f"v,0902,{FULL},1,0"], det).mean_ap == 1.0


def test_at_most_fifty_detections_per_frame_by_score(tmp_path: Path) -> None:
    # 50 misses at 0.9 (class 2 on a frame whose class-2 box is elsewhere) and the one hit at 0.1:
    # the cap keeps the 50 highest, the hit is dropped and class 1 gets AP 0. Without the cap the hit
    # ranks alone in class 1: AP 1. Class 2: 50 misses then nothing: AP 0 either way.
    gt = [f"v,0902,{FULL},1,0", f"v,0902,{LEFT},2,0"]
    det = [f"v,0902,{RIGHT},2,0.9"] * 50 + [f"v,0902,{FULL},1,0.1"]
    assert run_eval(tmp_path, gt, det).per_class[1] == 0.0
    assert run_eval(tmp_path, gt, det, capacity=0).per_class[1] == 1.0
    files = (tmp_path / "map.pbtxt", tmp_path / "gt.csv", tmp_path / "det.csv")
    assert evaluate_files(*files, pyslowfast=True)[0].per_class[1] == 1.0  # PySlowFast: no cap
    # A 51st row of an equal score does not replace the heap's smallest (strictly higher only).
    det = [f"v,0902,{RIGHT},2,0.5"] * 50 + [f"v,0902,{FULL},1,0.5"]
    assert run_eval(tmp_path, gt, det).per_class[1] == 0.0
    det = [f"v,0902,{RIGHT},2,0.5"] * 50 + [f"v,0902,{FULL},1,0.51"]
    assert run_eval(tmp_path, gt, det).per_class[1] == 1.0


def test_voc_all_point_average_precision() -> None:
    # Ranked hits: 1 0 1 0 1 over 4 ground truths. Precision 1, 1/2, 2/3, 1/2, 3/5 at recall
    # 1/4, 1/4, 1/2, 1/2, 3/4. Envelope: 1 at 1/4, 2/3 at 1/2, 3/5 at 3/4, 0 beyond.
    # AP = 1/4 (1 + 2/3 + 3/5) = 17/30.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    hits = np.array([True, False, True, False, True])
    assert voc_average_precision(scores, hits, 4) == pytest.approx(17 / 30, abs=1e-15)
    assert voc_average_precision(scores[::-1].copy(), hits[::-1].copy(), 4) == pytest.approx(17 / 30)
    assert voc_average_precision(np.zeros(0), np.zeros(0, dtype=bool), 3) == 0.0
    assert math.isnan(voc_average_precision(scores, np.zeros(5, dtype=bool), 0))


def test_labelmap_formats(tmp_path: Path) -> None:
    v22 = 'label {\n  name: "bend/bow (at the waist)"\n  label_id: 1\n  label_type: PERSON_MOVEMENT\n}\n'
    categories = read_labelmap(write(tmp_path / "v22.pbtxt", [v22]))
    assert [(c.id, c.name) for c in categories] == [(1, "bend/bow (at the waist)")]
    with pytest.raises(AvaFormatError, match="no classes"):
        read_labelmap(write(tmp_path / "empty.pbtxt", ["item {", "}"]))


def test_bad_rows_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(AvaFormatError, match=r"d\.csv:2: expected 7 or 8 columns"):
        read_boxes_csv(write(tmp_path / "d.csv", [f"v,0902,{FULL},1", "v,0902,0.1,0.2"]), None)
    with pytest.raises(AvaFormatError, match=r"e\.csv:1: bad value"):
        read_boxes_csv(write(tmp_path / "e.csv", ["v,0902,0.1,x,0.3,0.4,1"]), None)
    with pytest.raises(AvaFormatError, match="inverted box"):
        run_eval(tmp_path, ["v,0902,0.5,0.0,0.25,1.0,1"], [])


def _brute_force_map(gt: list[tuple], det: list[tuple], classes: list[int]) -> float:
    """An independent, loop-only reading of the rules (distinct scores, no exclusions, no cap)."""

    def iou(a: tuple, b: tuple) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    aps = []
    for cls in classes:
        truths = [g for g in gt if g[2] == cls]
        if not truths:
            continue
        ranked = []
        for key in {d[0] for d in det}:
            mine = sorted((d for d in det if d[0] == key and d[2] == cls), key=lambda d: -d[3])
            boxes = [g[1] for g in truths if g[0] == key]
            used = [False] * len(boxes)
            for d in mine:
                x1, y1, x2, y2 = d[1]
                if not (x1 < x2 and y1 < y2):
                    continue
                overlaps = [iou(d[1], b) for b in boxes]
                hit = False
                if overlaps:
                    best = overlaps.index(max(overlaps))
                    if overlaps[best] >= 0.5 and not used[best]:
                        used[best] = hit = True
                ranked.append((d[3], hit))
        ranked.sort(key=lambda r: -r[0])
        found, points = 0, []
        for rank, (_, hit) in enumerate(ranked, 1):
            found += hit
            points.append((found / len(truths), found / rank))
        ap, previous_recall = 0.0, 0.0
        for index, (recall, _) in enumerate(points):
            if recall > previous_recall:
                ap += (recall - previous_recall) * max(p for _, p in points[index:])
                previous_recall = recall
        aps.append(ap)
    return sum(aps) / len(aps)


@pytest.mark.parametrize("seed", range(5))
def test_random_csvs_match_an_independent_brute_force(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    classes = [1, 2, 3]
    grid = [i / 8 for i in range(9)]  # coarse coordinates: many exact ties in IoU and exact 0.5s

    def box() -> tuple:
        x1, x2 = sorted(rng.sample(grid, 2))
        y1, y2 = sorted(rng.sample(grid, 2))
        return (x1, y1, x2, y2)

    keys = [("vid_a", 902 + t) for t in range(4)] + [("vid_b", 1000 + t) for t in range(3)]
    gt = [((v, t), box(), rng.choice(classes)) for v, t in keys for _ in range(rng.randint(0, 3))]
    det, scores = [], rng.sample(range(1, 10**6), 200)
    for (v, t), b, c in gt:  # jittered copies of ground truth and a few random boxes
        for _ in range(rng.randint(0, 2)):
            jitter = tuple(min(1.0, max(0.0, x + rng.choice([-0.125, 0.0, 0.125]))) for x in b)
            det.append(((v, t), jitter, c if rng.random() < 0.8 else rng.choice(classes), scores.pop() / 1e6))
    for _ in range(10):
        det.append((rng.choice(keys), box(), rng.choice(classes), scores.pop() / 1e6))
    expected = _brute_force_map(gt, det, classes)

    def row(k: tuple, b: tuple, c: int) -> str:
        return f"{k[0]},{k[1]:04d},{b[0]},{b[1]},{b[2]},{b[3]},{c}"

    result = run_eval(tmp_path, [row(*g) for g in gt], [row(*d[:3]) + f",{d[3]}" for d in det], capacity=0)
    assert result.mean_ap == pytest.approx(expected, abs=1e-12)


def test_cli_prints_map_and_per_class_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    labelmap = write(tmp_path / "map.pbtxt", [LABELMAP])
    gt = write(tmp_path / "gt.csv", [f"v,0902,{FULL},1,0", f"v,0903,{FULL},1,0"])
    det_rows = [f"v,0902,{FULL},1,0.9", f"v,0902,{FULL},1,0.8", f"v,0903,{FULL},1,0.7"]
    det = write(tmp_path / "det.csv", det_rows)
    argv = ["eval-ava", "--gt", str(gt), "--detections", str(det), "--labelmap", str(labelmap)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("mAP@0.5IOU: ")
    assert float(lines[0].split(": ")[1]) == pytest.approx(5 / 6, abs=1e-12)
    assert lines[2].split() == ["1", "0.833333", "stand"]
    assert lines[3].split() == ["2", "nan", "sit"]
    assert main([*argv[:-1], str(tmp_path / "missing.pbtxt")]) == 2
    assert "missing.pbtxt: cannot read label map" in capsys.readouterr().err


def test_empty_detections_give_zero_and_crlf_quoted_csvs_read_the_same(tmp_path: Path) -> None:
    # Ground truth of classes 1 and 2 and no detection at all: both APs 0, mAP 0 (not NaN).
    assert run_eval(tmp_path, [f"v,0902,{FULL},1,0", f"v,0902,{LEFT},2,0"], []).mean_ap == 0.0
    # Windows line ends and quoted fields parse as the csv module reads them (as the official script).
    gt = tmp_path / "gt_crlf.csv"
    gt.write_bytes(b'"v",0902,0.0,0.0,1.0,1.0,1,0\r\nv,0903,0.0,0.0,1.0,1.0,1,0\r\n')
    det = tmp_path / "det_crlf.csv"
    det.write_bytes(b'v,"0902",0.0,0.0,1.0,1.0,1,0.9\r\nv,0903,0.75,0.0,1.0,1.0,1,0.99\r\n')
    result, _ = evaluate_files(write(tmp_path / "m.pbtxt", [LABELMAP]), gt, det)
    assert result.mean_ap == 0.25  # as in the exclusion example: miss at 0.99, hit at 0.9 over 2
