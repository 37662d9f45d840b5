"""Video-level metrics computed the standard way.

Scores are per video (clip scores already aggregated), shape (V, K). Single-label targets are class
indices (V,); multi-label targets are multi-hot (V, K).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import average_precision_score


def topk_accuracy(
    scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy in percent; k larger than the number of classes counts every video as right."""
    if len(labels) == 0:
        return {f"top{k}": float("nan") for k in ks}
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    return {f"top{k}": 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def mean_class_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes present in ``labels`` of the per-class top-1 accuracy, in percent."""
    predicted = scores.argmax(dim=1)
    per_class = [(predicted[labels == c] == c).float().mean().item() for c in labels.unique().tolist()]
    return 100.0 * float(np.mean(per_class)) if per_class else float("nan")


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Charades-protocol mAP in percent: classes without positives are dropped, AP per class as
    scikit-learn's ``average_precision_score``, then the mean."""
    scores_np, targets_np = scores.float().cpu().numpy(), targets.cpu().numpy() > 0
    present = targets_np.any(axis=0)
    if not present.any():
        return float("nan")
    per_class = average_precision_score(targets_np[:, present], scores_np[:, present], average=None)
    return 100.0 * float(np.mean(per_class))


def classification_metrics(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """The metrics a split reports: top-1/top-5/mean-class accuracy, or mAP for multi-label."""
    if targets.is_floating_point():
        return {"mAP": mean_average_precision(scores, targets)}
    metrics = topk_accuracy(scores, targets)
    metrics["mean_class_acc"] = mean_class_accuracy(scores, targets)
    return metrics
