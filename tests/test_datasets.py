from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NUM_FRAMES
from videos import frame_index_of, write_test_video

from comem.data.datasets import (
    DatasetFormatError,
    MultiClipVideoDataset,
    VideoRecord,
    collate_clips,
    load_kinetics_csv_dir,
    read_class_names,
    read_video_csv,
)


def make_data_dir(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_csv_with_relative_and_absolute_paths(tmp_path: Path) -> None:
    data = make_data_dir(
        tmp_path / "data",
        {"train.csv": "a/x.mp4 0\n\n/abs/y.mp4 2\n", "val.csv": "z.mp4  1\n", "test.csv": "w.mp4 1\n"},
    )
    with pytest.raises(DatasetFormatError, match="train.csv:3: /abs/y.mp4 is outside the data directory"):
        load_kinetics_csv_dir(data)
    splits = load_kinetics_csv_dir(data, outside=True)
    assert splits.train == [VideoRecord(data / "a/x.mp4", 0), VideoRecord(Path("/abs/y.mp4"), 2)]
    assert splits.val == [VideoRecord(data / "z.mp4", 1)]
    assert splits.test == [VideoRecord(data / "w.mp4", 1)]
    assert (splits.num_classes, splits.class_names) == (3, ["0", "1", "2"])


def test_classes_txt_sets_num_classes_and_test_csv_is_optional(tmp_path: Path) -> None:
    data = make_data_dir(
        tmp_path / "data",
        {"train.csv": "x.mp4 0\n", "val.csv": "y.mp4 1\n", "classes.txt": "run\njump\n\nswim\n"},
    )
    splits = load_kinetics_csv_dir(data)
    assert (splits.num_classes, splits.class_names, splits.test) == (3, ["run", "jump", "swim"], None)
    assert read_class_names(tmp_path) is None


@pytest.mark.parametrize(
    "files,message",
    [
        (
            {"train.csv": "x.mp4 0\nmy video.mp4 1\n", "val.csv": "y.mp4 0\n"},
            "train.csv:2: expected 2 columns 'path label', got 3 (paths with spaces are not supported)",
        ),
        (
            {"train.csv": "x.mp4,0\n", "val.csv": "y.mp4 0\n"},
            "train.csv:1: expected 2 columns 'path label', got 1 (columns are separated by whitespace",
        ),
        (
            {"train.csv": "x.mp4 0\n", "val.csv": "y.mp4 0\n\ny.mp4 cat\n"},
            "val.csv:3: label 'cat' is not an integer",
        ),
        ({"train.csv": "x.mp4 -1\n", "val.csv": "y.mp4 0\n"}, "train.csv:1: label -1 is negative"),
        (
            {"train.csv": "x.mp4 0\n", "val.csv": "y.mp4 0\ny.mp4 12\n", "classes.txt": "a\nb\n"},
            "val.csv:2: label 12 out of range [0, 2) (classes.txt has 2 classes)",
        ),
        ({"train.csv": "\n\n", "val.csv": "y.mp4 0\n"}, "train.csv: empty (no videos)"),
        ({"val.csv": "y.mp4 0\n"}, "/: no train.csv (expected PySlowFast format: one 'path label' per line)"),
        ({"train.csv": "y.mp4 0\n"}, "/: no val.csv"),
    ],
)
def test_format_errors_name_file_and_line(tmp_path: Path, files: dict[str, str], message: str) -> None:
    data = make_data_dir(tmp_path / "data", files)
    with pytest.raises(DatasetFormatError) as caught:
        load_kinetics_csv_dir(data)
    assert str(caught.value).startswith(str(data))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="missing/: data directory not found"):
        load_kinetics_csv_dir(tmp_path / "missing")


def test_read_video_csv_checks_range_when_given(tmp_path: Path) -> None:
    csv = make_data_dir(tmp_path, {"s.csv": "x.mp4 4\n"}) / "s.csv"
    assert read_video_csv(csv, tmp_path) == [VideoRecord(tmp_path / "x.mp4", 4)]
    with pytest.raises(DatasetFormatError, match=r"s.csv:1: label 4 out of range \[0, 4\)$"):
        read_video_csv(csv, tmp_path, num_classes=4)


@pytest.fixture(scope="module")
def records(index_video: Path, video_dir: Path) -> list[VideoRecord]:
    short = write_test_video(video_dir / "short.mp4", 5, 48, 64)
    return [VideoRecord(index_video, 3), VideoRecord(short, 1), VideoRecord(video_dir / "missing.mp4", 0)]


def dataset(records: list[VideoRecord], **overrides) -> MultiClipVideoDataset:
    options = dict(num_clips=3, clip_len=4, stride=2, crop_size=32, train=True, seed=5) | overrides
    return MultiClipVideoDataset(records, **options)


def clip_frame_ids(video: torch.Tensor) -> np.ndarray:
    """Frame index of every (view, t) of a (V, C, T, H, W) item, from the gray-level pattern."""
    frames = video.permute(0, 2, 3, 4, 1).numpy()
    return np.array([[frame_index_of(frame) for frame in view] for view in frames])


def test_train_item(records: list[VideoRecord]) -> None:
    item = dataset(records)[0]
    assert item["video"].shape == (3, 3, 4, 32, 32) and item["video"].dtype == torch.uint8
    assert (item["label"], item["video_index"], item["path"]) == (3, 0, str(records[0].path))
    ids = clip_frame_ids(item["video"])
    assert (np.diff(ids, axis=1) == 2).all()  # stride 2 within each clip
    assert (np.diff(ids[:, 0]) >= 0).all() and ids[-1, -1] < NUM_FRAMES


@pytest.mark.parametrize("num_crops", [1, 3])
def test_eval_item(records: list[VideoRecord], num_crops: int) -> None:
    data = dataset(records, train=False, num_crops=num_crops, eval_scale=36)
    video = data[0]["video"]
    assert video.shape == (3 * num_crops, 3, 4, 32, 32) and video.dtype == torch.uint8
    ids = clip_frame_ids(video)
    starts = ids[::num_crops, 0]  # clip-major: views of one clip are adjacent and share frames
    assert (ids == np.repeat(ids[::num_crops], num_crops, axis=0)).all()
    np.testing.assert_array_equal(starts, [5, 15, 25])
    assert torch.equal(video, dataset(records, train=False, num_crops=num_crops, eval_scale=36)[0]["video"])


def test_each_train_clip_draws_its_own_flip(video_dir: Path) -> None:
    ramp = write_test_video(video_dir / "ramp.mp4", 12, 48, 64, pattern="gradient")
    video = dataset([VideoRecord(ramp, 0)], num_clips=8, clip_len=1, stride=1)[0]["video"]
    left, right = (
        video[..., :4].float().mean(dim=(1, 2, 3, 4)),
        video[..., -4:].float().mean(dim=(1, 2, 3, 4)),
    )
    increasing = (left < right).tolist()
    assert any(increasing) and not all(increasing)


def test_item_is_a_function_of_seed_epoch_index(records: list[VideoRecord]) -> None:
    first, second = dataset(records), dataset(records)
    assert torch.equal(first[0]["video"], second[0]["video"])
    first.set_epoch(1)
    assert not torch.equal(first[0]["video"], second[0]["video"])
    second.set_epoch(1)
    assert torch.equal(first[0]["video"], second[0]["video"])
    assert not torch.equal(dataset(records, seed=6)[0]["video"], second[0]["video"])


def test_video_shorter_than_clip_span_repeats_last_frame(records: list[VideoRecord]) -> None:
    item = dataset(records, train=False)[1]
    assert item["video"].shape == (3, 3, 4, 32, 32)
    np.testing.assert_array_equal(clip_frame_ids(item["video"]), [[0, 2, 4, 4]] * 3)


def test_broken_video_is_reported_and_dropped_by_collate(records: list[VideoRecord]) -> None:
    data = dataset(records)
    broken = data[2]
    assert broken["error"] == f"{records[2].path}: file not found"
    assert "video" not in broken
    batch = collate_clips([data[0], broken, data[1]])
    assert batch["video"].shape == (2, 3, 3, 4, 32, 32) and batch["video"].dtype == torch.uint8
    assert batch["label"].tolist() == [3, 1] and batch["label"].dtype == torch.int64
    assert batch["video_index"].tolist() == [0, 1]
    assert batch["skipped"] == [broken["error"]]
    empty = collate_clips([broken])
    assert empty["video"].shape == (0,) and empty["label"].shape == (0,)


def test_dataloader_with_workers_matches_in_process(records: list[VideoRecord]) -> None:
    data = dataset(records[:2])
    loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=2, collate_fn=collate_clips)
    (batch,) = list(loader)
    assert torch.equal(batch["video"], collate_clips([data[0], data[1]])["video"])


def test_invalid_dataset_arguments(records: list[VideoRecord]) -> None:
    with pytest.raises(ValueError, match="min_scale"):
        dataset(records, min_scale=20)
    with pytest.raises(ValueError, match="num_crops"):
        dataset(records, num_crops=2)
