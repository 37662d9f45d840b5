"""Scan a dataset before a long run: which videos cannot be read, which are shorter than a clip,
which hold fewer frames than their header promises (cut-off downloads), which are not on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from comem.data.datasets import VideoRecord, VideoSplits
from comem.data.decode import VideoDecodeError, open_video


@dataclass
class VideoCheck:
    """One video's outcome; ``error`` is None for a readable video."""

    path: str
    split: str
    frames: int = 0
    header_frames: int = 0
    error: str | None = None


def check_video(record: VideoRecord, split: str, *, decoder: str = "pyav", full: bool = False) -> VideoCheck:
    """Open ``record`` and decode its first and last frames (every frame if ``full``)."""
    result = VideoCheck(str(record.path), split)
    try:
        with open_video(record.path, decoder=decoder, fps=record.fps) as reader:
            result.frames = reader.num_frames
            result.header_frames = getattr(reader, "header_frames", 0)
            wanted = np.arange(reader.num_frames) if full else np.unique([0, reader.num_frames - 1])
            for chunk in np.array_split(wanted, max(len(wanted) // 64, 1)):
                reader.read(chunk)
    except VideoDecodeError as error:
        result.error = str(error)
    return result


class _CheckItems(torch.utils.data.Dataset):
    def __init__(self, items: list[tuple[VideoRecord, str]], decoder: str, full: bool) -> None:
        self.items, self.decoder, self.full = items, decoder, full

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> VideoCheck:
        record, split = self.items[index]
        return check_video(record, split, decoder=self.decoder, full=self.full)


def _first(batch: list[VideoCheck]) -> VideoCheck:
    return batch[0]


@dataclass
class DataReport:
    """What ``comem check-data`` writes (as JSON) and prints."""

    data: str
    data_format: str
    videos: int = 0
    readable: int = 0
    min_frames: int = 1
    unreadable: list[dict] = field(default_factory=list)
    short: list[dict] = field(default_factory=list)
    truncated: list[dict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return len(self.unreadable) + len(self.short) + len(self.truncated) + len(self.missing)


def check_splits(
    data_dir: Path,
    splits: VideoSplits,
    *,
    min_frames: int = 1,
    decoder: str = "pyav",
    full: bool = False,
    workers: int = 0,
) -> DataReport:
    """Check every video of every split once (a video listed in two splits is checked once)."""
    items: dict[str, tuple[VideoRecord, str]] = {}
    for split in ("train", "val", "test"):
        for record in getattr(splits, split) or []:
            items.setdefault(str(record.path), (record, split))
    report = DataReport(
        str(data_dir), splits.data_format, min_frames=min_frames, missing=list(splits.missing)
    )
    loader = torch.utils.data.DataLoader(
        _CheckItems(list(items.values()), decoder, full), batch_size=1, num_workers=workers, collate_fn=_first
    )
    for result in loader:
        report.videos += 1
        entry = {"path": result.path, "split": result.split}
        if result.error is not None:
            report.unreadable.append({**entry, "error": result.error})
            continue
        report.readable += 1
        if result.frames < min_frames:
            report.short.append({**entry, "frames": result.frames})
        if result.header_frames > result.frames:
            report.truncated.append({**entry, "frames": result.frames, "header_frames": result.header_frames})
    return report
