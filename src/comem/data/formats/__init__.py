"""Dataset formats: detect which one a data directory holds and read it into :class:`VideoSplits`.

One module per format family (``kinetics``, ``charades``, ``something``); PySlowFast's ``path label``
CSV directory stays in :mod:`comem.data.datasets`. Every reader returns the same structure, so the
engine never knows which format it trains on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from comem.choices import DATA_FORMATS
from comem.data.datasets import DatasetFormatError, VideoSplits, load_kinetics_csv_dir
from comem.data.formats import charades, kinetics, something
from comem.data.formats.common import find_file

READERS: dict[str, Callable[[Path], VideoSplits]] = {
    "slowfast": load_kinetics_csv_dir,
    "kinetics": kinetics.load_kinetics_official,
    "charades": charades.load_charades,
    "charades-frames": charades.load_charades_frame_lists,
    "ssv1": something.load_ssv1,
    "ssv2": something.load_ssv2,
}


def detect_format(data_dir: str | Path) -> str:
    """The format of ``data_dir`` from the annotation files it holds (docs/datasets.md, "Formats")."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetFormatError(f"{data_dir}/: data directory not found")
    if find_file(data_dir, [charades.OFFICIAL_FILES["train"]]):
        return "charades"
    if find_file(data_dir, [something.V2_FILES["train"][0]]) or (
        find_file(data_dir, ["train.json"]) and find_file(data_dir, something.V2_LABELS)
    ):
        return "ssv2"
    if find_file(data_dir, [something.V1_FILES["train"]]):
        return "ssv1"
    top = data_dir / "train.csv"
    if top.is_file():  # a top-level train.csv decides, so extra annotation folders do not switch formats
        if charades.is_frame_list(top):
            return "charades-frames"
        return "kinetics" if kinetics.is_official_csv(top) else "slowfast"
    if "train" in kinetics.official_csvs(data_dir):
        return "kinetics"
    frame_list = find_file(data_dir, ["train.csv"])
    if frame_list is not None and charades.is_frame_list(frame_list):
        return "charades-frames"
    return "slowfast"


def load_splits(data_dir: str | Path, data_format: str = "auto", *, outside: bool = False) -> VideoSplits:
    """Read ``data_dir`` in ``data_format`` (``"auto"``: detected from its files). Videos are those
    under ``data_dir``: the other formats find them there by name, and a PySlowFast CSV path outside
    it is refused unless ``outside`` (``--allow-outside-data``)."""
    if data_format not in DATA_FORMATS:
        raise DatasetFormatError(f"data format must be one of {', '.join(DATA_FORMATS)}; got {data_format!r}")
    name = detect_format(data_dir) if data_format == "auto" else data_format
    if name == "slowfast":
        return load_kinetics_csv_dir(Path(data_dir), outside=outside)
    return READERS[name](Path(data_dir))


def require_training_labels(splits: VideoSplits, data_dir: str | Path) -> None:
    """Multi-label training needs some positive labels: PySlowFast's AVA frame lists share the
    Charades frame-list format with every label empty, and would train on nothing (val mAP NaN)."""
    if not splits.multi_label or any(record.label for record in splits.train):
        return
    data_dir = Path(data_dir)
    hint = " (an AVA directory: train it with --task ava)" if any(data_dir.glob("annotations/ava_*")) else ""
    raise DatasetFormatError(f"{data_dir}/: no training video has a label{hint}")
