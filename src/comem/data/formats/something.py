"""Something-Something V1 (JPEG frame folders) and V2 (``.webm`` files), 174 classes.

V1: ``something-something-v1-{train,validation}.csv`` (``id;label``), ``something-something-v1-labels.csv``
(one label per line, line ``i`` = class ``i``), frames ``{id}/00001.jpg`` under the data directory or its
``20bn-something-something-v1/``. Frames were extracted at 12 fps.

V2: ``something-something-v2-{train,validation}.json`` (or ``train.json`` / ``validation.json``), a list of
``{"id", "template", ...}``; ``something-something-v2-labels.json`` (or ``labels.json``) maps a template with
its ``[ ]`` removed to the class index; videos ``{id}.webm`` anywhere under the data directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from comem.data.datasets import DatasetFormatError, VideoRecord, VideoSplits
from comem.data.formats.common import find_file, index_videos, locate, read_class_list
from comem.textfile import read_text

V1_FILES = {"train": "something-something-v1-train.csv", "val": "something-something-v1-validation.csv"}
V1_LABELS = "something-something-v1-labels.csv"
V1_FPS = 12.0
V2_FILES = {
    "train": ("something-something-v2-train.json", "train.json"),
    "val": ("something-something-v2-validation.json", "validation.json"),
}
V2_LABELS = ("something-something-v2-labels.json", "labels.json")


def _frames_root(data_dir: Path, first_id: str) -> Path:
    for root in (data_dir, data_dir / "20bn-something-something-v1", data_dir / "frames"):
        if (root / first_id).is_dir():
            return root
    return data_dir


def load_ssv1(data_dir: str | Path) -> VideoSplits:
    data_dir = Path(data_dir)
    labels_path = find_file(data_dir, [V1_LABELS])
    if labels_path is None:
        raise DatasetFormatError(f"{data_dir}/: no {V1_LABELS} (Something-Something V1 class names)")
    names = read_class_list(labels_path)
    index = {name: i for i, name in enumerate(names)}
    splits = {}
    for split, filename in V1_FILES.items():
        path = find_file(data_dir, [filename])
        if path is None:
            raise DatasetFormatError(f"{data_dir}/: no {filename}")
        rows = []
        for number, line in enumerate(read_text(path, DatasetFormatError).splitlines(), start=1):
            if not line.strip():
                continue
            video_id, separator, label = line.partition(";")
            if not separator:
                raise DatasetFormatError(f"{path}:{number}: expected 'id;label'")
            if label.strip() not in index:
                raise DatasetFormatError(
                    f"{path}:{number}: label '{label.strip()}' is not in {labels_path.name}"
                )
            rows.append((video_id.strip(), index[label.strip()]))
        if not rows:
            raise DatasetFormatError(f"{path}: empty (no videos)")
        root = _frames_root(data_dir, rows[0][0])
        splits[split] = [VideoRecord(root / video_id, label, fps=V1_FPS) for video_id, label in rows]
    return VideoSplits(
        train=splits["train"],
        val=splits["val"],
        test=None,
        class_names=names,
        data_format="ssv1",
    )


def _load_json(path: Path) -> object:
    try:
        return json.loads(read_text(path, DatasetFormatError))
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{path}: not valid JSON ({error})") from None


def template_class(template: str) -> str:
    """``"Putting [something] on a surface"`` -> ``"Putting something on a surface"``."""
    return template.replace("[", "").replace("]", "")


def load_ssv2(data_dir: str | Path) -> VideoSplits:
    data_dir = Path(data_dir)
    labels_path = find_file(data_dir, V2_LABELS)
    if labels_path is None:
        raise DatasetFormatError(f"{data_dir}/: no {V2_LABELS[0]} (Something-Something V2 class names)")
    mapping = _load_json(labels_path)
    if not isinstance(mapping, dict):
        raise DatasetFormatError(f"{labels_path}: expected an object mapping template to class index")
    index = {name: int(value) for name, value in mapping.items()}
    names = [name for name, _ in sorted(index.items(), key=lambda item: item[1])]
    videos = index_videos(data_dir)
    missing: list[str] = []
    splits = {}
    for split, filenames in V2_FILES.items():
        path = find_file(data_dir, filenames)
        if path is None:
            raise DatasetFormatError(f"{data_dir}/: no {filenames[0]}")
        items = _load_json(path)
        if not isinstance(items, list) or not items:
            raise DatasetFormatError(f"{path}: expected a non-empty list of videos")
        wanted = []
        for number, item in enumerate(items):
            if not isinstance(item, dict) or "id" not in item or "template" not in item:
                raise DatasetFormatError(f"{path}: item {number} has no 'id' and 'template'")
            name = template_class(item["template"])
            if name not in index:
                raise DatasetFormatError(
                    f"{path}: item {number} template '{name}' is not in {labels_path.name}"
                )
            wanted.append((str(item["id"]), VideoRecord(Path(str(item["id"])), index[name])))
        splits[split] = locate(wanted, videos, path, missing)
    return VideoSplits(
        train=splits["train"],
        val=splits["val"],
        test=None,
        class_names=names,
        missing=tuple(missing),
        data_format="ssv2",
    )
