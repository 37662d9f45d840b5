"""AVA data in the layout PySlowFast documents, and the keyframe dataset built on it.

Layout (``--ava-version`` picks the annotation file names)::

    ROOT/frames/VIDEO/VIDEO_000001.jpg …       frames at 30 fps of the 15th-30th minute (frame 0 = second 900)
    ROOT/frame_lists/{train,val}.csv             "original_vido_id video_id frame_id path labels" (header row)
    ROOT/annotations/ava_{split}_v2.2.csv        video_id,timestamp,x1,y1,x2,y2,action_id,person_id
    ROOT/annotations/ava_{split}_predicted_boxes.csv   person proposals …,action_id(empty),score
    ROOT/annotations/ava_action_list_v2.2_for_activitynet_2019.pbtxt   (v2.1: …_v2.1_for_activitynet_2018)
    ROOT/annotations/ava_{split}_excluded_timestamps_v2.2.csv

Boxes are normalised to [0, 1], so frames are resized to a square ``size`` without touching them.
A dataset item is one keyframe: its clip (clip 0) plus ``num_clips - 1`` memory clips of the same
movie, one next to the keyframe clip and the others spread over the movie, and the keyframe's
person boxes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from comem.tasks.ava.evaluation import AvaFormatError, Category, read_labelmap
from comem.tasks.ava.frames import FrameSource, JpegFrames, find_movies
from comem.textfile import open_text

FPS = 30
FIRST_SECOND = 900  # frame 0 of the extracted frames
KEYFRAME_SECONDS = range(902, 1799)  # AVA annotates seconds 902..1798
AVA_VERSIONS = ("2.1", "2.2")
LABELMAP_NAMES = {
    "2.1": "ava_action_list_v2.1_for_activitynet_2018.pbtxt",
    "2.2": "ava_action_list_v2.2_for_activitynet_2019.pbtxt",
}


def frame_of_second(second: int) -> int:
    """Index into a movie's frame list of the keyframe at ``second`` (PySlowFast's sec_to_frame)."""
    return (second - FIRST_SECOND) * FPS


@dataclass(frozen=True)
class AvaLayout:
    """Where the files of an AVA data dir are."""

    root: Path
    version: str = "2.2"

    @property
    def annotations(self) -> Path:
        return self.root / "annotations"

    def frame_list(self, split: str) -> Path:
        return self.root / "frame_lists" / f"{split}.csv"

    def groundtruth(self, split: str) -> Path:
        return self.annotations / f"ava_{split}_v{self.version}.csv"

    def proposals(self, split: str) -> Path:
        return self.annotations / f"ava_{split}_predicted_boxes.csv"

    def exclusions(self, split: str) -> Path:
        return self.annotations / f"ava_{split}_excluded_timestamps_v{self.version}.csv"

    @property
    def labelmap(self) -> Path:
        return self.annotations / LABELMAP_NAMES[self.version]


def read_frame_list(path: Path, frame_root: Path) -> dict[str, list[Path]]:
    """Frame paths of each movie, in list order: ``original_vido_id video_id frame_id path labels``."""
    if not path.is_file():
        raise AvaFormatError(f"{path}: frame list not found")
    movies: dict[str, list[Path]] = {}
    with open_text(path, AvaFormatError) as file:
        file.readline()  # header
        for number, line in enumerate(file, 2):
            row = line.split()
            if not row:
                continue
            if len(row) != 5:
                raise AvaFormatError(
                    f"{path}:{number}: expected 5 columns (original_vido_id video_id frame_id path labels), "
                    f"got {len(row)}"
                )
            movies.setdefault(row[0], []).append(frame_root / row[3])
    return movies


@dataclass
class Keyframe:
    """The person boxes of one keyframe: ``boxes`` (K, 4) x1,y1,x2,y2; ``labels`` the class ids of each."""

    video_id: str
    second: int
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)


def read_keyframes(
    path: Path,
    *,
    class_ids: set[int] | None = None,
    score_threshold: float | None = None,
) -> list[Keyframe]:
    """Keyframes of a box CSV, rows with the same box merged into one box with several labels.

    Ground truth: ``video_id,timestamp,x1,y1,x2,y2,action_id[,person_id]``; only ``class_ids`` kept.
    Proposals (``score_threshold`` given): ``…,action_id(may be empty),score``, kept when
    ``score >= score_threshold`` (PySlowFast's rule). Only seconds 902..1798 are kept.
    """
    if not path.is_file():
        raise AvaFormatError(f"{path}: annotation file not found")
    frames: dict[tuple[str, int], dict[str, tuple[list[float], list[int]]]] = {}
    with open_text(path, AvaFormatError) as file:
        for number, line in enumerate(file, 1):
            row = line.strip().split(",")
            if row == [""]:
                continue
            if len(row) < 7 or (score_threshold is not None and len(row) < 8):
                raise AvaFormatError(
                    f"{path}:{number}: expected {7 if score_threshold is None else 8}+ columns"
                )
            try:
                second = int(row[1])
                box = [float(value) for value in row[2:6]]
                label = int(row[6]) if row[6] else -1
                score = float(row[7]) if score_threshold is not None else 1.0
            except ValueError as error:
                raise AvaFormatError(f"{path}:{number}: bad value ({error})") from None
            if score_threshold is not None and score < score_threshold:
                continue
            if second not in KEYFRAME_SECONDS:
                continue
            boxes = frames.setdefault((row[0], second), {})
            entry = boxes.setdefault(",".join(row[2:6]), (box, []))
            if label != -1 and (class_ids is None or label in class_ids):
                entry[1].append(label)
    keyframes = []
    for (video_id, second), boxes in frames.items():
        kept = [(box, labels) for box, labels in boxes.values() if labels or score_threshold is not None]
        if kept:
            keyframes.append(Keyframe(video_id, second, [b for b, _ in kept], [lbl for _, lbl in kept]))
    return keyframes


def clip_indices(center: int, clip_len: int, stride: int, num_frames: int) -> list[int]:
    """``clip_len`` frame indices ``stride`` apart centred on ``center``, clamped into the movie."""
    start = center - (clip_len * stride) // 2
    return [min(max(start + i * stride, 0), num_frames - 1) for i in range(clip_len)]


def memory_centers(
    num_frames: int, count: int, keyframe: int, span: int, rng: random.Random | None
) -> list[int]:
    """Centres of ``count`` memory clips: one per equal segment of the movie, so the memory spans the
    whole movie (random in the segment when training, the segment middle otherwise), except that the
    segment holding the keyframe gives the clip right next to the keyframe clip (``span`` frames
    before or after it; after when evaluating, unless that leaves the movie)."""
    centers = []
    for index in range(count):
        low, high = index * num_frames / count, (index + 1) * num_frames / count
        if low <= keyframe < high:
            after = rng.random() < 0.5 if rng else keyframe + span < num_frames
            position = keyframe + span if after else keyframe - span
        else:
            position = rng.uniform(low, high) if rng else (low + high) / 2
        centers.append(min(max(int(position), 0), num_frames - 1))
    return centers


def jitter_box(box: Sequence[float], amount: float, rng: random.Random) -> list[float]:
    """Move each side by up to ``amount`` of the box size, keeping the box inside [0, 1]."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    out = [x1 + rng.uniform(-amount, amount) * w, y1 + rng.uniform(-amount, amount) * h]
    out += [x2 + rng.uniform(-amount, amount) * w, y2 + rng.uniform(-amount, amount) * h]
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in out)
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


@dataclass(frozen=True)
class ClipSpec:
    num_clips: int  # keyframe clip + memory clips
    clip_len: int
    stride: int
    size: int  # frames resized to size x size


class AvaKeyframeDataset(Dataset):
    """One item per keyframe: the keyframe clip and memory clips of its movie, and its boxes.

    Item keys: ``video`` uint8 (N, C, T, size, size) with the keyframe clip first; ``boxes`` (K, 4)
    float x1,y1,x2,y2 as given (flipped with the frames when ``train``); ``targets`` (K, num_classes)
    multi-hot over class ids 1..num_classes; ``video_id``, ``second``; ``original_boxes`` (K, 4).
    """

    def __init__(
        self,
        keyframes: list[Keyframe],
        movies: dict[str, FrameSource],
        num_classes: int,
        clips: ClipSpec,
        *,
        train: bool,
        box_jitter: float = 0.0,
        seed: int = 0,
    ) -> None:
        missing = sorted({k.video_id for k in keyframes} - set(movies))
        if missing:
            raise AvaFormatError(
                f"movies {', '.join(missing[:3])} have boxes but no frames in the frame list"
            )
        self.keyframes = keyframes
        self.movies = movies
        self.num_classes = num_classes
        self.clips = clips
        self.train = train
        self.box_jitter = box_jitter
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.keyframes)

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """(C, H, W) uint8 to (C, size, size): boxes are normalised, so the aspect ratio may change."""
        size = self.clips.size
        if image.shape[1:] != (size, size):
            image = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True)
            image = image[0].round().clamp(0, 255).to(torch.uint8)
        return image

    def __getitem__(self, index: int) -> dict[str, Any]:
        keyframe = self.keyframes[index]
        frames = self.movies[keyframe.video_id]
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}") if self.train else None
        spec = self.clips
        centers = [frame_of_second(keyframe.second)]
        span = spec.clip_len * spec.stride
        centers += memory_centers(len(frames), spec.num_clips - 1, centers[0], span, rng)
        plan = [clip_indices(center, spec.clip_len, spec.stride, len(frames)) for center in centers]
        read = {i: self.resize(image) for i, image in frames.read([i for clip in plan for i in clip]).items()}
        clip_video = torch.stack(
            [torch.stack([read[i] for i in clip], dim=1) for clip in plan]
        )  # (N,C,T,H,W)
        boxes = [list(box) for box in keyframe.boxes]
        if rng is not None:
            boxes = [jitter_box(box, self.box_jitter, rng) for box in boxes]
            if rng.random() < 0.5:
                clip_video = clip_video.flip(-1)
                boxes = [[1.0 - x2, y1, 1.0 - x1, y2] for x1, y1, x2, y2 in boxes]
        targets = torch.zeros(len(boxes), self.num_classes)
        for row, labels in enumerate(keyframe.labels):
            for label in labels:
                targets[row, label - 1] = 1.0
        # each clip's centre as a fraction of the movie: the keyframe clip first, the memory clips
        # at their distance from it (the relative read sees only the differences)
        times = torch.tensor([(center + 0.5) / len(frames) for center in centers], dtype=torch.float32)
        return {
            "video": clip_video,
            "times": times.clamp(0.0, 1.0),
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "original_boxes": torch.tensor(keyframe.boxes, dtype=torch.float32).reshape(-1, 4),
            "targets": targets,
            "video_id": keyframe.video_id,
            "second": keyframe.second,
            "index": index,
        }


def collate_keyframes(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack videos (B, N, C, T, H, W) and their clips' times (B, N); concatenate boxes with their
    item index as ``box_index``; ``index``: each item's keyframe index in the dataset."""
    return {
        "video": torch.stack([item["video"] for item in items]),
        "times": torch.stack([item["times"] for item in items]),
        "boxes": torch.cat([item["boxes"] for item in items]),
        "original_boxes": torch.cat([item["original_boxes"] for item in items]),
        "box_index": torch.cat(
            [torch.full((len(item["boxes"]),), i, dtype=torch.long) for i, item in enumerate(items)]
        ),
        "targets": torch.cat([item["targets"] for item in items]),
        "keys": [(item["video_id"], item["second"]) for item in items],
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
    }


@dataclass
class AvaSplit:
    keyframes: list[Keyframe]
    movies: dict[str, FrameSource]


@dataclass
class AvaData:
    """Everything training and evaluation read from an AVA dir."""

    layout: AvaLayout
    categories: list[Category]
    train: AvaSplit
    val: AvaSplit

    @property
    def num_classes(self) -> int:
        """Outputs of the head: class ids 1..max id of the label map."""
        return max(category.id for category in self.categories)


def movie_frames(layout: AvaLayout, split: str, keyframes: list[Keyframe]) -> dict[str, FrameSource]:
    """Extracted frames when the split has a frame list, else the movie files of its keyframes."""
    frame_list = layout.frame_list(split)
    video_dirs = [layout.root / "videos_15min", layout.root / "videos"]
    if not frame_list.is_file() and any(folder.is_dir() for folder in video_dirs):
        return dict(find_movies(layout.root, sorted({k.video_id for k in keyframes})))
    lists = read_frame_list(frame_list, layout.root / "frames")
    return {video_id: JpegFrames(paths) for video_id, paths in lists.items()}


def load_ava(root: str | Path, version: str = "2.2", *, detection_thresh: float = 0.9) -> AvaData:
    """Read an AVA dir: training keyframes from ground truth, validation keyframes from proposals."""
    if version not in AVA_VERSIONS:
        raise AvaFormatError(f"AVA version must be one of {', '.join(AVA_VERSIONS)}; got {version!r}")
    layout = AvaLayout(Path(root), version)
    if not layout.root.is_dir():
        raise AvaFormatError(f"{layout.root}: AVA data dir not found")
    categories = read_labelmap(layout.labelmap)
    class_ids = {category.id for category in categories}
    train_keyframes = read_keyframes(layout.groundtruth("train"), class_ids=class_ids)
    val_keyframes = read_keyframes(layout.proposals("val"), score_threshold=detection_thresh)
    train = AvaSplit(train_keyframes, movie_frames(layout, "train", train_keyframes))
    val = AvaSplit(val_keyframes, movie_frames(layout, "val", val_keyframes))
    if not train.keyframes:
        raise AvaFormatError(f"{layout.groundtruth('train')}: no keyframe with a box of a label-map class")
    return AvaData(layout, categories, train, val)


def write_detections(
    path: Path, rows: list[tuple[str, int, Sequence[float], np.ndarray]], class_ids: list[int]
) -> None:
    """Detections CSV in the official format: one row per box and label-map class,
    ``video_id,timestamp,x1,y1,x2,y2,action_id,score`` (``rows``: key, second, box, scores over 1..K)."""
    with path.open("w") as file:
        for video_id, second, box, scores in rows:
            x1, y1, x2, y2 = box
            for class_id in class_ids:
                file.write(
                    f"{video_id},{second:04d},{x1:.3f},{y1:.3f},{x2:.3f},{y2:.3f},{class_id},"
                    f"{scores[class_id - 1]:.6f}\n"
                )
