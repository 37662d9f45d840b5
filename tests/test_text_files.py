"""Text files saved with a UTF-8 byte-order mark (Excel, Windows editors) read as without one; text
that is not UTF-8 is one line naming the file."""

import json
import shutil
from pathlib import Path

import pytest
from formatdata import (
    write_charades,
    write_charades_frame_lists,
    write_kinetics_official,
    write_ssv1,
    write_ssv2,
)
from tinydata import TINY_TRAIN_FLAGS

from comem.cli import main
from comem.config import ConfigError, load_config
from comem.data.formats import load_splits
from comem.tasks.ava.evaluation import read_exclusions, read_labelmap

BOM = "\ufeff".encode()
WRITERS = {
    "kinetics": write_kinetics_official,
    "charades": write_charades,
    "charades-frames": write_charades_frame_lists,
    "ssv1": write_ssv1,
    "ssv2": write_ssv2,
}


def add_bom(root: Path) -> int:
    """Prefix every annotation file under ``root`` with a BOM; returns how many."""
    files = [p for p in root.rglob("*") if p.suffix in (".csv", ".txt", ".json") and p.is_file()]
    for path in files:
        path.write_bytes(BOM + path.read_bytes())
    return len(files)


def splits_summary(root: Path) -> tuple:
    """What a reader made of ``root``, with paths relative to it (two copies compare equal)."""
    splits = load_splits(root, "auto")

    def relative(path) -> str:
        return str(Path(path).relative_to(root)) if Path(path).is_absolute() else str(path)

    records = {
        name: [(relative(r.path), str(r.label)) for r in getattr(splits, name)] for name in ("train", "val")
    }
    return splits.data_format, splits.class_names, records, [relative(m) for m in splits.missing]


@pytest.mark.parametrize("name", ["slowfast", *WRITERS])
def test_every_format_reads_the_same_with_a_bom(name: str, tiny_dataset: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    if name == "slowfast":
        shutil.copytree(tiny_dataset, plain)
    else:
        WRITERS[name](plain)
    marked = tmp_path / "bom"
    shutil.copytree(plain, marked)
    assert add_bom(marked) >= 2
    want = splits_summary(plain)
    assert splits_summary(marked) == want
    assert len(want[2]["train"]) >= 2 and not any(n.startswith("\ufeff") for n in want[1])


def test_a_bom_prefixed_train_csv_trains_with_no_skipped_video(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    add_bom(data)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", *TINY_TRAIN_FLAGS]) == 0
    assert "warning" not in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_videos"] == 0 and metrics["train_videos"] == 4
    assert (out / "classes.txt").read_text() == "gray\nramp\n"


def test_yaml_config_with_a_bom_and_not_utf8(tmp_path: Path) -> None:
    config = tmp_path / "exp.yaml"
    config.write_bytes(BOM + b"clips: 5\nbatch-size: 3\n")
    loaded = load_config(config)
    assert (loaded.clips, loaded.batch_size) == (5, 3)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"clips: 5\n# r\xe9sum\xe9\n")
    with pytest.raises(ConfigError) as raised:
        load_config(latin)
    assert str(raised.value) == f"{latin}:2: not UTF-8 text (byte 0xe9); save it as UTF-8"


def test_not_utf8_class_list_is_one_line(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "classes.txt").write_bytes(b"gray\nr\xe4mp\n")
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "out"), *TINY_TRAIN_FLAGS]) == 2
    assert capsys.readouterr().err == (
        f"comem train: error: {data / 'classes.txt'}:2: not UTF-8 text (byte 0xe4); save it as UTF-8\n"
    )


def test_ava_label_map_and_csv_with_a_bom(tmp_path: Path) -> None:
    labelmap = tmp_path / "map.pbtxt"
    labelmap.write_bytes(BOM + b'item {\n  name: "stand"\n  id: 1\n}\n')
    assert [(c.id, c.name) for c in read_labelmap(labelmap)] == [(1, "stand")]
    exclusions = tmp_path / "excl.csv"
    exclusions.write_bytes(BOM + b"vid1,0902\r\nvid2,0903\r\n")
    assert read_exclusions(exclusions) == {"vid1,0902", "vid2,0903"}
