"""Bad user input ends as one line on stderr naming the file and the problem; bad videos are skipped."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from tinydata import TINY_TRAIN_FLAGS, write_video
from videos import gray_level

from comem.cli import main
from comem.data.datasets import MultiClipVideoDataset, load_kinetics_csv_dir


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *expected: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"


def copy_dataset(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def no_train_csv(data: Path) -> tuple[str, ...]:
    (data / "train.csv").unlink()
    return (str(data), "no train.csv")


def three_columns(data: Path) -> tuple[str, ...]:
    (data / "train.csv").write_text("videos/train_0.mp4 0\nvideos/train_1.mp4 1 extra\n")
    return (f"{data / 'train.csv'}:2", "expected 2 columns", "got 3")


def non_integer_label(data: Path) -> tuple[str, ...]:
    (data / "val.csv").write_text("videos/val_0.mp4 0\nvideos/val_1.mp4 ramp\n")
    return (f"{data / 'val.csv'}:2", "'ramp' is not an integer")


def label_out_of_range(data: Path) -> tuple[str, ...]:
    (data / "train.csv").write_text("videos/train_0.mp4 0\nvideos/train_1.mp4 2\n")
    return (f"{data / 'train.csv'}:2", "label 2 out of range [0, 2)", "classes.txt has 2 classes")


@pytest.mark.parametrize("damage", [no_train_csv, three_columns, non_integer_label, label_out_of_range])
def test_bad_data_dir_is_a_one_line_error(
    damage: Callable[[Path], tuple[str, ...]],
    tiny_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    expected = damage(data)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "out"), "--epochs", "1", *TINY_TRAIN_FLAGS]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, *expected)
    assert not (tmp_path / "out" / "last.pt").exists()


def test_missing_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere"
    code, _, err = run_cli(["train", "--data", str(missing), "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, str(missing), "data directory not found")


def test_missing_checkpoint_for_eval(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "runs" / "last.pt"
    code, _, err = run_cli(["eval", "--checkpoint", str(missing)], capsys)
    assert_one_line_error(code, err, str(missing), "checkpoint not found")


def test_unreadable_checkpoint_for_eval(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    damaged = tmp_path / "last.pt"
    damaged.write_bytes(b"not a torch file")
    code, _, err = run_cli(["eval", "--checkpoint", str(damaged)], capsys)
    assert_one_line_error(code, err, str(damaged), "cannot read checkpoint")


def test_missing_pretrained_weights(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing = tmp_path / "r2plus1d_18.pth"
    argv = ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "out"), *TINY_TRAIN_FLAGS]
    code, _, err = run_cli([*argv, "--pretrained", str(missing)], capsys)
    assert_one_line_error(code, err, str(missing), "pretrained weights file not found")


def test_unreadable_videos_are_skipped_counted_and_named_once(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    good = (data / "videos" / "train_0.mp4").read_bytes()
    bad = {
        "truncated.mp4": good[: len(good) // 2],  # moov atom at the end: cut in half, it cannot open
        "empty.mp4": b"",
        "text.mp4": b"this is not a video\n",
    }
    for name, payload in bad.items():
        (data / "videos" / name).write_bytes(payload)
    bad_names = [*bad, "missing.mp4"]
    # 5 frames < the clip span (8 frames below): padded with its last frame, not skipped.
    write_video(data / "videos" / "short.mp4", label=1, num_frames=5)
    with open(data / "train.csv", "a") as csv:
        csv.writelines(f"videos/{name} 0\n" for name in [*bad_names, "short.mp4"])
    with open(data / "val.csv", "a") as csv:  # the same files again: still one warning each
        csv.writelines(f"videos/{name} 1\n" for name in [*bad_names, "short.mp4"])

    out = tmp_path / "out"
    # Skipping can leave a batch of one video; clip-len 8 keeps the tiny net's last map at 2x1x1, as
    # train-mode BatchNorm needs more than one value per channel.
    argv = ["train", "--data", str(data), "--out", str(out), "--epochs", "1", *TINY_TRAIN_FLAGS]
    code, stdout, err = run_cli([*argv, "--clip-len", "8", "--stride", "1"], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_videos"] == len(bad_names) == 4
    assert len(metrics["skipped"]) == 4
    warnings = [line for line in stdout.splitlines() if line.startswith("warning: skipping unreadable video")]
    assert len(warnings) == 4, warnings
    for name in bad_names:
        path = str(data / "videos" / name)
        assert sum(path + ":" in line for line in warnings) == 1, name
        assert sum(message.startswith(path + ":") for message in metrics["skipped"]) == 1
    assert not any("short.mp4" in line for line in [*warnings, *metrics["skipped"]])


def test_video_shorter_than_clip_span_is_used(tiny_dataset: Path, tmp_path: Path) -> None:
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    write_video(data / "videos" / "short.mp4", label=0, num_frames=5)
    (data / "val.csv").write_text("videos/short.mp4 0\n")
    record = load_kinetics_csv_dir(data).val[0]
    dataset = MultiClipVideoDataset([record], num_clips=2, clip_len=4, stride=2, crop_size=32, train=False)
    item = dataset[0]
    assert "error" not in item
    assert item["video"].shape == (2, 3, 4, 32, 32)
    # Both clips start at frame 0: indices 0, 2, 4, 4 (the last frame repeats past the end).
    levels = item["video"].float().mean(dim=(1, 3, 4))  # (N, T)
    expected = [gray_level(i) for i in (0, 2, 4, 4)]
    for clip in levels:
        assert clip.tolist() == pytest.approx(expected, abs=3)
