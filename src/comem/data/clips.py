"""``comem.VideoClips``: N clips of each video for your own training loop.

The dataset ``comem train`` reads, behind a small public surface: any data directory comem reads
(``comem.data.formats``) or a list of ``(path, label)``; each video decoded once for all its clips
(every clip's frame indices are planned first, then one decoding pass); the same clip sampling and
crops as ``comem train`` (training: N clips at random positions, short-side jitter, random crop and
flip; evaluation: N clips spread evenly, centre crops). Map-style, one item per video, every item a
pure function of ``(seed, epoch, index)``, so ``DataLoader`` workers and ``DistributedSampler`` work
as for any dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from comem.data.datasets import (
    DatasetFormatError,
    MultiClipVideoDataset,
    VideoRecord,
    VideoSplits,
    collate_clips,
)
from comem.data.formats import load_splits

Split = Literal["train", "val", "test"]


def _records(
    source: str | Path | Sequence[tuple[str | Path, int]], split: Split
) -> tuple[list[VideoRecord], list[str], bool]:
    """The records of ``split`` of a data directory or of a ``(path, label)`` list, the class names
    and whether the labels are multi-label."""
    if isinstance(source, (str, Path)):
        splits: VideoSplits = load_splits(source)
        records = getattr(splits, split)
        if records is None:
            raise DatasetFormatError(f"{source}/: no {split} split")
        return records, list(splits.class_names), splits.multi_label
    records = []
    for position, item in enumerate(source):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], int)):
            raise DatasetFormatError(
                f"VideoClips source item {position}: expected (path, label), got {item!r}"
            )
        records.append(VideoRecord(path=Path(item[0]), label=item[1]))
    if not records:
        raise DatasetFormatError("VideoClips source: no videos")
    return records, [str(k) for k in range(1 + max(record.label for record in records))], False


class VideoClips(torch.utils.data.Dataset):
    """N clips of every video of ``source``, decoded once per video.

    Args:
        source: a data directory in any format comem reads (a folder with ``train.csv`` and
            ``val.csv``, Kinetics, Charades, Something-Something), or a list of ``(path, label)``.
        clips: N, the clips per video.
        clip_len: frames per clip, ``stride`` frames apart.
        crop_size: the side of the square crops.
        train: training sampling and augmentation, else evaluation's (clips spread evenly, centre crop).
        split: of a data directory, the split to read (default ``train`` when ``train``, else ``val``).
        seed: the sampling seed; ``set_epoch(e)`` draws epoch ``e``'s clips.
        decoder: ``pyav`` (default), ``torchcodec`` or ``frames``.
        target_fps: sample clips on a grid of this frame rate instead of every frame.

    An item is ``{"video": uint8 (N, C, T, crop, crop), "label": int (or multi-hot (K,)),
    "times": float32 (N,) (each clip's centre as a fraction of the video's duration, what
    ``comem.step(..., times=)`` takes), "span": float32 (N, 2) (each clip's start and end in
    seconds), "video_index", "path"}``; a video that cannot be decoded gives
    ``{"error": "<path>: <problem>", ...}``. Batch with ``collate_fn=VideoClips.collate``, which
    stacks the items and drops broken videos, naming them in ``batch["skipped"]``. ``class_names``
    names the labels (a directory's ``classes.txt``, else ``"0"``, ``"1"``, …).
    """

    collate = staticmethod(collate_clips)

    def __init__(
        self,
        source: str | Path | Sequence[tuple[str | Path, int]],
        *,
        clips: int = 4,
        clip_len: int = 8,
        stride: int = 2,
        crop_size: int = 112,
        train: bool = True,
        split: Split | None = None,
        seed: int = 0,
        decoder: str = "pyav",
        target_fps: float | None = None,
    ) -> None:
        records, self.class_names, multi_label = _records(source, split or ("train" if train else "val"))
        num_classes = len(self.class_names) if multi_label else None
        self.dataset = MultiClipVideoDataset(
            records,
            num_clips=clips,
            clip_len=clip_len,
            stride=stride,
            crop_size=crop_size,
            train=train,
            seed=seed,
            num_classes=num_classes,
            decoder=decoder,
            target_fps=target_fps,
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose clip positions, crops and flips items draw."""
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[index]
