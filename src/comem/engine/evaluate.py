"""Multi-view video-level evaluation: every view of a video goes through the model together (so the
collaborative memory is built from all of them), clip scores are averaged per video."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from comem.data.datasets import DatasetFormatError
from comem.data.formats import load_splits
from comem.data.transforms import normalize
from comem.engine.loaders import make_dataset, make_loader, resolve_device
from comem.engine.reports import write_eval_report
from comem.engine.trained import load_trained
from comem.metrics import classification_metrics
from comem.models.build import VideoModel


@dataclass
class VideoScores:
    """Per-video scores (V, K), targets, dataset indices, and the videos that could not be read."""

    scores: torch.Tensor
    targets: torch.Tensor
    video_indices: torch.Tensor
    skipped: list[str] = field(default_factory=list)


def autocast_for(device: torch.device, enabled: bool) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast on CUDA when enabled; a no-op elsewhere (CPU bf16 conv3d is slower than fp32)."""
    if enabled and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


AGGREGATES: tuple[str, ...] = ("mean", "max")


def clip_probabilities(clip_logits: torch.Tensor, *, multi_label: bool) -> torch.Tensor:
    """Per-clip class probabilities (..., K): softmax, or sigmoid for multi-label targets."""
    logits = clip_logits.float()
    return logits.sigmoid() if multi_label else logits.softmax(dim=-1)


def video_scores(clip_logits: torch.Tensor, *, multi_label: bool, aggregate: str = "mean") -> torch.Tensor:
    """Video-level scores (B, K) from clip logits (B, N, K): the mean (or per-class max) over the
    N views of the clip probabilities, as training accuracy and evaluation both report."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}; got {aggregate!r}")
    probabilities = clip_probabilities(clip_logits, multi_label=multi_label)
    return probabilities.mean(dim=1) if aggregate == "mean" else probabilities.amax(dim=1)


@torch.no_grad()
def predict_scores(
    model: VideoModel,
    batches: Iterable[dict],
    device: torch.device,
    *,
    share_memory: bool = True,
    amp: bool = True,
    progress: bool = True,
    aggregate: str = "mean",
) -> VideoScores:
    """Run every batch (``video`` uint8 (B, V, C, T, H, W)) and aggregate clip probabilities per video.

    All V views of a video (K clips x crops) go through the model together, so its collaborative
    memory is built from all of them; ``share_memory=False`` evaluates a single-clip model: each
    view only sees itself. Multi-hot (float) labels are scored with sigmoids, class indices with a
    softmax; ``aggregate`` is ``mean`` or ``max`` over the views.
    """
    model.eval()
    autocast = autocast_for(device, amp)
    scores, targets, indices, skipped = [], [], [], []
    for batch in tqdm(
        batches, desc="eval", leave=False, dynamic_ncols=True, **({} if progress else {"disable": True})
    ):
        skipped.extend(batch["skipped"])
        if batch["label"].numel() == 0:
            continue
        video = normalize(batch["video"].to(device, non_blocking=True), *model.normalization)
        with autocast():
            logits = model(video, share_memory=share_memory)
        multi_label = batch["label"].is_floating_point()
        scores.append(video_scores(logits, multi_label=multi_label, aggregate=aggregate).cpu())
        targets.append(batch["label"])
        indices.append(batch["video_index"])
    if not scores:
        return VideoScores(torch.empty(0, 0), torch.empty(0, dtype=torch.long), torch.empty(0), skipped)
    return VideoScores(torch.cat(scores), torch.cat(targets), torch.cat(indices), skipped)


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "val",
    views: int | None = None,
    crops: int | None = None,
    aggregate: str = "mean",
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    out: str | Path | None = None,
    state: dict | None = None,
) -> tuple[dict[str, Any], Path]:
    """Evaluate a training checkpoint on a split with multi-view testing; returns the metrics and
    the report directory (default ``eval_<split>_<checkpoint name>/`` beside the checkpoint, e.g.
    ``eval_val_best/``) holding ``metrics.json``, ``predictions.csv``, ``per_class.csv`` and a
    confusion matrix or per-class AP chart.

    Everything else (model, transform settings, class names, mode) comes from the checkpoint.
    """
    checkpoint = Path(checkpoint)
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}; got {aggregate!r}")
    torch_device = resolve_device(device)
    trained = load_trained(checkpoint, torch_device, state=state)  # state: the checkpoint, if read
    if data is None and trained.data_dir is None:
        raise DatasetFormatError(f"{checkpoint}: records no data dir; pass --data")
    data_dir = Path(data) if data is not None else trained.data_dir
    splits = load_splits(data_dir, trained.config.data_format)
    records = splits.val if split == "val" else splits.test
    if records is None:
        raise DatasetFormatError(f"{data_dir}: no labelled test split")
    if splits.multi_label != trained.multi_label:  # sigmoid/mAP vs softmax/top-1: no common metric
        kinds = {True: "multi-label", False: "single-label"}
        raise DatasetFormatError(
            f"{data_dir}: {kinds[splits.multi_label]} data but {checkpoint} was trained on "
            f"{kinds[trained.multi_label]} data"
        )
    if splits.num_classes > trained.spec.num_classes:
        raise DatasetFormatError(
            f"{data_dir}: has {splits.num_classes} classes "
            f"but the checkpoint predicts {trained.spec.num_classes}"
        )
    overrides = {"views": views, "crops": crops, "batch_size": batch_size, "workers": workers}
    config = dataclasses.replace(
        trained.config, **{k: v for k, v in overrides.items() if v is not None}
    ).validate()
    loader = make_loader(
        make_dataset(records, config, train=False, num_classes=trained.spec.num_classes),
        config,
        None,
        torch_device,
    )
    result = predict_scores(
        trained.model,
        loader,
        torch_device,
        share_memory=config.shares_eval_memory,
        amp=config.amp,
        aggregate=aggregate,
    )
    metrics: dict[str, Any] = {
        f"{split}_{key}": value
        for key, value in classification_metrics(result.scores, result.targets).items()
    }
    metrics.update(
        {
            "split": split,
            "mode": config.mode,
            "views": config.eval_views * config.crops,
            "clips": config.eval_views,
            "crops": config.crops,
            "aggregate": aggregate,
            "videos": int(result.scores.shape[0]),
            "skipped_videos": len(result.skipped),
            "skipped": result.skipped,
            "checkpoint": str(checkpoint),
            "data": str(data_dir),
        }
    )
    out_dir = Path(out) if out is not None else checkpoint.with_name(f"eval_{split}_{checkpoint.stem}")
    videos = [str(records[index].path) for index in result.video_indices.tolist()]
    metrics.update(write_eval_report(out_dir, result.scores, result.targets, videos, trained.class_names))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics, out_dir
