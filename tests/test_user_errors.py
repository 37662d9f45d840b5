"""Options are named as the user gave them, and the metrics count what was actually evaluated."""

import json
import shutil
from pathlib import Path

import pytest
from tinydata import TINY_TRAIN_FLAGS

from comem.cli import main


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--views", "0"], "--views must be >= 1; got 0"),
        (["--clip-len", "0"], "--clip-len must be >= 1; got 0"),
        (["--batch-size", "-2"], "--batch-size must be >= 1; got -2"),
        (["--eval-scale", "0"], "--eval-scale must be >= 1; got 0"),
        (["--memory-pass-bn", "x"], "--memory-pass-bn must be one of batch, eval; got 'x'"),
    ],
)
def test_train_flags_are_named_as_typed(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, err = run_cli(["train", "--out", str(tmp_path / "out"), *flags], capsys)
    assert (code, err) == (2, f"comem train: error: {message}\n")
    assert not (tmp_path / "out").exists()


def test_yaml_options_are_named_as_spelled_in_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text("clip-len: 8\nviews: 0\n")
    code, err = run_cli(["train", "--config", str(config), "--out", str(tmp_path / "out")], capsys)
    assert (code, err) == (2, f"comem train: error: {config}: views must be >= 1; got 0\n")
    config.write_text("crop-size: 0\n")
    code, err = run_cli(["train", "--config", str(config), "--out", str(tmp_path / "out")], capsys)
    assert err == f"comem train: error: {config}: crop-size must be >= 1; got 0\n"


@pytest.mark.parametrize(("flag", "value"), [("--views", "-1"), ("--batch-size", "0"), ("--workers", "-1")])
def test_eval_flags_out_of_range(
    flag: str, value: str, tiny_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    code, err = run_cli(["eval", "--checkpoint", str(tiny_checkpoint), flag, value], capsys)
    least = 0 if flag == "--workers" else 1
    assert (code, err) == (2, f"comem eval: error: {flag} must be >= {least}; got {value}\n")


def test_val_videos_counts_the_videos_evaluated(tiny_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "videos" / "val_1.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", *TINY_TRAIN_FLAGS]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_videos"] == 3 and metrics["skipped_videos"] == 1
    assert metrics["history"][-1]["val_videos"] == 3
