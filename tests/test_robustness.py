"""A corpus of broken and unusual videos: training never crashes, each bad file is reported once by
name and counted; ``comem check-data`` lists them; ``comem bench data`` runs; real-world files decode."""

import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
from formatdata import write_charades
from tinydata import TINY_TRAIN_FLAGS, write_video
from videos import write_corrupt_corpus, write_test_video

from comem.cli import main
from comem.data.datasets import MultiClipVideoDataset, VideoRecord
from comem.data.decode import VideoReader


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A PySlowFast dir whose train split lists every corpus file (and a missing one) plus 4 good videos."""
    root = tmp_path_factory.mktemp("corpus")
    good = [write_video(root / f"good_{i}.mp4", i % 2) for i in range(4)]
    expected = write_corrupt_corpus(root / "bad", good[0])
    rows = [f"{path.name} {i % 2}" for i, path in enumerate(good)]
    rows += [f"bad/{name} {i % 2}" for i, name in enumerate(expected)]
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "val.csv").write_text("good_0.mp4 0\ngood_1.mp4 1\n")
    return root, expected


def test_training_on_the_corpus_skips_and_counts_each_bad_file_once(corpus, tmp_path: Path, capsys) -> None:
    root, expected = corpus
    unreadable = sorted(name for name, outcome in expected.items() if outcome == "unreadable")
    out = tmp_path / "run"
    flags = ["--data", str(root), "--out", str(out), "--epochs", "2", *TINY_TRAIN_FLAGS, "--batch-size", "2"]
    assert main(["train", *flags]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_videos"] == len(unreadable)
    skipped_names = sorted(Path(message.split(": ", 1)[0]).name for message in metrics["skipped"])
    assert skipped_names == unreadable
    for name in unreadable:  # reported once although every epoch meets it again
        assert printed.count(f"warning: skipping unreadable video {root / 'bad' / name}: ") == 1


def test_a_split_of_unreadable_videos_stops_training_in_one_line(
    tiny_dataset: Path, tmp_path: Path, capsys
) -> None:
    # --decoder frames on mp4 files: every video is skipped; the run "finished" with NaN metrics
    out = tmp_path / "run"
    flags = ["--data", str(tiny_dataset), "--out", str(out), "--epochs", "1", *TINY_TRAIN_FLAGS]
    assert main(["train", *flags, "--decoder", "frames"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not the bar
    assert len(err) == 1 and err[0].startswith(f"comem train: error: no training video of {tiny_dataset}")
    assert "(4 skipped; first: " in err[0] and "not a folder of frames" in err[0]
    assert not (out / "metrics.json").exists()


def test_readable_oddities_give_full_clips(corpus) -> None:
    root, expected = corpus
    records = [
        VideoRecord(root / "bad" / name, 0) for name, outcome in expected.items() if outcome == "readable"
    ]
    data = MultiClipVideoDataset(records, num_clips=3, clip_len=4, stride=2, crop_size=24, train=True)
    for index in range(len(records)):
        item = data[index]
        assert "error" not in item, item
        assert item["video"].shape == (3, 3, 4, 24, 24)


def test_check_data_reports_the_corpus(corpus, tmp_path: Path, capsys) -> None:
    root, expected = corpus
    report_path = tmp_path / "report.json"
    argv = ["check-data", "--data", str(root), "--clip-len", "4", "--stride", "2", "--out", str(report_path)]
    assert main(argv) == 1  # it found problems
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    unreadable = sorted(name for name, outcome in expected.items() if outcome == "unreadable")
    assert sorted(Path(e["path"]).name for e in report["unreadable"]) == unreadable
    assert [Path(e["path"]).name for e in report["short"]] == ["one_frame.mp4"]  # 1 frame < span 7
    assert [Path(e["path"]).name for e in report["truncated"]] == ["cut_faststart.mp4"]
    assert report["videos"] == 4 + len(expected) and report["readable"] == 4 + len(expected) - len(unreadable)
    for name in unreadable:
        assert printed.count(f"unreadable: {root / 'bad' / name}: ") == 1
    assert f"{report['videos']} videos (slowfast)" in printed.splitlines()[-1]


def test_bench_data_prints_both_ways(tmp_path: Path, capsys) -> None:
    write_video(tmp_path / "v0.mp4", 0, num_frames=40)
    # WebM (as Something-Something V2) has neither a frame count nor a duration in its stream header
    write_test_video(tmp_path / "v1.webm", 40, 32, 32, codec="libvpx-vp9")
    argv = ["bench", "data", "--data", str(tmp_path), "--clips", "2", "--clip-len", "4", "--crop-size", "24"]
    assert main(argv) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("clips_per_s", "videos_per_s", "naive_clips_per_s", "naive_videos_per_s"):
        assert line[key] > 0
    assert line["clips_per_s"] == pytest.approx(2 * line["videos_per_s"], rel=0.02)
    assert (line["videos"], line["workers"]) == (2, 0)


def test_bench_data_times_a_multi_label_dataset(tmp_path: Path, capsys) -> None:
    data = write_charades(tmp_path / "charades", num_train=2, num_val=1)
    argv = ["bench", "data", "--data", str(data), "--clips", "2", "--clip-len", "4", "--crop-size", "24"]
    assert main(argv) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["videos"] == 2 and line["videos_per_s"] > 0 and line["naive_videos_per_s"] > 0


REAL_VIDEOS = {
    "nasa_13013.mp4": 325,
    "bt709_full_range.mp4": 30,
    "h264_10bits.mp4": 30,
    "h265_10bits.mp4": 30,
    "h265_video.mp4": 10,
    "av1_video.mkv": 125,
}


@pytest.mark.skipif(not os.environ.get("COMEM_REAL_VIDEOS"), reason="COMEM_REAL_VIDEOS not set")
@pytest.mark.parametrize("name", list(REAL_VIDEOS))
def test_real_world_video(name: str) -> None:
    path = Path(os.environ["COMEM_REAL_VIDEOS"]) / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with av.open(str(path)) as container:
        everything = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    indices = np.array([[0, 3, 5], [len(everything) // 2, len(everything) - 2, len(everything) - 1]])
    with VideoReader(path) as reader:
        assert reader.num_frames == REAL_VIDEOS[name] == len(everything)
        frames = reader.read(indices)
    for frame, index in zip(frames.reshape(-1, *frames.shape[2:]), indices.ravel(), strict=True):
        np.testing.assert_array_equal(frame, everything[index])
    item = MultiClipVideoDataset(
        [VideoRecord(path, 0)], num_clips=4, clip_len=4, stride=2, crop_size=64, train=True
    )[0]
    assert "error" not in item and item["video"].shape == (4, 3, 4, 64, 64)
