"""The PySlowFast Kinetics CSV format and the map-style multi-clip video dataset.

A data directory holds ``train.csv`` and ``val.csv`` (``test.csv`` optional), one ``path label`` per
line separated by whitespace, paths relative to the directory or absolute, and optionally
``classes.txt`` with one class name per line. Format problems raise :class:`DatasetFormatError` naming
the file and line up front, before any training starts.
"""

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from comem.data.decode import ClipSource, VideoDecodeError, open_video
from comem.data.sampling import (
    clip_frame_indices,
    clip_span,
    clip_times,
    eval_clip_starts,
    resample_grid,
    spans_overlapping,
    train_clip_starts,
)
from comem.data.transforms import center_crop_views, rand_augment, random_resized_crop, train_crop
from comem.errors import UserError
from comem.textfile import read_text

_FORMAT_HINT = "expected PySlowFast format: one 'path label' per line"


class DatasetFormatError(UserError, ValueError):
    """A data directory or CSV that does not follow the format; the message names file and line."""


@dataclass(frozen=True)
class VideoRecord:
    """One video of a split; ``path`` (a file, or a folder of frames) is already resolved.

    ``label`` is a class index, or for multi-label data (Charades) the tuple of every class the video
    shows (possibly empty). ``fps`` is the frame rate of a frame folder (video files carry their
    own); ``spans`` are ``(class, start s, end s)`` of each action where the annotation has them.
    """

    path: Path
    label: int | tuple[int, ...]
    fps: float | None = None
    spans: tuple[tuple[int, float, float], ...] = ()


def _parse_label(text: str, where: str) -> int:
    try:
        label = int(text)
    except ValueError:
        raise DatasetFormatError(f"{where}: label '{text}' is not an integer") from None
    if label < 0:
        raise DatasetFormatError(f"{where}: label {label} is negative")
    return label


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` lies under ``root`` once ``..`` and ``.`` are resolved (symbolic links are
    not followed: a dataset may link its video folder from elsewhere)."""
    path, root = (Path(os.path.normpath(os.path.abspath(p))) for p in (path, root))
    return path == root or root in path.parents


def _read_video_csv(
    csv_path: Path, root: Path, num_classes: int | None, classes_source: str, outside: bool = False
) -> list[VideoRecord]:
    records = []
    for number, line in enumerate(read_text(csv_path, DatasetFormatError).splitlines(), start=1):
        columns = line.split()
        if not columns:
            continue
        where = f"{csv_path}:{number}"
        if len(columns) != 2:
            hint = ""
            if len(columns) > 2:
                hint = " (paths with spaces are not supported)"
            elif "," in line:
                hint = " (columns are separated by whitespace, not commas)"
            raise DatasetFormatError(f"{where}: expected 2 columns 'path label', got {len(columns)}{hint}")
        label = _parse_label(columns[1], where)
        if num_classes is not None and label >= num_classes:
            raise DatasetFormatError(
                f"{where}: label {label} out of range [0, {num_classes}){classes_source}"
            )
        if not outside and not _inside(root / columns[0], root):
            raise DatasetFormatError(
                f"{where}: {columns[0]} is outside the data directory {root}; "
                "pass --allow-outside-data to read videos from elsewhere"
            )
        records.append(VideoRecord(path=root / columns[0], label=label))
    if not records:
        raise DatasetFormatError(f"{csv_path}: empty (no videos)")
    return records


def read_video_csv(
    csv_path: Path, root: Path, num_classes: int | None = None, *, outside: bool = False
) -> list[VideoRecord]:
    """Records of one split CSV; relative paths are joined to ``root``, blank lines skipped. A path
    outside ``root`` (absolute, or through ``..``) is refused unless ``outside``.

    Video files are not checked here (a stat per video is slow on network storage); a missing one
    surfaces as a skipped sample when it is decoded.
    """
    return _read_video_csv(Path(csv_path), Path(root), num_classes, "", outside)


def read_class_names(data_dir: Path) -> list[str] | None:
    """Class names from ``data_dir/classes.txt`` (line ``i`` names label ``i``), or None if absent."""
    path = Path(data_dir) / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in read_text(path, DatasetFormatError).splitlines() if line.strip()]
    if not names:
        raise DatasetFormatError(f"{path}: empty (no class names)")
    check_unique_classes(names, path)
    return names


def check_unique_classes(names: list[str], path: Path) -> None:
    """Two classes of one name would make a label ambiguous in every report: refused, naming the lines."""
    seen: dict[str, int] = {}
    for number, name in enumerate(names, start=1):
        if name in seen:
            raise DatasetFormatError(
                f"{path}: class '{name}' is listed twice (entries {seen[name]} and {number})"
            )
        seen[name] = number


@dataclass(frozen=True)
class VideoSplits:
    """Everything a data directory holds; ``test`` is None without a (labelled) test split.

    ``multi_label``: labels are tuples of classes (multi-hot targets, BCE, mAP). ``missing`` names
    listed videos that were not found on disk and were left out (``"<annotation file>: <id>"``).
    """

    train: list[VideoRecord]
    val: list[VideoRecord]
    test: list[VideoRecord] | None
    class_names: list[str]
    multi_label: bool = False
    missing: tuple[str, ...] = ()
    data_format: str = "slowfast"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_kinetics_csv_dir(data_dir: str | Path, *, outside: bool = False) -> VideoSplits:
    """Parse and validate a PySlowFast-style data directory (``outside``: its CSVs may name videos
    outside it).

    ``num_classes`` is the length of ``classes.txt`` when present (labels are checked against it),
    else the largest label over all splits plus one, with class names ``"0", "1", ...``.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetFormatError(f"{data_dir}/: data directory not found")
    for required in ("train.csv", "val.csv"):
        if not (data_dir / required).is_file():
            raise DatasetFormatError(f"{data_dir}/: no {required} ({_FORMAT_HINT})")
    class_names = read_class_names(data_dir)
    num_classes = None if class_names is None else len(class_names)
    source = "" if class_names is None else f" (classes.txt has {num_classes} classes)"
    splits = {
        name: _read_video_csv(data_dir / f"{name}.csv", data_dir, num_classes, source, outside)
        for name in ("train", "val", "test")
        if name != "test" or (data_dir / "test.csv").is_file()
    }
    if class_names is None:
        num_classes = 1 + max(record.label for records in splits.values() for record in records)
        class_names = [str(i) for i in range(num_classes)]
    return VideoSplits(
        train=splits["train"],
        val=splits["val"],
        test=splits.get("test"),
        class_names=class_names,
    )


log = logging.getLogger(__name__)


def short_video_warning(path: Path, frames: int, num_clips: int, clip_len: int, stride: int) -> str | None:
    """What a video of ``frames`` frames cannot give: one clip's span (its last frame is repeated), or
    ``num_clips`` clips of distinct frames (clips then overlap). ``None`` when it gives both."""
    span = clip_span(clip_len, stride)
    if frames < span:
        return (
            f"{path}: {frames} frames, fewer than a clip spans (clip_len {clip_len} x stride {stride} -> "
            f"{span} frames): its last frame is repeated (shown once; comem check-data lists them all)"
        )
    if num_clips * clip_len > frames:
        return (
            f"{path}: {frames} frames, fewer than clips {num_clips} x clip_len {clip_len} = "
            f"{num_clips * clip_len}: its clips overlap and repeat frames (shown once)"
        )
    return None


class MultiClipVideoDataset(torch.utils.data.Dataset):
    """Map-style: one item = one video with ALL its N clips (style.md: no stateful IterableDataset).

    An item is a pure function of ``(seed, epoch, index)``: its generator is
    ``np.random.default_rng([seed, epoch, index])``, so results do not depend on the worker count or
    order and a resumed run reproduces the interrupted one. A video that fails to decode yields an
    ``"error"`` item instead of raising, so one bad file does not kill a multi-day run;
    :func:`collate_clips` drops and reports it.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        *,
        num_clips: int,
        clip_len: int,
        stride: int,
        crop_size: int,
        train: bool,
        seed: int = 0,
        min_scale: int | None = None,
        max_scale: int | None = None,
        eval_scale: int | None = None,
        num_crops: int = 1,
        num_classes: int | None = None,
        decoder: str = "pyav",
        target_fps: float | None = None,
        span_labels: bool = False,
        flip: bool = True,
        label_mirror: Sequence[int] | None = None,
        resized_crop_scale: tuple[float, float] | None = None,
        randaug_ops: int = 0,
        randaug_magnitude: int = 9,
        opener: Callable[..., ClipSource] = open_video,
    ) -> None:
        self.records = list(records)
        self.multi_label = any(isinstance(record.label, tuple) for record in self.records)
        if self.multi_label and num_classes is None:
            raise ValueError("multi-label records need num_classes to build multi-hot targets")
        self.num_classes = num_classes
        self.decoder = decoder
        self.target_fps = target_fps
        self.span_labels = span_labels
        self.opener = opener  # how a record is opened; the data benchmark swaps in a naive reader
        # Training augmentation. ``flip``: each clip mirrored with probability 1/2; with
        # ``label_mirror`` (class -> class of the mirrored video) a whole video is mirrored or not and
        # its label follows. ``resized_crop_scale``: Inception-style crops instead of the short-side
        # jitter; ``randaug_ops`` > 0: RandAugment, the same for all frames of a clip.
        self.flip = flip
        self.label_mirror = None if label_mirror is None else torch.as_tensor(list(label_mirror))
        self.resized_crop_scale = resized_crop_scale
        self.randaug_ops = randaug_ops
        self.randaug_magnitude = randaug_magnitude
        self.num_clips = num_clips
        self.clip_len = clip_len
        self.stride = stride
        self.span = clip_span(clip_len, stride)
        self.crop_size = crop_size
        self.train = train
        self.seed = seed
        self.min_scale = crop_size if min_scale is None else min_scale
        self.max_scale = round(crop_size * 8 / 7) if max_scale is None else max_scale
        self.eval_scale = crop_size if eval_scale is None else eval_scale
        self.num_crops = num_crops
        self.epoch = 0
        self.warned_short = False  # one warning per process for videos too short for the clips asked
        if num_clips < 1 or crop_size < 1:
            raise ValueError(f"num_clips and crop_size must be >= 1, got {num_clips} and {crop_size}")
        if not crop_size <= self.min_scale <= self.max_scale:
            raise ValueError(
                "need crop_size <= min_scale <= max_scale, "
                f"got {crop_size}, {self.min_scale}, {self.max_scale}"
            )
        if self.eval_scale < crop_size:
            raise ValueError(f"eval_scale must be >= crop_size, got {self.eval_scale} < {crop_size}")
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose clip starts, scales, crops and flips ``__getitem__`` draws."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        """``{"video": uint8 (N * num_crops, C, T, crop, crop), "times": float32 (N * num_crops,),
        "span": float32 (N * num_crops, 2), "label", "video_index", "path"}``.

        ``times`` are the views' times in the video (``comem.data.sampling.clip_times``), ``span``
        their start and end in seconds (the crops of one clip share its time and span).

        ``label`` is an int, or float32 multi-hot ``(K,)`` for multi-label data; with
        ``span_labels`` a training item has per-clip targets ``(N, K)``: the actions whose time span
        overlaps that clip. Eval views are clip-major: clip 0's crops, then clip 1's. ``span``
        float32 (N, 2): each clip's start and end in seconds; ``times`` float32 (N,): each clip's
        centre as a fraction of the video's duration (what the memory takes). On a decode failure
        the item is ``{"error": message, "video_index", "path"}``.
        """
        record = self.records[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        try:
            with self.opener(record.path, decoder=self.decoder, fps=record.fps) as reader:
                times = reader.frame_times()
                if not self.warned_short:
                    warning = short_video_warning(
                        record.path, len(times), self.num_clips, self.clip_len, self.stride
                    )
                    if warning is not None:
                        log.warning(warning)
                        self.warned_short = True
                indices, when = self._plan(times, rng)
                frames = reader.read(indices)
        except VideoDecodeError as error:
            return {"error": str(error), "video_index": index, "path": str(record.path)}
        clips = torch.from_numpy(frames).permute(0, 1, 4, 2, 3)  # (N, T, C, H, W)
        mirrored = self.train and self.label_mirror is not None and bool(rng.random() < 0.5)
        views = [view.transpose(0, 1) for clip in clips for view in self._views(clip, rng, mirrored)]
        target = self._target(record, times[indices])
        if mirrored:
            target = (
                int(self.label_mirror[target]) if isinstance(target, int) else target[..., self.label_mirror]
            )
        span, _ = clip_spans(times, indices)
        crops = len(views) // len(when)
        return {
            "video": torch.stack(views),
            "times": torch.from_numpy(when).repeat_interleave(crops),
            "span": span.repeat_interleave(crops, dim=0),
            "label": target,
            "video_index": index,
            "path": str(record.path),
        }

    def _plan(self, times: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Frame indices ``(N, clip_len)`` (on the native frame grid, or on a ``target_fps`` grid)
        and the clips' times ``(N,)`` (``clip_times``, a fraction of the grid's length)."""
        grid = np.arange(len(times)) if self.target_fps is None else resample_grid(times, self.target_fps)
        if self.train:
            starts = train_clip_starts(len(grid), self.num_clips, self.span, rng)
        else:
            starts = eval_clip_starts(len(grid), self.num_clips, self.span)
        indices = grid[clip_frame_indices(starts, self.clip_len, self.stride, len(grid))]
        return indices, clip_times(starts, self.span, len(grid))

    def _target(self, record: VideoRecord, clip_times: np.ndarray) -> int | torch.Tensor:
        """Class index, multi-hot ``(K,)``, or with ``span_labels`` per-clip multi-hot ``(N, K)``."""
        if not self.multi_label:
            return record.label
        if not (self.train and self.span_labels):
            return self._multi_hot(record.label)
        if not record.spans:  # no time spans known: every clip gets the video's labels
            return self._multi_hot(record.label).expand(len(clip_times), -1).clone()
        return torch.stack(
            [self._multi_hot(spans_overlapping(record.spans, times[:1], times[-1:])) for times in clip_times]
        )

    def _multi_hot(self, labels: tuple[int, ...]) -> torch.Tensor:
        target = torch.zeros(self.num_classes, dtype=torch.float32)
        target[list(labels)] = 1.0
        return target

    def _views(self, clip: torch.Tensor, rng: np.random.Generator, mirrored: bool) -> list[torch.Tensor]:
        """Spatial views ``(T, C, crop, crop)`` of one clip ``(T, C, H, W)``; each clip draws its own
        crop (and flip, unless the video's ``mirrored`` decides it)."""
        if not self.train:
            return center_crop_views(
                clip, crop_size=self.crop_size, short_side=self.eval_scale, num_crops=self.num_crops
            )
        short_side = int(rng.integers(self.min_scale, self.max_scale + 1))
        flip = bool(rng.random() < 0.5) and self.flip  # drawn even when off: the crops stay the same
        if self.label_mirror is not None:
            flip = mirrored
        if self.resized_crop_scale is None:
            view = train_crop(clip, crop_size=self.crop_size, short_side=short_side, flip=flip, rng=rng)
        else:
            view = random_resized_crop(
                clip, crop_size=self.crop_size, scale=self.resized_crop_scale, rng=rng, flip=flip
            )
        if self.randaug_ops:
            seed = int(rng.integers(2**31))
            view = rand_augment(view, ops=self.randaug_ops, magnitude=self.randaug_magnitude, seed=seed)
        return [view]


def clip_spans(frame_times: np.ndarray, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Each clip's time span and centre, from the video's frame times (F,) in seconds and the clips'
    frame indices (N, T): start and end (N, 2) in seconds (the end is the last frame's end) and the
    centre (N,) as a fraction of the video's duration, float32."""
    period = float(np.median(np.diff(frame_times))) if len(frame_times) > 1 else 1.0
    duration = float(frame_times[-1]) + period
    start = frame_times[indices[:, 0]]
    end = frame_times[indices[:, -1]] + period
    span = torch.from_numpy(np.stack([start, end], axis=1)).float()
    return span, ((span[:, 0] + span[:, 1]) / 2 / duration).clamp(0.0, 1.0)


def collate_clips(samples: list[dict]) -> dict:
    """Batch items of :class:`MultiClipVideoDataset`, dropping failed ones.

    Returns ``{"video": uint8 (B, N, C, T, H, W), "times": float32 (B, N) (each clip's time in its
    video), "span": float32 (B, N, 2) (its start and end in seconds, where the items give it),
    "label": int64 (B,) or float32 multi-hot (B, K) (per-clip (B, N, K) with span labels),
    "video_index": int64 (B,), "skipped": list of error messages}``; if every sample failed,
    ``video`` has shape ``(0,)`` and ``label`` no elements.
    """
    good = [sample for sample in samples if "error" not in sample]
    skipped = [sample["error"] for sample in samples if "error" in sample]
    if good:
        video = torch.stack([sample["video"] for sample in good])
        times = torch.stack([sample["times"] for sample in good])
    else:
        video = torch.empty((0,), dtype=torch.uint8)
        times = torch.empty((0, 0), dtype=torch.float32)
    if good and isinstance(good[0]["label"], torch.Tensor):
        label = torch.stack([sample["label"] for sample in good])
    else:
        label = torch.tensor([sample["label"] for sample in good], dtype=torch.int64)
    return {
        "video": video,
        "times": times,
        "label": label,
        "video_index": torch.tensor([sample["video_index"] for sample in good], dtype=torch.int64),
        # clip spans in seconds, where the items know them (file-backed datasets do)
        **(
            {"span": torch.stack([sample["span"] for sample in good])}
            if good and all("span" in sample for sample in good)
            else {}
        ),
        "skipped": skipped,
    }
