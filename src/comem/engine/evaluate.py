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

from comem.config import TrainConfig
from comem.data.datasets import DatasetFormatError
from comem.data.formats import load_splits
from comem.data.transforms import normalize
from comem.engine.checkpoint import load_checkpoint
from comem.engine.loaders import make_dataset, make_loader, resolve_device
from comem.metrics import classification_metrics
from comem.models.build import ModelSpec, VideoModel, build_model


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


def video_scores(clip_logits: torch.Tensor, *, multi_label: bool) -> torch.Tensor:
    """Video-level scores (B, K) from clip logits (B, N, K): the mean of the clip probabilities
    (softmax, or sigmoid for multi-label targets), as training accuracy and evaluation both report."""
    logits = clip_logits.float()
    probabilities = logits.sigmoid() if multi_label else logits.softmax(dim=-1)
    return probabilities.mean(dim=1)


@torch.no_grad()
def predict_scores(
    model: VideoModel,
    batches: Iterable[dict],
    device: torch.device,
    *,
    share_memory: bool = True,
    amp: bool = True,
    progress: bool = True,
) -> VideoScores:
    """Run every batch (``video`` uint8 (B, V, C, T, H, W)) and aggregate clip probabilities per video.

    ``share_memory=False`` evaluates a single-clip model: each view only sees itself. Multi-hot
    (float) labels are scored with sigmoids, class indices with a softmax.
    """
    model.eval()
    autocast = autocast_for(device, amp)
    scores, targets, indices, skipped = [], [], [], []
    for batch in tqdm(batches, desc="eval", leave=False, disable=not progress, dynamic_ncols=True):
        skipped.extend(batch["skipped"])
        if batch["label"].numel() == 0:
            continue
        video = normalize(batch["video"].to(device, non_blocking=True))
        with autocast():
            logits = model(video, share_memory=share_memory)
        scores.append(video_scores(logits, multi_label=batch["label"].is_floating_point()).cpu())
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
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
) -> tuple[dict[str, Any], Path]:
    """Evaluate a training checkpoint on a split; writes ``eval_<split>.json`` beside it.

    Everything else (model, transform settings, class names, mode) comes from the checkpoint.
    """
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    config = TrainConfig(**state["config"])
    spec = ModelSpec(**{**state["model_spec"], "memory_stages": tuple(state["model_spec"]["memory_stages"])})
    data_dir = Path(data) if data is not None else Path(state["data_dir"])
    splits = load_splits(data_dir, config.data_format)
    records = splits.val if split == "val" else splits.test
    if records is None:
        raise DatasetFormatError(f"{data_dir}: no labelled test split")
    if splits.num_classes > spec.num_classes:
        raise DatasetFormatError(
            f"{data_dir}: has {splits.num_classes} classes but the checkpoint predicts {spec.num_classes}"
        )
    torch_device = resolve_device(device)
    model = build_model(spec)
    model.load_state_dict(state["model"])
    model.to(torch_device)
    overrides = {"views": views, "crops": crops, "batch_size": batch_size, "workers": workers}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None}).validate()
    loader = make_loader(
        make_dataset(records, config, train=False, num_classes=spec.num_classes), config, None, torch_device
    )
    result = predict_scores(
        model, loader, torch_device, share_memory=config.shares_eval_memory, amp=config.amp
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
            "videos": int(result.scores.shape[0]),
            "skipped_videos": len(result.skipped),
            "skipped": result.skipped,
            "checkpoint": str(checkpoint),
            "data": str(data_dir),
        }
    )
    out = checkpoint.with_name(f"eval_{split}.json")
    out.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics, out
