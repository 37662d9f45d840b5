"""Video-level metrics computed the standard way.

Scores are per video (clip scores already aggregated), shape (V, K). Single-label targets are class
indices (V,); multi-label targets are multi-hot (V, K).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.metrics import average_precision_score, balanced_accuracy_score
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix


def topk_accuracy(
    scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy in percent; k larger than the number of classes counts every video as right.

    Not scikit-learn's ``top_k_accuracy_score``: it rejects 2-class score matrices (it reads them
    as binary problems), which small datasets have; the tests hold this one to it on 3+ classes.
    """
    if len(labels) == 0:
        return {f"top{k}": float("nan") for k in ks}
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    return {f"top{k}": 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def mean_class_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes present in ``labels`` of the per-class top-1 accuracy (recall), in
    percent: scikit-learn's ``balanced_accuracy_score``."""
    if len(labels) == 0:
        return float("nan")
    predicted = scores.argmax(dim=1).cpu().numpy()
    with warnings.catch_warnings():  # predicted classes absent from the labels are expected, not a problem
        warnings.simplefilter("ignore", UserWarning)
        return 100.0 * float(balanced_accuracy_score(labels.cpu().numpy(), predicted))


def per_class_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """AP in percent of every class (K,), as scikit-learn's ``average_precision_score``; NaN for a
    class without positives (its AP is undefined, so it must not count as 0)."""
    scores_np, targets_np = scores.float().cpu().numpy(), targets.cpu().numpy() > 0
    per_class = np.full(scores_np.shape[1], np.nan)
    present = targets_np.any(axis=0)
    if present.any():
        per_class[present] = 100.0 * np.atleast_1d(
            average_precision_score(targets_np[:, present], scores_np[:, present], average=None)
        )
    return per_class


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Charades-protocol mAP in percent: classes without positives are dropped, AP per class as
    scikit-learn's ``average_precision_score``, then the mean."""
    per_class = per_class_average_precision(scores, targets)
    if np.isnan(per_class).all():
        return float("nan")
    return float(np.nanmean(per_class))


def confusion_matrix(scores: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Counts (K, K) of videos of true class ``i`` (row) predicted (top-1) as class ``j`` (column)."""
    num_classes = scores.shape[1]
    return sklearn_confusion_matrix(
        labels.cpu().numpy(), scores.argmax(dim=1).cpu().numpy(), labels=np.arange(num_classes)
    )


def top_confused_pairs(matrix: np.ndarray, limit: int = 10) -> list[tuple[int, int, int]]:
    """The off-diagonal cells with most videos, as ``(true, predicted, count)``, most first;
    ties broken by class index so the list is deterministic."""
    off_diagonal = matrix.copy()
    np.fill_diagonal(off_diagonal, 0)
    true, predicted = np.nonzero(off_diagonal)
    pairs = sorted(
        zip(true.tolist(), predicted.tolist(), off_diagonal[true, predicted].tolist(), strict=True),
        key=lambda pair: (-pair[2], pair[0], pair[1]),
    )
    return pairs[:limit]


def classification_metrics(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """The metrics a split reports: top-1/top-5/mean-class accuracy, or mAP for multi-label."""
    if targets.is_floating_point():
        return {"mAP": mean_average_precision(scores, targets)}
    metrics = topk_accuracy(scores, targets)
    metrics["mean_class_acc"] = mean_class_accuracy(scores, targets)
    return metrics
