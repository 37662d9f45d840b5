"""Frame-level AVA mAP, computed exactly as the official AVA evaluator computes it.

The official evaluator is ActivityNet's ``Evaluation/get_ava_performance.py`` (the v2.1/v2.2 release,
with ``--exclusions``) on top of the TF object-detection ``PascalDetectionEvaluator``. This module
re-implements its rules with numpy; every rule below is one the tests work out by hand:

- A row is keyed by ``"%s,%04d" % (video_id, int(timestamp))``; boxes are read ``x1,y1,x2,y2`` and
  kept as ``[y1, x1, y2, x2]``; rows whose action id is not in the label map are dropped.
- Per key, detections are capped at the 50 highest-scoring rows (a heap keyed by
  ``(score, action_id, y1, x1, y2, x2)``; a new row replaces the smallest only if its score is strictly
  higher), then ordered by descending score (stable over the heap's order). Ground truth is not capped.
- Excluded keys are dropped from both ground truth and detections. Detections on a key without ground
  truth are all false positives.
- Detections with ``y1 >= y2`` or ``x1 >= x2`` are discarded. Areas have no ``+1``.
- Per key and class, detections in the order above each take their highest-IoU ground-truth box (the
  first on ties); IoU ``>= 0.5`` with a box not yet taken is a true positive, anything else (including a
  second detection whose best box is already taken, even if another box would fit) is a false positive.
- Per class, all detections are ranked by ``np.argsort(scores)[::-1]``; precision/recall are cumulative;
  AP is the VOC all-point area under the precision envelope; a class with ground truth but no detection
  has AP 0; a class without ground truth has AP NaN and is left out of the mean (``np.nanmean`` over
  class ids 1..max id of the label map).
"""

from __future__ import annotations

import csv
import heapq
import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from comem.errors import UserError
from comem.textfile import open_text, read_text

IOU_THRESHOLD = 0.5
DETECTION_CAPACITY = 50  # the official evaluator keeps at most this many detections per keyframe


class AvaFormatError(UserError, ValueError):
    """A malformed AVA CSV or label map (message names the file and line)."""


@dataclass(frozen=True)
class Category:
    id: int
    name: str


@dataclass
class FrameBoxes:
    """The boxes of one keyframe: ``boxes`` rows are ``[y1, x1, y2, x2]`` (normalised), in the order the
    evaluator sees them."""

    boxes: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class AvaResult:
    mean_ap: float  # NaN when no class of the label map has ground truth
    per_class: dict[int, float]  # class id -> AP (NaN: no ground truth), for every label-map id


def image_key(video_id: str, timestamp: str | int) -> str:
    """The keyframe key, e.g. ``"-5KQ66BBWC4,0902"``; ``int()`` of the timestamp, as the official code."""
    return f"{video_id},{int(timestamp):04d}"


def read_labelmap(path: str | Path) -> list[Category]:
    """Categories of a label map ``.pbtxt``, read line by line as the official evaluator does: a line
    starting ``  name:`` sets the name, a line starting ``  id:`` or ``  label_id:`` adds a category."""
    path = Path(path)
    categories: list[Category] = []
    name = ""
    lines = read_text(path, AvaFormatError, "label map").splitlines(keepends=True)
    for number, line in enumerate(lines, 1):
        if line.startswith("  name:"):
            parts = line.split('"')
            if len(parts) < 2:
                raise AvaFormatError(f'{path}:{number}: expected name: "..." , got {line.strip()!r}')
            name = parts[1]
        elif line.startswith("  id:") or line.startswith("  label_id:"):
            try:
                class_id = int(line.strip().split(" ")[-1])
            except ValueError:
                raise AvaFormatError(
                    f"{path}:{number}: class id is not an integer: {line.strip()!r}"
                ) from None
            if class_id < 1:
                raise AvaFormatError(f"{path}:{number}: class ids must be >= 1, got {class_id}")
            categories.append(Category(class_id, name))
    if not categories:
        raise AvaFormatError(f"{path}: no classes found (expected lines '  name: \"...\"' and '  id: N')")
    return categories


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    try:
        with open_text(path, AvaFormatError) as file:
            for number, row in enumerate(csv.reader(file), 1):
                if row and any(cell.strip() for cell in row):
                    yield number, row
    except OSError as error:
        raise AvaFormatError(f"{path}: cannot read ({error.strerror})") from None
    except csv.Error as error:
        raise AvaFormatError(f"{path}: not a valid CSV ({error})") from None


def read_exclusions(path: str | Path | None) -> set[str]:
    """Keys of the excluded-timestamps CSV (``video_id,timestamp`` rows); empty without a file."""
    if path is None:
        return set()
    path = Path(path)
    keys = set()
    for number, row in _csv_rows(path):
        if len(row) != 2:
            raise AvaFormatError(f"{path}:{number}: expected 2 columns video_id,timestamp, got {len(row)}")
        try:
            keys.add(image_key(row[0], row[1]))
        except ValueError:
            raise AvaFormatError(f"{path}:{number}: timestamp is not an integer: {row[1]!r}") from None
    return keys


def read_boxes_csv(
    path: str | Path, class_ids: Iterable[int] | None, *, capacity: int = 0, file_order: bool = False
) -> dict[str, FrameBoxes]:
    """Boxes of an AVA CSV (``video_id,timestamp,x1,y1,x2,y2,action_id[,score]``) by keyframe key.

    Rows of classes outside ``class_ids`` are dropped; a missing score is 1.0. ``capacity`` > 0 keeps
    the top ``capacity`` rows per key (the official detections rule, see the module docstring); rows of
    a key come out by descending score, or as in the file with ``file_order`` (PySlowFast's reader,
    which has no cap). Rows with only ``video_id,timestamp`` carry no box and are skipped. Keys are in
    the order of their first kept row.
    """
    path = Path(path)
    allowed = set(class_ids) if class_ids is not None else None
    heaps: dict[str, list[tuple[float, int, float, float, float, float]]] = {}
    for number, row in _csv_rows(path):
        if len(row) == 2:
            continue
        if len(row) not in (7, 8):
            raise AvaFormatError(
                f"{path}:{number}: expected 7 or 8 columns "
                f"(video_id,timestamp,x1,y1,x2,y2,action_id[,score]), got {len(row)}"
            )
        try:
            key = image_key(row[0], row[1])
            x1, y1, x2, y2 = (float(value) for value in row[2:6])
            action_id = int(row[6])
            score = float(row[7]) if len(row) == 8 else 1.0
        except ValueError as error:
            raise AvaFormatError(f"{path}:{number}: bad value ({error})") from None
        if allowed and action_id not in allowed:
            continue
        entry = (score, action_id, y1, x1, y2, x2)
        heap = heaps.setdefault(key, [])
        if file_order:
            heap.append(entry)
        elif capacity < 1 or len(heap) < capacity:
            heapq.heappush(heap, entry)
        elif score > heap[0][0]:
            heapq.heapreplace(heap, entry)
    frames: dict[str, FrameBoxes] = {}
    for key, heap in heaps.items():
        frame = frames[key] = FrameBoxes()
        for score, action_id, y1, x1, y2, x2 in heap if file_order else sorted(heap, key=lambda e: -e[0]):
            frame.boxes.append([y1, x1, y2, x2])
            frame.labels.append(action_id)
            frame.scores.append(score)
    return frames


def check_groundtruth_boxes(path: str | Path, frames: dict[str, FrameBoxes]) -> None:
    """The official evaluator rejects ground-truth boxes with y1 > y2 or x1 > x2 (BoxList check)."""
    for key, frame in frames.items():
        for y1, x1, y2, x2 in frame.boxes:
            if y1 > y2 or x1 > x2:
                raise AvaFormatError(
                    f"{path}: keyframe {key} has an inverted box x1,y1,x2,y2 = {x1},{y1},{x2},{y2}"
                )


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU (A, B) of ``[y1, x1, y2, x2]`` boxes; areas without ``+1``."""
    top = np.maximum(boxes_a[:, None, 0], boxes_b[None, :, 0])
    left = np.maximum(boxes_a[:, None, 1], boxes_b[None, :, 1])
    bottom = np.minimum(boxes_a[:, None, 2], boxes_b[None, :, 2])
    right = np.minimum(boxes_a[:, None, 3], boxes_b[None, :, 3])
    inter = np.maximum(bottom - top, 0.0) * np.maximum(right - left, 0.0)
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def match_detections(
    detections: np.ndarray, groundtruth: np.ndarray, threshold: float = IOU_THRESHOLD
) -> np.ndarray:
    """True-positive flags of one keyframe's detections of one class, in their given order.

    Each detection looks only at its highest-IoU ground-truth box (the first on ties): a hit when the IoU
    is ``>= threshold`` and that box is still free; a miss otherwise.
    """
    hits = np.zeros(len(detections), dtype=bool)
    if len(detections) == 0 or len(groundtruth) == 0:
        return hits
    overlaps = iou_matrix(detections, groundtruth)
    best = np.argmax(overlaps, axis=1)
    taken = np.zeros(len(groundtruth), dtype=bool)
    for index, box in enumerate(best):
        if overlaps[index, box] >= threshold and not taken[box]:
            hits[index] = True
            taken[box] = True
    return hits


def voc_average_precision(scores: np.ndarray, hits: np.ndarray, num_groundtruth: int) -> float:
    """VOC all-point AP of ranked detections of one class; NaN without ground truth, 0 without detections."""
    if num_groundtruth == 0:
        return math.nan
    if len(scores) == 0:
        return 0.0
    order = np.argsort(scores)[::-1]
    true_positives = np.cumsum(hits[order].astype(int))
    false_positives = np.cumsum(1 - hits[order].astype(int))
    precision = true_positives.astype(float) / (true_positives + false_positives)
    recall = true_positives.astype(float) / num_groundtruth
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.where(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def evaluate(
    categories: list[Category],
    groundtruth: dict[str, FrameBoxes],
    detections: dict[str, FrameBoxes],
    excluded: set[str] = frozenset(),  # type: ignore[assignment]
    *,
    iou_threshold: float = IOU_THRESHOLD,
) -> AvaResult:
    """Frame-level AP per class and their mean over the classes with ground truth.

    ``groundtruth`` and ``detections`` are keyed by :func:`image_key`, detections in the order the
    evaluator should see them (as :func:`read_boxes_csv` returns them).
    """
    num_classes = max(category.id for category in categories)
    num_groundtruth = np.zeros(num_classes + 1, dtype=int)
    gt_arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key, frame in groundtruth.items():
        if key in excluded:
            continue
        labels = np.array(frame.labels, dtype=int)
        gt_arrays[key] = (np.array(frame.boxes, dtype=float).reshape(-1, 4), labels)
        for label in labels:
            if 1 <= label <= num_classes:
                num_groundtruth[label] += 1
    class_scores: dict[int, list[np.ndarray]] = {}
    class_hits: dict[int, list[np.ndarray]] = {}
    for key, frame in detections.items():
        if key in excluded:
            continue
        boxes = np.array(frame.boxes, dtype=float).reshape(-1, 4)
        labels = np.array(frame.labels, dtype=int)
        scores = np.array(frame.scores, dtype=float)
        valid = (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])
        boxes, labels, scores = boxes[valid], labels[valid], scores[valid]
        gt_boxes, gt_labels = gt_arrays.get(key, (np.zeros((0, 4)), np.zeros(0, dtype=int)))
        for label in np.unique(labels[(labels >= 1) & (labels <= num_classes)]).tolist():
            mine = labels == label
            hits = match_detections(boxes[mine], gt_boxes[gt_labels == label], iou_threshold)
            class_scores.setdefault(label, []).append(scores[mine])
            class_hits.setdefault(label, []).append(hits)
    average_precisions = np.full(num_classes + 1, np.nan)
    for label in range(1, num_classes + 1):
        if num_groundtruth[label] == 0:
            continue
        scores = np.concatenate(class_scores.get(label, [np.zeros(0)]))
        hits = np.concatenate(class_hits.get(label, [np.zeros(0, dtype=bool)]))
        average_precisions[label] = voc_average_precision(scores, hits, int(num_groundtruth[label]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN mean: no class has ground truth
        mean_ap = float(np.nanmean(average_precisions[1:]))
    per_class = {category.id: float(average_precisions[category.id]) for category in categories}
    return AvaResult(mean_ap, per_class)


def evaluate_files(
    labelmap: str | Path,
    groundtruth: str | Path,
    detections: str | Path,
    exclusions: str | Path | None = None,
    *,
    capacity: int = DETECTION_CAPACITY,
    pyslowfast: bool = False,
) -> tuple[AvaResult, list[Category]]:
    """The official evaluator on files: label map, ground-truth CSV, detections CSV, exclusions CSV.

    ``pyslowfast=True`` reads the CSVs as PySlowFast's in-training AVA evaluation does (same matching
    and AP, but no per-keyframe cap and rows matched in file order rather than by score).
    """
    categories = read_labelmap(labelmap)
    class_ids = {category.id for category in categories}
    excluded = read_exclusions(exclusions)
    truth = read_boxes_csv(groundtruth, class_ids, file_order=pyslowfast)
    check_groundtruth_boxes(groundtruth, truth)
    detected = read_boxes_csv(detections, class_ids, capacity=capacity, file_order=pyslowfast)
    return evaluate(categories, truth, detected, excluded), categories


def format_report(result: AvaResult, categories: list[Category]) -> str:
    """``mAP@0.5IOU: X`` followed by one ``id  AP  name`` line per label-map class."""
    lines = [f"mAP@0.5IOU: {result.mean_ap!r}", f"{'id':>4}  {'AP':>10}  class"]
    for category in categories:
        lines.append(f"{category.id:>4}  {result.per_class[category.id]:>10.6f}  {category.name}")
    return "\n".join(lines)
