"""What a user reads after training and evaluation: per-video predictions, per-class tables, and
figures (confusion matrix, per-class AP); the training curves are the engine's (``engine/loggers.py``).

Figures use matplotlib's object API on the Agg canvas (no pyplot state, no display needed), so they
can be written from training loops, DataLoader-heavy jobs and headless servers alike. Single- or
multi-label is read from the targets' dtype (class indices vs float multi-hot), as everywhere else.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from comem.files import save_figure
from comem.metrics import confusion_matrix, per_class_average_precision, top_confused_pairs


def true_label_names(target: torch.Tensor, class_names: Sequence[str]) -> str:
    """A video's label(s) as text: one name, or the multi-hot positives joined by ``;``."""
    if target.is_floating_point():
        return ";".join(class_names[i] for i in torch.nonzero(target > 0).flatten().tolist())
    return class_names[int(target)]


def write_predictions_csv(
    path: Path,
    videos: Sequence[str],
    scores: torch.Tensor,
    targets: torch.Tensor,
    class_names: Sequence[str],
    *,
    top: int = 5,
) -> None:
    """One row per video: ``video, true, pred1, score1, ..., predK, scoreK`` (K = ``top``)."""
    top = min(top, len(class_names))
    header = ["video", "true"] + [f"{kind}{k}" for k in range(1, top + 1) for kind in ("pred", "score")]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        if len(videos) == 0:
            return
        values, indices = scores.float().topk(top, dim=1)
        for video, target, row_values, row_indices in zip(videos, targets, values, indices, strict=True):
            row = [video, true_label_names(target, class_names)]
            for value, index in zip(row_values.tolist(), row_indices.tolist(), strict=True):
                row += [class_names[index], f"{value:.6f}"]
            writer.writerow(row)


def plot_confusion_matrix(path: Path, matrix: np.ndarray, class_names: Sequence[str]) -> None:
    """Rows are true classes, columns predicted ones; colour is the fraction of the true class, so
    rare classes stay visible. Cell counts are written when there are few classes, names when
    they still fit; the most confused pairs are listed underneath."""
    num_classes = len(class_names)
    side = min(max(0.45 * num_classes + 2.5, 4.5), 22.0)
    pairs = [
        f"{count} x  {class_names[true]}  ->  {class_names[predicted]}"
        for true, predicted, count in top_confused_pairs(matrix, limit=5)
    ]
    footer = 0.3 + 0.2 * len(pairs)  # inches
    figure = Figure(figsize=(side + 1.2, side + footer))
    axes = figure.add_subplot()
    totals = matrix.sum(axis=1, keepdims=True)
    fraction = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    image = axes.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")
    if num_classes <= 60:
        positions = np.arange(num_classes)
        axes.set_xticks(positions, labels=list(class_names), rotation=60, ha="right", fontsize=8)
        axes.set_yticks(positions, labels=list(class_names), fontsize=8)
    if num_classes <= 20:
        for (row, column), count in np.ndenumerate(matrix):
            if count:
                colour = "white" if fraction[row, column] > 0.5 else "black"
                axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    accuracy = 100.0 * np.trace(matrix) / max(matrix.sum(), 1)
    axes.set_title(f"Confusion matrix: {int(matrix.sum())} videos, top-1 {accuracy:.1f}%")
    summary = "most confused (videos x true -> predicted):\n" + "\n".join(pairs) if pairs else "no confusions"
    figure.text(0.02, 0.01, summary, ha="left", va="bottom", fontsize=9, family="monospace")
    figure.tight_layout(rect=(0, footer / figure.get_figheight(), 1, 1))
    save_figure(figure, path)


def plot_per_class_ap(path: Path, per_class_ap: np.ndarray, class_names: Sequence[str]) -> None:
    """Horizontal bars of AP per class, best first; classes without positives are left out."""
    present = [i for i in np.argsort(-np.nan_to_num(per_class_ap, nan=-1.0)) if not np.isnan(per_class_ap[i])]
    height = min(max(0.22 * len(present) + 1.5, 3.0), 60.0)
    figure = Figure(figsize=(8.0, height))
    axes = figure.add_subplot()
    positions = np.arange(len(present))
    axes.barh(positions, per_class_ap[present], color="tab:blue")
    axes.set_yticks(positions, labels=[class_names[i] for i in present], fontsize=8)
    axes.invert_yaxis()
    mean_ap = float(np.mean(per_class_ap[present])) if present else float("nan")
    axes.axvline(mean_ap, color="tab:red", linestyle="--", label=f"mAP {mean_ap:.1f}")
    axes.set_xlim(0, 100)
    axes.set_xlabel("average precision (%)")
    dropped = len(per_class_ap) - len(present)
    note = f"; {dropped} without positives left out" if dropped else ""
    axes.set_title(f"Per-class AP ({len(present)} classes{note})", fontsize=10)
    axes.legend(loc="lower right")
    figure.tight_layout()
    save_figure(figure, path)


def write_per_class_csv(
    path: Path, scores: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str]
) -> None:
    """Single-label: ``class, videos, correct, accuracy``; multi-label: ``class, positives, AP``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        if targets.is_floating_point():
            writer.writerow(["class", "positives", "AP"])
            positives = (targets > 0).sum(dim=0).tolist()
            for name, count, ap in zip(
                class_names, positives, per_class_average_precision(scores, targets), strict=True
            ):
                writer.writerow([name, count, "" if math.isnan(ap) else f"{ap:.4f}"])
            return
        matrix = confusion_matrix(scores, targets)
        writer.writerow(["class", "videos", "correct", "accuracy"])
        for index, name in enumerate(class_names):
            videos, correct = int(matrix[index].sum()), int(matrix[index, index])
            writer.writerow([name, videos, correct, f"{100.0 * correct / videos:.4f}" if videos else ""])


def write_eval_report(
    out_dir: Path,
    scores: torch.Tensor,
    targets: torch.Tensor,
    videos: Sequence[str],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Write ``predictions.csv``, ``per_class.csv`` and ``confusion_matrix.png`` (single-label) or
    ``per_class_ap.png`` (multi-label) into ``out_dir``; returns the entries they add to
    ``metrics.json`` (the most confused class pairs, or AP per class)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions_csv(out_dir / "predictions.csv", videos, scores, targets, class_names)
    if len(videos) == 0:
        return {}
    write_per_class_csv(out_dir / "per_class.csv", scores, targets, class_names)
    if targets.is_floating_point():
        per_class_ap = per_class_average_precision(scores, targets)
        plot_per_class_ap(out_dir / "per_class_ap.png", per_class_ap, class_names)
        pairs = zip(class_names, per_class_ap.tolist(), strict=True)
        return {"per_class_AP": {name: ap for name, ap in pairs if not math.isnan(ap)}}
    matrix = confusion_matrix(scores, targets)
    plot_confusion_matrix(out_dir / "confusion_matrix.png", matrix, class_names)
    return {
        "top_confused": [
            {"true": class_names[true], "predicted": class_names[predicted], "videos": count}
            for true, predicted, count in top_confused_pairs(matrix)
        ]
    }
