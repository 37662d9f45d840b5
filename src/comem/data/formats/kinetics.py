"""Kinetics-400/700 official annotation CSVs (``label,youtube_id,time_start,time_end,split``).

Videos are looked up anywhere under the data directory by the common download name
``{youtube_id}_{time_start:06d}_{time_end:06d}`` (any video suffix, any folder layout); listed videos
that are not found are left out and named in :attr:`VideoSplits.missing`. Class indices follow the
alphabetical order of the class names, or ``classes.txt`` when present.
"""

from __future__ import annotations

import csv
from pathlib import Path

from comem.data.datasets import DatasetFormatError, VideoRecord, VideoSplits
from comem.data.formats.common import index_videos, locate, read_class_list, search_dirs
from comem.textfile import first_line, open_text

HEADER = ("youtube_id", "time_start", "time_end")


def is_official_csv(path: Path) -> bool:
    """A CSV whose header names ``youtube_id`` (:func:`read_rows` names any other column it lacks)."""
    return "youtube_id" in [column.strip() for column in first_line(path).strip().split(",")]


def official_csvs(data_dir: Path) -> dict[str, Path]:
    """``{"train"|"val"|"test": path}`` of official annotation CSVs, split taken from the file name."""
    found: dict[str, Path] = {}
    for folder in search_dirs(data_dir):
        for path in sorted(folder.glob("*.csv")):
            name = path.stem.lower()
            split = next(
                (s for s, key in (("train", "train"), ("val", "val"), ("test", "test")) if key in name), None
            )
            if split is None or not is_official_csv(path):
                continue
            if split in found:
                raise DatasetFormatError(f"{data_dir}/: two Kinetics {split} CSVs: {found[split]} and {path}")
            found[split] = path
    return found


def video_stem(youtube_id: str, start: str, end: str, where: str) -> str:
    try:
        return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}"
    except ValueError:
        raise DatasetFormatError(f"{where}: time_start/time_end '{start}', '{end}' are not numbers") from None


def read_rows(path: Path) -> list[tuple[str, str | None, str]]:
    """``(video stem, class name or None, where)`` of every row."""
    rows = []
    with open_text(path, DatasetFormatError) as file:
        reader = csv.DictReader(file)
        lacking = [column for column in HEADER if column not in (reader.fieldnames or [])]
        if lacking:
            raise DatasetFormatError(
                f"{path}: Kinetics CSV without the column(s) {', '.join(lacking)} "
                "(header: label,youtube_id,time_start,time_end,split)"
            )
        for number, row in enumerate(reader, start=2):
            where = f"{path}:{number}"
            if not row.get("youtube_id"):
                continue
            stem = video_stem(row["youtube_id"], row.get("time_start", ""), row.get("time_end", ""), where)
            rows.append((stem, (row.get("label") or "").strip() or None, where))
    if not rows:
        raise DatasetFormatError(f"{path}: empty (no videos)")
    return rows


def load_kinetics_official(data_dir: str | Path) -> VideoSplits:
    data_dir = Path(data_dir)
    files = official_csvs(data_dir)
    for split in ("train", "val"):
        if split not in files:
            raise DatasetFormatError(
                f"{data_dir}/: no Kinetics {split} annotation CSV (a *{split}*.csv with header "
                "label,youtube_id,time_start,time_end,split)"
            )
    rows = {split: read_rows(path) for split, path in files.items()}
    if any(label is None for _, label, _ in rows.get("test", [])):
        rows.pop("test")  # the unlabelled test set of Kinetics-700 cannot be evaluated
    classes_file = data_dir / "classes.txt"
    if classes_file.is_file():
        class_names = read_class_list(classes_file)
    else:
        class_names = sorted({label for _, label, _ in rows["train"] if label is not None})
    index = {name: i for i, name in enumerate(class_names)}
    videos = index_videos(data_dir)
    missing: list[str] = []
    splits: dict[str, list[VideoRecord]] = {}
    for split, split_rows in rows.items():
        wanted = []
        for stem, label, where in split_rows:
            if label is None or label not in index:
                source = "classes.txt" if classes_file.is_file() else "the train CSV"
                raise DatasetFormatError(f"{where}: class '{label}' is not in {source}")
            wanted.append((stem, VideoRecord(Path(stem), index[label])))
        splits[split] = locate(wanted, videos, files[split], missing)
    return VideoSplits(
        train=splits["train"],
        val=splits["val"],
        test=splits.get("test"),
        class_names=class_names,
        missing=tuple(missing),
        data_format="kinetics",
    )
