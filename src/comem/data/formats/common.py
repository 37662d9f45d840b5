"""What the dataset readers share: finding annotation files and videos, and the split structure."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from comem.data.datasets import DatasetFormatError, VideoRecord, check_unique_classes
from comem.textfile import read_text

VIDEO_SUFFIXES = frozenset({".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v"})


def search_dirs(data_dir: Path) -> list[Path]:
    """Where annotation files may sit: the data directory, then its direct subfolders."""
    subdirs = sorted(p for p in data_dir.iterdir() if p.is_dir()) if data_dir.is_dir() else []
    return [data_dir, *subdirs]


def find_file(data_dir: Path, names: Iterable[str]) -> Path | None:
    """The first of ``names`` found in :func:`search_dirs`, or None."""
    names = list(names)
    for folder in search_dirs(data_dir):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def index_videos(root: Path) -> dict[str, Path]:
    """Every video file under ``root`` by file name without suffix (one walk of the tree).

    Annotations name a video by that name alone, so two files of one name (a Kinetics video
    downloaded into two class folders, one video in two encodings) are an error naming both: picking
    either would give one annotation row the other file, and its label.
    """
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in VIDEO_SUFFIXES:
                path = Path(folder) / name
                if stem in found:
                    raise DatasetFormatError(
                        f"{root}/: two videos named {stem}: {found[stem]} and {path}; annotations name a "
                        "video by its file name, so keep one (or rename the other and its annotation rows)"
                    )
                found[stem] = path
    return found


def locate(
    wanted: list[tuple[str, VideoRecord]], videos: dict[str, Path], source: Path, missing: list[str]
) -> list[VideoRecord]:
    """Records whose video was found (``wanted`` pairs a file stem with a record whose path is a
    placeholder); the stems not found are appended to ``missing`` as ``"<source>: <stem>"``."""
    records = []
    for stem, record in wanted:
        path = videos.get(stem)
        if path is None:
            missing.append(f"{source}: {stem}")
        else:
            records.append(VideoRecord(path, record.label, fps=record.fps, spans=record.spans))
    if wanted and not records:
        raise DatasetFormatError(
            f"{source}: none of its {len(wanted)} videos found under {source.parent} or the data directory "
            f"(first: {wanted[0][0]})"
        )
    return records


def read_class_list(path: Path) -> list[str]:
    names = [line.strip() for line in read_text(path, DatasetFormatError).splitlines() if line.strip()]
    if not names:
        raise DatasetFormatError(f"{path}: empty (no class names)")
    check_unique_classes(names, path)
    return names
