"""Charades (multi-label, 157 actions): the official CSVs over ``{id}.mp4``, or PySlowFast frame lists.

Official: ``Charades_v1_train.csv`` / ``Charades_v1_test.csv`` with columns ``id,...,actions,length``,
``actions`` like ``c092 11.90 21.20;c147 0.00 12.60``; ``Charades_v1_classes.txt`` (``c000 Holding
some clothes``) names the classes. ``Charades_v1_test`` is comem's ``val`` split, as in PySlowFast.

PySlowFast frame lists: ``train.csv`` / ``val.csv`` with header ``original_vido_id video_id frame_id
path labels``, one line per frame, ``labels`` like ``"12,140"`` or ``""``; a video's labels are the
union over its frames; frame paths are relative to the data directory (or its ``frames/``).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from comem.data.datasets import DatasetFormatError, VideoRecord, VideoSplits
from comem.data.formats.common import find_file, index_videos, locate
from comem.textfile import first_line, open_text, read_text

NUM_CLASSES = 157
OFFICIAL_FILES = {"train": "Charades_v1_train.csv", "val": "Charades_v1_test.csv"}
CLASSES_FILE = "Charades_v1_classes.txt"
FRAME_LIST_HEADER = "original_vido_id"
FRAME_LIST_COLUMNS = "original_vido_id video_id frame_id path labels"
FRAMES_FPS = 24.0  # Charades_v1_rgb frames, which PySlowFast's frame lists point at


def class_names(data_dir: Path) -> list[str]:
    """Names from ``Charades_v1_classes.txt`` (line ``cNNN name``), or ``c000`` … ``c156``."""
    path = find_file(data_dir, [CLASSES_FILE])
    if path is None:
        return [f"c{i:03d}" for i in range(NUM_CLASSES)]
    names = {}
    for number, line in enumerate(read_text(path, DatasetFormatError).splitlines(), start=1):
        if not line.strip():
            continue
        code, _, name = line.strip().partition(" ")
        names[_class_index(code, f"{path}:{number}")] = name.strip() or code
    return [names.get(i, f"c{i:03d}") for i in range(max(names, default=NUM_CLASSES - 1) + 1)]


def _class_index(code: str, where: str) -> int:
    if len(code) < 2 or code[0] != "c" or not code[1:].isdigit():
        raise DatasetFormatError(f"{where}: action class '{code}' is not of the form c000")
    return int(code[1:])


def parse_actions(text: str, where: str) -> tuple[tuple[int, float, float], ...]:
    """``"c092 11.90 21.20;c147 0.00 12.60"`` -> ``((92, 11.9, 21.2), (147, 0.0, 12.6))``."""
    spans = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        fields = part.split()
        if len(fields) != 3:
            raise DatasetFormatError(f"{where}: action '{part}' is not 'cNNN start end'")
        try:
            start, end = float(fields[1]), float(fields[2])
        except ValueError:
            raise DatasetFormatError(f"{where}: action '{part}' has non-numeric times") from None
        spans.append((_class_index(fields[0], where), start, end))
    return tuple(spans)


def _read_official(path: Path, num_classes: int) -> list[tuple[str, VideoRecord]]:
    wanted = []
    with open_text(path, DatasetFormatError) as file:
        reader = csv.DictReader(file)
        if not reader.fieldnames or "id" not in reader.fieldnames or "actions" not in reader.fieldnames:
            raise DatasetFormatError(f"{path}: expected a header with 'id' and 'actions' columns")
        for number, row in enumerate(reader, start=2):
            spans = parse_actions(row["actions"] or "", f"{path}:{number}")
            for label, _, _ in spans:
                if label >= num_classes:
                    raise DatasetFormatError(f"{path}:{number}: class c{label:03d} >= {num_classes} classes")
            labels = tuple(sorted({label for label, _, _ in spans}))
            wanted.append((row["id"], VideoRecord(Path(row["id"]), labels, spans=spans)))
    if not wanted:
        raise DatasetFormatError(f"{path}: empty (no videos)")
    return wanted


def load_charades(data_dir: str | Path) -> VideoSplits:
    data_dir = Path(data_dir)
    names = class_names(data_dir)
    videos = index_videos(data_dir)
    missing: list[str] = []
    splits = {}
    for split, filename in OFFICIAL_FILES.items():
        path = find_file(data_dir, [filename])
        if path is None:
            raise DatasetFormatError(f"{data_dir}/: no {filename} (Charades official annotations)")
        splits[split] = locate(_read_official(path, len(names)), videos, path, missing)
    return VideoSplits(
        train=splits["train"],
        val=splits["val"],
        test=None,
        class_names=names,
        missing=tuple(missing),
        multi_label=True,
        data_format="charades",
    )


def is_frame_list(path: Path) -> bool:
    return first_line(path).startswith(FRAME_LIST_HEADER)


def _read_frame_list(path: Path, data_dir: Path, num_classes: int) -> list[VideoRecord]:
    folders: dict[str, Path] = {}
    labels: dict[str, set[int]] = defaultdict(set)
    lines = read_text(path, DatasetFormatError).splitlines()
    prefix = data_dir
    for number, line in enumerate(lines[1:], start=2):
        row = line.split()
        if not row:
            continue
        where = f"{path}:{number}"
        if len(row) != 5:
            raise DatasetFormatError(f"{where}: expected 5 columns '{FRAME_LIST_COLUMNS}', got {len(row)}")
        name, frame, text = row[0], Path(row[3]), row[4].replace('"', "")
        if not folders and not (data_dir / frame).exists() and (data_dir / "frames" / frame).exists():
            prefix = data_dir / "frames"
        folder = prefix / frame.parent
        if folders.setdefault(name, folder) != folder:
            raise DatasetFormatError(f"{where}: frames of video {name} lie in two folders")
        for code in filter(None, text.split(",")):
            if not code.isdigit() or int(code) >= num_classes:
                raise DatasetFormatError(f"{where}: label '{code}' is not a class index below {num_classes}")
            labels[name].add(int(code))
    if not folders:
        raise DatasetFormatError(f"{path}: empty (no frames)")
    return [
        VideoRecord(folder, tuple(sorted(labels[name])), fps=FRAMES_FPS) for name, folder in folders.items()
    ]


def load_charades_frame_lists(data_dir: str | Path) -> VideoSplits:
    data_dir = Path(data_dir)
    names = class_names(data_dir)
    splits = {}
    for split in ("train", "val"):
        path = find_file(data_dir, [f"{split}.csv"])
        if path is None or not is_frame_list(path):
            raise DatasetFormatError(
                f"{data_dir}/: no {split}.csv frame list (header '{FRAME_LIST_HEADER} ...')"
            )
        splits[split] = _read_frame_list(path, data_dir, len(names))
    return VideoSplits(
        train=splits["train"],
        val=splits["val"],
        test=None,
        class_names=names,
        multi_label=True,
        data_format="charades-frames",
    )
