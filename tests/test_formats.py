"""Every dataset format on small files written here: detection, labels, decoding, errors, training."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from formatdata import (
    multi_hot,
    write_charades,
    write_charades_frame_lists,
    write_frames,
    write_kinetics_official,
    write_ssv1,
    write_ssv2,
)
from tinydata import FRAMES, TINY_TRAIN_FLAGS
from videos import frame_index_of

from comem.cli import main
from comem.data.datasets import DatasetFormatError, MultiClipVideoDataset, VideoRecord
from comem.data.decode import VideoDecodeError, open_video
from comem.data.formats import detect_format, load_splits
from comem.data.sampling import resample_grid, spans_overlapping

WRITERS = {
    "kinetics": write_kinetics_official,
    "charades": write_charades,
    "charades-frames": write_charades_frame_lists,
    "ssv1": write_ssv1,
    "ssv2": write_ssv2,
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("formats")
    return {name: writer(root / name) for name, writer in WRITERS.items()}


def is_ramp(record: VideoRecord) -> bool:
    """Whether a record's video shows the ramp pattern (else the rising gray levels)."""
    with open_video(record.path, fps=record.fps) as reader:
        frame = reader.read(np.array([0]))[0].astype(float)
    return frame[:, -4:].mean() - frame[:, :4].mean() > 100


@pytest.mark.parametrize("name", list(WRITERS))
def test_format_is_detected(datasets: dict[str, Path], name: str) -> None:
    assert detect_format(datasets[name]) == name
    assert load_splits(datasets[name]).data_format == name


def test_top_level_slowfast_csv_wins_over_annotation_folders(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    data = write_kinetics_official(tmp_path / "both", num_train=2, num_val=2, missing=0)
    assert detect_format(data) == "kinetics"
    (data / "train.csv").write_text("train/trId0000-x_000000_000010.mp4 0\n")
    (data / "val.csv").write_text("val/vaId0000-x_000000_000010.mp4 0\n")
    assert detect_format(data) == "slowfast"


def test_kinetics_official_csv(datasets: dict[str, Path], tmp_path: Path) -> None:
    splits = load_splits(datasets["kinetics"])
    assert splits.class_names == ["gray", "ramp"] and not splits.multi_label  # alphabetical
    assert (len(splits.train), len(splits.val), splits.test) == (4, 4, None)
    assert splits.missing == (f"{datasets['kinetics']}/annotations/train.csv: trId0004-x_000040_000050",)
    assert splits.train[0].path.name == "trId0000-x_000000_000010.mp4"
    for record in splits.train + splits.val:
        assert is_ramp(record) == (splits.class_names[record.label] == "ramp")


def test_kinetics_classes_txt_fixes_the_order_and_unknown_classes_are_errors(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    data = tmp_path / "k"
    write_kinetics_official(data, num_train=2, num_val=2, missing=0)
    (data / "classes.txt").write_text("ramp\ngray\n")
    splits = load_splits(data)
    assert splits.class_names == ["ramp", "gray"] and [r.label for r in splits.train] == [0, 1]
    (data / "classes.txt").write_text("ramp\n")
    with pytest.raises(
        DatasetFormatError, match=r"annotations/train.csv:3: class 'gray' is not in classes.txt"
    ):
        load_splits(data)


def test_charades_official_is_multi_label_with_spans(datasets: dict[str, Path]) -> None:
    splits = load_splits(datasets["charades"])
    assert splits.multi_label and splits.num_classes == 3
    assert splits.class_names == ["Holding a gray thing", "Looking at a ramp", "Sitting somewhere"]
    first, second = splits.train[0], splits.train[1]
    assert (first.label, first.spans) == ((0, 2), ((0, 0.0, 1.0), (2, 0.0, 0.4)))
    assert (second.label, second.spans) == ((1,), ((1, 0.0, 1.0),))
    assert len(splits.val) == 6 and splits.val[0].path.name == "T0000.mp4"  # Charades_v1_test -> val
    item = MultiClipVideoDataset(
        splits.train, num_clips=2, clip_len=4, stride=2, crop_size=32, train=True, num_classes=3
    )[0]
    assert item["label"].dtype == torch.float32
    np.testing.assert_array_equal(item["label"].numpy(), multi_hot((0, 2), 3))


def test_span_labels_give_each_clip_the_actions_it_overlaps(datasets: dict[str, Path]) -> None:
    assert spans_overlapping(
        ((0, 0.0, 1.0), (2, 0.0, 0.4), (5, 2.0, 3.0)), np.array([0.5]), np.array([0.9])
    ) == (0,)
    assert spans_overlapping(((2, 0.0, 0.4),), np.array([0.5, 0.1]), np.array([0.9, 0.2])) == (2,)
    records = load_splits(datasets["charades"]).train  # 0: c000 over 0-1 s, c002 over 0-0.4 s; 24 fps
    options = dict(
        num_clips=3, clip_len=2, stride=2, crop_size=32, train=True, num_classes=3, span_labels=True
    )
    data = MultiClipVideoDataset([records[0], dataclasses.replace(records[1], spans=())], **options)
    seen = set()
    for epoch in range(6):
        data.set_epoch(epoch)
        item = data[0]
        assert item["label"].shape == (3, 3)
        for clip, target in zip(item["video"], item["label"], strict=True):
            first, last = (frame_index_of(clip[:, t].permute(1, 2, 0).numpy()) / 24 for t in (0, -1))
            expected = (0, 2) if first <= 0.4 else (0,)
            np.testing.assert_array_equal(target.numpy(), multi_hot(expected, 3))
            seen.add(expected)
        no_spans = data[1]["label"]  # no spans known: every clip gets the video's labels
        np.testing.assert_array_equal(no_spans.numpy(), np.tile(multi_hot((1,), 3), (3, 1)))
    assert seen == {(0, 2), (0,)}


def test_span_label_training_runs(datasets: dict[str, Path], tmp_path: Path) -> None:
    for mode in ("comem", "joint"):
        out = tmp_path / mode
        flags = ["--data", str(datasets["charades"]), "--out", str(out), "--epochs", "1", *TINY_TRAIN_FLAGS]
        assert main(["train", *flags, "--span-labels", "true", "--mode", mode]) == 0
        assert json.loads((out / "metrics.json").read_text())["val_mAP"] >= 0


def test_charades_frame_lists_union_frame_labels(datasets: dict[str, Path]) -> None:
    splits = load_splits(datasets["charades-frames"])
    assert splits.multi_label and splits.num_classes == 157
    assert [r.label for r in splits.train] == [(0, 2), (1,), (0,), (1, 2)]
    record = splits.train[0]
    assert record.path == datasets["charades-frames"] / "frames" / "TF000" and record.fps == 24.0
    with open_video(record.path, fps=record.fps) as reader:
        assert reader.num_frames == FRAMES
        frames = reader.read(np.array([[3, 0], [FRAMES - 1, 3]]))
    assert [[frame_index_of(f) for f in clip] for clip in frames] == [[3, 0], [FRAMES - 1, 3]]


@pytest.mark.parametrize("name", ["ssv1", "ssv2"])
def test_something_something_labels_from_templates(datasets: dict[str, Path], name: str) -> None:
    splits = load_splits(datasets[name])
    assert splits.class_names == ["Moving something up", "Holding something"]
    assert [r.label for r in splits.train] == [0, 1, 0, 1]
    for record in splits.train + splits.val:
        assert is_ramp(record) == (record.label == 1)
    if name == "ssv1":
        assert splits.train[0].path.is_dir() and splits.train[0].fps == 12.0
    else:
        assert splits.val[0].path.name == "5000.webm"


@pytest.mark.parametrize(
    "name,edit,message",
    [
        (
            "charades",
            ("Charades_v1_test.csv", "c001 0.0 1.0", "c0x1 0.0 1.0"),
            "action class 'c0x1' is not of the form c000",
        ),
        (
            "ssv1",
            ("something-something-v1-train.csv", ";Holding something", ";Dancing"),
            "train.csv:2: label 'Dancing'",
        ),
        (
            "ssv2",
            ("something-something-v2-train.json", "Holding [something]", "Juggling"),
            "template 'Juggling' is not in",
        ),
    ],
)
def test_format_errors_name_the_file(
    tmp_path: Path, name: str, edit: tuple[str, str, str], message: str
) -> None:
    data = WRITERS[name](tmp_path / name, num_train=2, num_val=2)
    file, old, new = edit
    path = data / file
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises(DatasetFormatError) as caught:
        load_splits(data)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_frame_folder_errors(tmp_path: Path) -> None:
    folder = write_frames(tmp_path / "clip", "index", num_frames=3)
    (folder / "00002.jpg").write_bytes(b"not a jpeg")
    with (
        open_video(folder) as reader,
        pytest.raises(VideoDecodeError, match=r"00002.jpg: cannot decode frame"),
    ):
        reader.read(np.array([0, 1]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoDecodeError, match="no .jpg/.png frames"):
        open_video(tmp_path / "empty")


def test_resample_grid_in_time() -> None:
    thirty = np.arange(30) / 30
    np.testing.assert_array_equal(resample_grid(thirty, 15), np.arange(0, 30, 2))
    np.testing.assert_array_equal(resample_grid(thirty, 60)[:6], [0, 0, 1, 1, 2, 2])
    variable = np.array([0.0, 0.05, 0.3, 0.32, 0.6])  # a frame stays on screen until the next one
    np.testing.assert_array_equal(resample_grid(variable, 10), [0, 1, 1, 2, 3, 3, 4])


@pytest.mark.parametrize("name", list(WRITERS))
def test_train_runs_end_to_end_on_each_format(
    datasets: dict[str, Path], name: str, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    flags = ["--data", str(datasets[name]), "--out", str(out), "--epochs", "1", *TINY_TRAIN_FLAGS]
    assert main(["train", *flags]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data_format"] == name and metrics["skipped_videos"] == 0
    multi_label = name.startswith("charades")
    assert metrics["multi_label"] == multi_label
    key = "val_mAP" if multi_label else "val_top1"
    assert 0.0 <= metrics[key] <= 100.0 and metrics[f"best_{key}"] == metrics[key]
    assert ("val_top1" in metrics) != multi_label
    assert (out / "best.pt").is_file()
    classes = load_splits(datasets[name]).class_names
    assert (out / "classes.txt").read_text().splitlines() == classes
    if name == "charades":
        assert main(["eval", "--checkpoint", str(out / "best.pt"), "--workers", "0", "--device", "cpu"]) == 0
        report = json.loads((out / "eval_val_best" / "metrics.json").read_text())
        assert report["val_mAP"] == pytest.approx(metrics["val_mAP"], abs=1e-4)


def test_charades_map_matches_sklearn_after_training(datasets: dict[str, Path], tmp_path: Path) -> None:
    from sklearn.metrics import average_precision_score

    from comem.config import TrainConfig
    from comem.engine.evaluate import predict_dataset
    from comem.engine.trainer import Trainer
    from comem.tasks.classification import ClassificationTask, VideoScores

    config = TrainConfig(
        data=str(datasets["charades"]), out=str(tmp_path / "run"), epochs=1, backbone="tiny", crop_size=32,
        clip_len=4, stride=2, clips=2, batch_size=3, workers=0, device="cpu",
    )  # fmt: skip
    trainer = Trainer(config, ClassificationTask(config))
    trainer.run()
    predictions = predict_dataset(
        trainer.task, trainer.model, trainer.task.val_set, config, trainer.device, trainer.dist
    )
    result = VideoScores.from_predictions(predictions)
    targets = result.targets.numpy()
    assert targets.shape == (6, 3) and set(np.unique(targets)) == {0.0, 1.0}
    expected = 100 * np.mean(average_precision_score(targets, result.scores.numpy(), average=None))
    assert trainer.history[-1]["val_mAP"] == pytest.approx(expected, abs=1e-4)


def test_missing_torchcodec_is_a_one_line_error(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    try:
        import torchcodec  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torchcodec is installed")
    code = main(
        [
            "train",
            "--data",
            str(tiny_dataset),
            "--out",
            str(tmp_path),
            "--decoder",
            "torchcodec",
            *TINY_TRAIN_FLAGS,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--decoder torchcodec needs the torchcodec package" in err[0]


def test_target_fps_samples_clips_in_time(index_video: Path) -> None:
    # index_video: 36 frames at 24 fps. At 12 fps a stride of 1 steps two source frames.
    data = MultiClipVideoDataset(
        [VideoRecord(index_video, 0)],
        num_clips=2,
        clip_len=4,
        stride=1,
        crop_size=32,
        train=False,
        target_fps=12,
    )
    video = data[0]["video"]  # (V, C, T, H, W)
    ids = np.array(
        [[frame_index_of(video[v, :, t].permute(1, 2, 0).numpy()) for t in range(4)] for v in range(2)]
    )
    assert (np.diff(ids, axis=1) == 2).all()
    assert ids[0, 0] < ids[1, 0] and ids.max() < 36


def test_every_format_name_has_a_reader() -> None:
    # the names `--data-format` offers (comem.choices, torch-free) are the readers' names, and "auto"
    from comem.choices import DATA_FORMATS
    from comem.data.formats import READERS

    assert DATA_FORMATS == ("auto", *READERS)
