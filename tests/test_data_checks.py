"""Data is never silently mislabelled: duplicate names, other classes, missing columns, paths outside
the data directory and unreadable videos are each said in one line (or, for check-data, exit 1)."""

import shutil
from pathlib import Path

import pytest
from formatdata import write_kinetics_official
from tinydata import TINY_TRAIN_FLAGS

from comem.cli import main
from comem.data.datasets import DatasetFormatError
from comem.data.formats import load_splits


def one_error(capsys: pytest.CaptureFixture) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_repeated_kinetics_video_in_two_class_folders_is_refused_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = write_kinetics_official(tmp_path / "k", num_train=2, num_val=2, missing=0)
    first = next((data / "train").glob("*.mp4"))
    (data / "train" / "other_class").mkdir()
    second = data / "train" / "other_class" / first.name
    shutil.copy(first, second)
    with pytest.raises(DatasetFormatError, match="two videos named"):
        load_splits(data)
    for argv in (
        ["check-data", "--data", str(data)],
        ["train", "--data", str(data), "--out", str(tmp_path / "run"), *TINY_TRAIN_FLAGS],
    ):
        capsys.readouterr()
        assert main(argv) == 2
        error = one_error(capsys)
        assert f"two videos named {first.stem}: {first} and {second}" in error


def test_duplicate_class_names_and_a_missing_kinetics_column_are_named(tmp_path: Path) -> None:
    data = write_kinetics_official(tmp_path / "k", num_train=2, num_val=2, missing=0)
    (data / "classes.txt").write_text("ramp\ngray\nramp\n")
    with pytest.raises(DatasetFormatError, match="class 'ramp' is listed twice \\(entries 1 and 3\\)"):
        load_splits(data)
    (data / "classes.txt").unlink()
    val = data / "annotations" / "validate.csv"
    val.write_text("\n".join(",".join(line.split(",")[:3]) for line in val.read_text().splitlines()) + "\n")
    with pytest.raises(DatasetFormatError, match=f"{val}: Kinetics CSV without the column\\(s\\) time_end"):
        load_splits(data)


def test_csv_paths_outside_the_data_directory_are_refused_unless_allowed(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    outside = tmp_path / "elsewhere.mp4"
    shutil.copy(next(data.rglob("*.mp4")), outside)
    val = data / "val.csv"
    val.write_text(val.read_text() + "../elsewhere.mp4 0\n")
    with pytest.raises(DatasetFormatError, match=f"{val}:5: ../elsewhere.mp4 is outside the data directory"):
        load_splits(data)
    assert load_splits(data, outside=True).val[-1].path == data / "../elsewhere.mp4"


def test_check_data_exits_1_when_it_finds_problems(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    assert main(["check-data", "--data", str(data), "--clip-len", "4"]) == 0
    next(data.rglob("*.mp4")).write_bytes(b"not a video")
    assert main(["check-data", "--data", str(data), "--clip-len", "4"]) == 1
    assert "unreadable:" in capsys.readouterr().out


def test_eval_refuses_a_dataset_with_other_class_names(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "classes.txt").write_text("cat\ndog\n")
    argv = ["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(data), "--device", "cpu"]
    argv += ["--workers", "0", "--out", str(tmp_path / "eval")]
    capsys.readouterr()
    assert main(argv) == 2
    error = one_error(capsys)
    assert f"{data}: its classes differ from those {tiny_checkpoint} was trained on" in error
    assert "class 0: 'cat' vs 'gray'" in error and not (tmp_path / "eval").exists()
    assert main([*argv, "--allow-other-classes"]) == 0


def test_predict_warns_when_a_file_ends_before_its_stated_duration(
    tiny_checkpoint: Path, faststart_video: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from comem.inference.predict import predict_video
    from comem.inference.trained import load_trained

    cut = tmp_path / "cut.mp4"
    data = faststart_video.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # a half-downloaded file: the header still states 36 frames
    with caplog.at_level("WARNING", logger="comem"):
        predict_video(load_trained(tiny_checkpoint, torch.device("cpu")), cut)
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith(f"{cut}: ends after "), warnings
    assert "of the 36 frames its header states" in warnings[0]


def test_clips_beyond_what_a_video_holds_warn_once_with_numbers(
    tiny_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from comem.data.datasets import MultiClipVideoDataset

    records = load_splits(tiny_dataset).val
    dataset = MultiClipVideoDataset(records, num_clips=10, clip_len=4, stride=2, crop_size=32, train=False)
    with caplog.at_level("WARNING", logger="comem"):
        for index in range(len(records)):
            dataset[index]
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == [
        f"{records[0].path}: 24 frames, fewer than clips 10 x clip_len 4 = 40: its clips overlap and repeat "
        "frames (shown once)"
    ]
