"""Clip index math: which frames each clip of a video covers, as pure functions of the frame count.

Kept free of I/O so the decoder can be handed every clip's indices up front ("indices first, decode
once") and so the sampling conventions are trivial to unit-test.
"""

from collections.abc import Sequence

import numpy as np


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def clip_span(clip_len: int, stride: int) -> int:
    """Number of consecutive frames one clip covers: ``(clip_len - 1) * stride + 1``."""
    _check_positive(clip_len=clip_len, stride=stride)
    return (clip_len - 1) * stride + 1


def _segment_length(num_frames: int, num_clips: int, span: int) -> float:
    """Length of one of ``num_clips`` equal segments of the valid start range ``[0, num_frames - span]``."""
    _check_positive(num_frames=num_frames, num_clips=num_clips, span=span)
    return (max(num_frames - span, 0) + 1) / num_clips


def train_clip_starts(num_frames: int, num_clips: int, span: int, rng: np.random.Generator) -> list[int]:
    """TSN-style random starts: one uniform draw inside each of ``num_clips`` equal segments.

    Covering every segment makes the clips of one video span its whole length, which video-level
    training needs; a video shorter than ``span`` gets all starts at 0. Sorted ascending.
    """
    segment = _segment_length(num_frames, num_clips, span)
    offsets = rng.random(num_clips)
    return [int((i + offsets[i]) * segment) for i in range(num_clips)]


def eval_clip_starts(num_frames: int, num_clips: int, span: int) -> list[int]:
    """Deterministic starts at the centres of ``num_clips`` equal segments of the valid start range.

    This is the PySlowFast/MMAction2 test-clip convention; ``num_clips=1`` gives the middle clip.
    """
    segment = _segment_length(num_frames, num_clips, span)
    return [int((i + 0.5) * segment) for i in range(num_clips)]


def memory_groups(num_clips: int, crops: int, clips_per_memory: int | None) -> list[list[int]]:
    """Which of a video's evaluation views build one memory together: lists of indices into its
    clip-major views (clip k's crop r is view ``k * crops + r``), every view in exactly one list.

    ``clips_per_memory`` None: one memory of all views. Otherwise the views are grouped as training
    saw them: the clips are dealt into G = ceil(num_clips / clips_per_memory) interleaved groups
    (group g holds clips g, g + G, g + 2G, ...), so each group spreads over the whole video as a
    training sample's clips do, and each group builds one memory per crop position (a training
    clip has one crop). With at most ``clips_per_memory`` clips and one crop this is one memory of
    all views.
    """
    _check_positive(num_clips=num_clips, crops=crops)
    if clips_per_memory is None:
        return [list(range(num_clips * crops))]
    _check_positive(clips_per_memory=clips_per_memory)
    count = -(-num_clips // clips_per_memory)
    return [
        [clip * crops + crop for clip in range(first, num_clips, count)]
        for first in range(count)
        for crop in range(crops)
    ]


def clip_frame_indices(starts: Sequence[int], clip_len: int, stride: int, num_frames: int) -> np.ndarray:
    """Frame indices of every clip, int64 of shape ``(len(starts), clip_len)``.

    Indices past the end are clamped to ``num_frames - 1``, so a short video repeats its last frame
    (as PySlowFast does) instead of yielding a shorter clip.
    """
    _check_positive(clip_len=clip_len, stride=stride, num_frames=num_frames)
    if len(starts) == 0:
        raise ValueError("starts must hold at least one clip start")
    start_array = np.asarray(starts, dtype=np.int64)
    if start_array.ndim != 1 or (start_array < 0).any():
        raise ValueError(f"starts must be a flat sequence of non-negative ints, got {list(starts)}")
    indices = start_array[:, None] + stride * np.arange(clip_len, dtype=np.int64)[None, :]
    return np.clip(indices, 0, num_frames - 1)


def clip_times(starts: Sequence[int], span: int, num_frames: int) -> np.ndarray:
    """Each clip's time in its video (float32, ``(len(starts),)``): the centre of the frames it covers
    as a fraction of the video's duration, ``(start + span / 2) / num_frames``, clamped to [0, 1].

    Frame ``f`` covers ``[f, f + 1) / num_frames`` of the duration, so a clip spanning the whole
    video is at 0.5 and the evenly spread eval clips of a long video are near ``(i + 0.5) / N``.
    """
    _check_positive(span=span, num_frames=num_frames)
    centres = (np.asarray(starts, dtype=np.float64) + span / 2) / num_frames
    return np.clip(centres, 0.0, 1.0).astype(np.float32)


def resample_grid(frame_times: np.ndarray, target_fps: float) -> np.ndarray:
    """Frame indices of a ``target_fps`` resampling of a video whose frame ``i`` shows at
    ``frame_times[i]`` seconds: entry ``j`` is the frame on screen at time ``j / target_fps``.

    Clip sampling then runs on this grid, so ``stride`` counts target-rate frames whatever the
    file's rate, and variable-frame-rate files are sampled evenly in time.
    """
    if target_fps <= 0:
        raise ValueError(f"target_fps must be > 0, got {target_fps}")
    times = np.asarray(frame_times, dtype=np.float64) - float(frame_times[0])
    count = max(int(np.floor(times[-1] * target_fps + 1e-6)) + 1, 1)
    on_screen = np.searchsorted(times, np.arange(count) / target_fps + 1e-9, side="right") - 1
    return np.clip(on_screen, 0, len(times) - 1).astype(np.int64)


def spans_overlapping(
    spans: Sequence[tuple[int, float, float]], starts: np.ndarray, ends: np.ndarray
) -> tuple[int, ...]:
    """Classes of the ``(class, start, end)`` spans that overlap any ``[starts[i], ends[i]]`` (seconds)."""
    windows = list(zip(starts.tolist(), ends.tolist(), strict=True))
    return tuple(
        sorted({label for label, low, high in spans if any(low <= e and s <= high for s, e in windows)})
    )
