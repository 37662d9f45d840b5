"""Predict the classes of any video file with a trained checkpoint, clip by clip along its timeline.

The video is decoded once: K clips uniformly spread over its whole length (the eval convention),
each kept frame reduced on the fly to its test crops and a thumbnail, so long high-resolution videos
fit in memory and the crops equal those ``comem eval`` scores. The
collaborative memory is built from all K clips, each clip is scored reading it, and the clip
probabilities give both the video's score (their mean or max) and a timeline of where the evidence
lies. Videos shorter than a clip repeat their last frame, as in training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from comem.data.decode import VideoReader
from comem.data.sampling import clip_frame_indices, clip_span, eval_clip_starts, resample_grid
from comem.data.transforms import center_crop_views, normalize, short_side_scale_size
from comem.engine.evaluate import autocast_for, clip_probabilities, video_scores
from comem.engine.trained import TrainedModel
from comem.models.build import VideoModel

# Thumbnails (each clip's middle frame) are kept at most this short side: legible in a timeline.
THUMBNAIL_SHORT_SIDE = 160


@dataclass
class VideoPrediction:
    """Scores of one video: per clip (N, K) and for the video (K,), with where each clip lies."""

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
def view_logits(model: VideoModel, video: torch.Tensor, *, share_memory: bool) -> torch.Tensor:
    """Logits (V, K) of the V views of one video (1, V, C, T, H, W), run one view at a time so peak
    memory is that of one clip whatever V; with ``share_memory`` every view still reads the
    collaborative memory of all V views (``memory_bank`` then ``forward_clip``)."""
    num_views = video.shape[1]
    if not share_memory:
        return torch.cat([model(video[:, i : i + 1], share_memory=False)[0] for i in range(num_views)])
    banks = model.memory_bank(video)
    return torch.cat([model.forward_clip(video[:, i], i, banks) for i in range(num_views)])


def predict_video(
    trained: TrainedModel,
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
    clips = clips or config.eval_views
    crops = crops or config.crops
    device = device or next(trained.model.parameters()).device
    eval_scale = config.eval_scale or config.crop_size
    span = clip_span(config.clip_len, config.stride)
    with VideoReader(path) as reader:
        count = number_of_clips(
            reader.num_frames, reader.fps, clips=clips, clips_per_second=clips_per_second, max_clips=max_clips
        )
        # the frame grid clips are sampled on, as the eval dataset does: every frame, or --target-fps's
        grid = np.arange(reader.num_frames)
        if config.target_fps is not None:
            grid = resample_grid(reader.frame_times(), config.target_fps)
        starts = eval_clip_starts(len(grid), count, span)
        indices = grid[clip_frame_indices(starts, config.clip_len, config.stride, len(grid))]
        transform = views_and_thumbnail(
            reader.height, reader.width, crop_size=config.crop_size, eval_scale=eval_scale, crops=crops
        )
        kept = reader.read(indices, transform)  # (N, T) records
        num_frames, fps, height, width = reader.num_frames, reader.fps, reader.height, reader.width
    # (N, T, crops, crop, crop, C) -> views (N * crops, C, T, crop, crop), clip-major as in eval
    views = torch.from_numpy(kept["views"]).permute(0, 2, 5, 1, 3, 4).flatten(0, 1)
    video = normalize(views[None].to(device), *trained.model.normalization)
    with autocast_for(device, config.amp)():
        logits = view_logits(trained.model, video, share_memory=config.shares_eval_memory)
    logits = logits.view(1, count * crops, -1).float().cpu()
    per_clip = clip_probabilities(logits, multi_label=trained.multi_label).view(count, crops, -1).mean(dim=1)
    scores = video_scores(logits, multi_label=trained.multi_label, aggregate=aggregate)[0]
    return VideoPrediction(
        path=str(path),
        num_frames=num_frames,
        fps=fps,
        height=height,
        width=width,
        clip_frames=np.stack([indices[:, 0], indices[:, -1]], axis=1),
        clip_probabilities=per_clip.numpy(),
        scores=scores.numpy(),
        thumbnails=list(kept["thumbnail"][:, config.clip_len // 2]),
        multi_label=trained.multi_label,
    )
