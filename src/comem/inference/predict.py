"""Predict the classes of a video with a trained model, clip by clip along its timeline.

The input is a file, its decoded frames, or clips already cut and normalised. A file is decoded
once: K clips uniformly spread over its whole length (the eval convention), each kept frame reduced
on the fly to its test crops and a thumbnail, so long high-resolution videos fit in memory and the
crops equal those ``comem eval`` scores. The collaborative memory is built from all K clips, each
clip is scored reading it, and the clip probabilities give both the video's score (their mean or
max) and a timeline of where the evidence lies; each memory stage's read weights show which clips
every clip drew on. Videos shorter than a clip repeat their last frame, as in training.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from comem.config import TrainConfig
from comem.data.decode import VideoReader
from comem.data.sampling import (
    clip_frame_indices,
    clip_span,
    clip_times,
    eval_clip_starts,
    memory_groups,
    resample_grid,
)
from comem.data.transforms import center_crop_views, normalize, short_side_scale_size
from comem.engine.precision import autocast_for
from comem.errors import UserError
from comem.memory import even_times
from comem.models.build import Bank
from comem.models.normalization import Normalization
from comem.tasks.classification import clip_probabilities, video_scores

log = logging.getLogger(__name__)

# Thumbnails (each clip's middle frame) are kept at most this short side: legible in a timeline.
THUMBNAIL_SHORT_SIDE = 160


class ScoringModel(Protocol):
    """What prediction needs: a model that runs like a ``VideoModel`` (in eval mode, on its device),
    the settings it was trained with (clip sampling and crops) and its kind of labels."""

    model: torch.nn.Module
    config: TrainConfig
    multi_label: bool


def input_normalization(trained: ScoringModel) -> Normalization:
    """The mean and std pixels are normalised with: the scorer's own (``Predictor.normalization``),
    else its model's (a ``VideoModel`` carries that of its weights)."""
    return getattr(trained, "normalization", None) or trained.model.normalization


class FramesError(UserError, ValueError):
    """Frames or clips given to predict that do not have the documented shape or type."""


@dataclass
class VideoPrediction:
    """Scores of one video: per clip (N, K) and for the video (K,), with where each clip lies.

    ``attention`` maps each memory stage to its read weights (N, N): row i is how much clip i drew
    on each clip (spatial crops of a clip pooled). For clips given as tensors there are no frame
    positions (``clip_frames`` is empty) and no thumbnails.
    """

    path: str
    num_frames: int
    fps: float
    height: int
    width: int
    clip_frames: np.ndarray  # (N, 2) first and last frame index of each clip
    clip_probabilities: np.ndarray  # (N, K), spatial crops of a clip averaged
    scores: np.ndarray  # (K,) the video-level score
    thumbnails: list[np.ndarray]  # the middle frame of each clip, (h, w, 3) uint8
    multi_label: bool
    attention: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def clip_scores(self) -> np.ndarray:
        """Per-clip class probabilities (N, K) (same as ``clip_probabilities``)."""
        return self.clip_probabilities

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else float(self.num_frames)

    @property
    def clip_times_s(self) -> np.ndarray:
        """Centre of each clip in seconds (frame numbers when the frame rate is unknown)."""
        centres = (self.clip_frames[:, 0] + self.clip_frames[:, 1] + 1) / 2
        return centres / self.fps if self.fps > 0 else centres

    def top(self, k: int) -> list[tuple[int, float]]:
        """The ``k`` best classes as ``(class index, score)``, best first."""
        order = np.argsort(-self.scores, kind="stable")[:k]
        return [(int(index), float(self.scores[index])) for index in order]


def number_of_clips(
    num_frames: int, fps: float, *, clips: int, clips_per_second: float | None, max_clips: int
) -> int:
    """``clips``, or with ``clips_per_second`` enough clips to sample the video that densely (at
    least ``clips``), at most ``max_clips``."""
    if clips_per_second and fps > 0:
        clips = max(clips, math.ceil(num_frames / fps * clips_per_second))
    return max(1, min(clips, max_clips))


def views_and_thumbnail(
    height: int, width: int, *, crop_size: int, eval_scale: int, crops: int
) -> Callable[[np.ndarray], np.ndarray]:
    """A per-frame transform for :meth:`VideoReader.read` keeping only what prediction needs of a
    (H, W, 3) frame: its test crops, cut exactly as the eval dataset cuts them, and a thumbnail
    (short side at most ``THUMBNAIL_SHORT_SIDE``), as one record of fields ``views`` (crops, crop,
    crop, 3) and ``thumbnail``. A long high-resolution video so costs little memory per frame."""
    thumbnail_size = short_side_scale_size(height, width, min(THUMBNAIL_SHORT_SIDE, height, width))
    record = np.dtype(
        [("views", np.uint8, (crops, crop_size, crop_size, 3)), ("thumbnail", np.uint8, (*thumbnail_size, 3))]
    )

    def transform(rgb: np.ndarray) -> np.ndarray:
        frame = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # (1, C, H, W)
        views = center_crop_views(frame, crop_size=crop_size, short_side=eval_scale, num_crops=crops)
        thumbnail = F.resize(frame, list(thumbnail_size), antialias=True)
        kept = np.empty((), dtype=record)
        kept["views"] = torch.cat(views).permute(0, 2, 3, 1).numpy()
        kept["thumbnail"] = thumbnail[0].permute(1, 2, 0).numpy()
        return kept

    return transform


@torch.no_grad()
def score_views(
    model: torch.nn.Module,
    video: torch.Tensor,
    *,
    share_memory: bool,
    times: torch.Tensor | None = None,
    groups: list[list[int]] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits (V, K) of the V views of one video (1, V, C, T, H, W) at ``times`` (1, V) (None: even)
    and each memory stage's read weights (V, V). Views run one at a time, so peak memory is that of
    one clip whatever V; with ``share_memory`` the views of each of ``groups``
    (``comem.data.sampling.memory_groups``; None: all V views) read their collaborative memory
    (``memory_bank`` then ``forward_clip``; the read weights are 0 across groups), else each view's
    memory is its own clip (identity read weights). Several groups need ``times``."""
    num_views = video.shape[1]
    stages = model.memory_stage_names
    if not share_memory:
        logits = torch.cat(
            [
                model(video[:, i : i + 1], times=None if times is None else times[:, i : i + 1])[0]
                for i in range(num_views)
            ]
        )
        return logits, {stage: torch.eye(num_views) for stage in stages}
    groups = groups or [list(range(num_views))]
    if len(groups) > 1 and times is None:
        raise ValueError("views scored in several memory groups need their times")
    logits: list[torch.Tensor] = [torch.empty(0)] * num_views
    weights: dict[str, torch.Tensor] = {}
    for group in groups:
        group_times = None if times is None else times[:, group]
        banks = model.memory_bank(video[:, group], times=group_times)
        for position, view in enumerate(group):
            logits[view] = model.forward_clip(video[:, view], position, banks, times=group_times)
        rows = torch.tensor(group)
        for stage, weight in read_weights(model, banks, group_times).items():
            weights.setdefault(stage, torch.zeros(num_views, num_views))[rows[:, None], rows] = weight
    return torch.cat(logits), weights


def read_weights(
    model: torch.nn.Module, banks: dict[str, Bank], times: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Read weights (V, V) of each memory stage over one video's bank (1, V, C) of clips at ``times``
    (1, V); a stage with one memory per pathway gives one entry per pathway, ``stage[p]``."""
    weights: dict[str, torch.Tensor] = {}
    for stage, memory in zip(model.memory_stage_names, model.memories.values(), strict=True):
        bank = banks[stage]
        read = memory.attention(bank, bank, times, times)
        if isinstance(read, list):
            weights.update({f"{stage}[{p}]": part[0].float().cpu() for p, part in enumerate(read)})
        else:
            weights[stage] = read[0].float().cpu()
    return weights


def clip_indices(
    config: TrainConfig,
    num_frames: int,
    frame_times: Callable[[], np.ndarray] | None,
    *,
    clips: int,
    fps: float,
    clips_per_second: float | None,
    max_clips: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices (N, clip_len) of the clips spread uniformly over a video of ``num_frames``,
    sampled on the frame grid the model was trained on (every frame, or ``target_fps``'s ticks
    from ``frame_times()``, the frames' times in seconds), and the clips' times (N,) in the video
    (``comem.data.sampling.clip_times``)."""
    count = number_of_clips(
        num_frames, fps, clips=clips, clips_per_second=clips_per_second, max_clips=max_clips
    )
    grid = np.arange(num_frames)
    if config.target_fps is not None:
        if frame_times is None:
            raise FramesError(f"this model samples clips at {config.target_fps} fps: give the frames' fps")
        grid = resample_grid(frame_times(), config.target_fps)
    span = clip_span(config.clip_len, config.stride)
    starts = eval_clip_starts(len(grid), count, span)
    indices = grid[clip_frame_indices(starts, config.clip_len, config.stride, len(grid))]
    return indices, clip_times(starts, span, len(grid))


def score_clips(
    trained: ScoringModel,
    views: torch.Tensor,
    *,
    crops: int,
    aggregate: str,
    device: torch.device,
    times: np.ndarray | torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Per-clip probabilities (N, K), video scores (K,) and read weights (N, N) per memory stage of
    ``views`` (N·crops, C, T, H, W), normalised, clip-major, of clips at ``times`` (N,) in their
    video (None: even)."""
    count = views.shape[0] // crops
    clip_moments = even_times(1, count)[0] if times is None else torch.as_tensor(times, dtype=torch.float32)
    view_times = clip_moments.repeat_interleave(crops)[None]
    with autocast_for(device, trained.config.precision)():
        logits, weights = score_views(
            trained.model,
            views[None].to(device),
            share_memory=trained.config.shares_eval_memory,
            times=view_times,
            groups=memory_groups(count, crops, trained.config.clips_per_eval_memory),
        )
    logits = logits.view(1, count * crops, -1).float().cpu()
    per_clip = clip_probabilities(logits, multi_label=trained.multi_label).view(count, crops, -1).mean(dim=1)
    scores = video_scores(logits, multi_label=trained.multi_label, aggregate=aggregate)[0]
    # a clip's crops: the reader's rows averaged, the read columns summed (rows still sum to 1)
    pooled = {
        stage: weight.view(count, crops, count, crops).mean(dim=1).sum(dim=-1).numpy()
        for stage, weight in weights.items()
    }
    return per_clip.numpy(), scores.numpy(), pooled


def predict_video(
    trained: ScoringModel,
    path: str | Path,
    *,
    clips: int | None = None,
    clips_per_second: float | None = None,
    max_clips: int = 64,
    crops: int | None = None,
    aggregate: str = "mean",
    device: torch.device | None = None,
) -> VideoPrediction:
    """Score one video file; a file PyAV cannot read raises :class:`VideoDecodeError` naming it.

    ``clips`` and ``crops`` default to the checkpoint's eval setting.
    """
    config = trained.config
    crops = crops or config.crops
    device = device or next(trained.model.parameters()).device
    with VideoReader(path) as reader:
        indices, times = clip_indices(
            config,
            reader.num_frames,
            reader.frame_times,
            clips=clips or config.eval_views,
            fps=reader.fps,
            clips_per_second=clips_per_second,
            max_clips=max_clips,
        )
        kept = reader.read(indices, _transform(config, reader.height, reader.width, crops))  # (N, T) records
        num_frames, fps, height, width = reader.num_frames, reader.fps, reader.height, reader.width
        stated = reader.header_frames
        if stated > num_frames:
            rate = fps or 30.0
            log.warning(
                f"{path}: ends after {num_frames} of the {stated} frames its header states "
                f"({num_frames / rate:.1f} s of {stated / rate:.1f} s; a cut-off download?): "
                "predicted from the frames it holds"
            )
    meta = (num_frames, fps, height, width)
    return _prediction(trained, kept, indices, times, str(path), meta, crops, aggregate, device)


def predict_frames(
    trained: ScoringModel,
    frames: torch.Tensor | np.ndarray,
    *,
    fps: float | None = None,
    clips: int | None = None,
    clips_per_second: float | None = None,
    max_clips: int = 64,
    crops: int | None = None,
    aggregate: str = "mean",
    device: torch.device | None = None,
) -> VideoPrediction:
    """Score a decoded video, frames (T, H, W, 3) uint8, exactly as its file would be scored.

    ``fps`` is needed only by a model trained with ``target_fps`` (and by ``clips_per_second``).
    """
    frames = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise FramesError(
            f"frames must be a (T, H, W, 3) uint8 video, got {frames.dtype} of shape {tuple(frames.shape)}"
        )
    config = trained.config
    crops = crops or config.crops
    device = device or next(trained.model.parameters()).device
    frame_times = None if fps is None else (lambda: np.arange(len(frames)) / fps)
    indices, times = clip_indices(
        config,
        len(frames),
        frame_times,
        clips=clips or config.eval_views,
        fps=fps or 0.0,
        clips_per_second=clips_per_second,
        max_clips=max_clips,
    )
    height, width = frames.shape[1:3]
    transform = _transform(config, height, width, crops)
    done = {int(index): transform(frames[index]) for index in np.unique(indices)}
    kept = np.stack([[done[int(index)] for index in row] for row in indices])
    meta = (len(frames), fps or 0.0, height, width)
    return _prediction(trained, kept, indices, times, "<frames>", meta, crops, aggregate, device)


def predict_clips(
    trained: ScoringModel,
    clips: torch.Tensor,
    *,
    aggregate: str = "mean",
    device: torch.device | None = None,
    times: torch.Tensor | np.ndarray | None = None,
) -> VideoPrediction:
    """Score the N clips (N, C, T, H, W) of one video, already cut and normalised as in training,
    taken at ``times`` (N,) in the video (fractions of its duration; None: in order, evenly)."""
    if not isinstance(clips, torch.Tensor) or clips.ndim != 5 or not clips.is_floating_point():
        shape = tuple(clips.shape) if hasattr(clips, "shape") else type(clips).__name__
        raise FramesError(f"clips must be a float (N, C, T, H, W) tensor, got {shape}")
    device = device or next(trained.model.parameters()).device
    if times is not None and tuple(np.shape(times)) != (clips.shape[0],):
        raise FramesError(f"times must give one time per clip, ({clips.shape[0]},); got {np.shape(times)}")
    per_clip, scores, weights = score_clips(
        trained, clips.float(), crops=1, aggregate=aggregate, device=device, times=times
    )
    return VideoPrediction(
        path="<clips>",
        num_frames=0,
        fps=0.0,
        height=int(clips.shape[-2]),
        width=int(clips.shape[-1]),
        clip_frames=np.empty((0, 2), dtype=np.int64),
        clip_probabilities=per_clip,
        scores=scores,
        thumbnails=[],
        multi_label=trained.multi_label,
        attention=weights,
    )


def _transform(
    config: TrainConfig, height: int, width: int, crops: int
) -> Callable[[np.ndarray], np.ndarray]:
    eval_scale = config.eval_scale or config.crop_size
    return views_and_thumbnail(height, width, crop_size=config.crop_size, eval_scale=eval_scale, crops=crops)


def _prediction(
    trained: ScoringModel,
    kept: np.ndarray,
    indices: np.ndarray,
    times: np.ndarray,
    path: str,
    meta: tuple[int, float, int, int],
    crops: int,
    aggregate: str,
    device: torch.device,
) -> VideoPrediction:
    """Score the per-frame records ``kept`` (N, T) of clips at frame ``indices`` (N, T) and ``times`` (N,)."""
    # (N, T, crops, crop, crop, C) -> views (N * crops, C, T, crop, crop), clip-major as in eval
    views = torch.from_numpy(kept["views"]).permute(0, 2, 5, 1, 3, 4).flatten(0, 1).to(device)
    views = normalize(views, *input_normalization(trained))
    per_clip, scores, weights = score_clips(
        trained, views, crops=crops, aggregate=aggregate, device=device, times=times
    )
    num_frames, fps, height, width = meta
    return VideoPrediction(
        path=path,
        num_frames=num_frames,
        fps=fps,
        height=height,
        width=width,
        clip_frames=np.stack([indices[:, 0], indices[:, -1]], axis=1),
        clip_probabilities=per_clip,
        scores=scores,
        thumbnails=list(kept["thumbnail"][:, trained.config.clip_len // 2]),
        multi_label=trained.multi_label,
        attention=weights,
    )
