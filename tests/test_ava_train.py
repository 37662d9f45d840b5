"""AVA data readers, the synthetic AVA-format set, the detector and ``comem train --task ava`` end to end."""

import dataclasses
import json
import os
import random
import shutil
import signal
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from videos import frame_index_of, gray_level

from comem.cli import main
from comem.config import TrainConfig
from comem.engine.step_engine import StepEngine
from comem.models.build import ModelSpec, build_model
from comem.tasks.ava.data import (
    AvaKeyframeDataset,
    ClipSpec,
    clip_indices,
    frame_of_second,
    load_ava,
    memory_centers,
    read_frame_list,
    read_keyframes,
)
from comem.tasks.ava.evaluation import AvaFormatError, evaluate_files
from comem.tasks.ava.frames import FrameReadError, MovieFrames
from comem.tasks.ava.model import AvaDetector, keyframe_clip, temporal_pool
from comem.tasks.ava.synthetic import SyntheticAvaSpec, write_synthetic_ava
from comem.tasks.ava.task import AvaTask, detection_step

TINY_AVA = SyntheticAvaSpec(train_movies=2, val_movies=2, size=32, keyframes=3)
TINY_FLAGS = [
    "--task", "ava", "--backbone", "tiny", "--crop-size", "32", "--clip-len", "4", "--stride", "4",
    "--clips", "3", "--batch-size", "2", "--epochs", "1", "--workers", "0", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def ava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ava")
    argv = ["make-synthetic-ava", str(root), "--train-movies", "2", "--val-movies", "2", "--size", "32"]
    assert main([*argv, "--keyframes", "3"]) == 0
    return root


def test_keyframe_seconds_map_to_frames_from_second_900() -> None:
    assert frame_of_second(902) == 60 and frame_of_second(1798) == 26940
    assert clip_indices(60, 4, 4, 100) == [52, 56, 60, 64]
    assert clip_indices(2, 4, 4, 10) == [0, 0, 2, 6]  # clamped at the movie's ends
    assert clip_indices(9, 4, 4, 10) == [1, 5, 9, 9]
    # One clip per third of a 300-frame movie; the keyframe's third (frame 120) gives the clip just
    # after the keyframe clip (span 16), or just before it at the movie's end.
    assert memory_centers(300, 3, 120, 16, None) == [50, 136, 250]
    assert memory_centers(300, 3, 290, 16, None) == [50, 150, 274]
    for seed in range(5):
        first, second, third = memory_centers(300, 3, 120, 16, random.Random(seed))
        assert 0 <= first < 100 and second in (104, 136) and 200 <= third < 300


def test_readers_merge_labels_per_box_and_keep_label_map_classes(tmp_path: Path) -> None:
    gt = tmp_path / "gt.csv"
    gt.write_text(
        "m,0902,0.1,0.2,0.3,0.4,1,0\n"
        "m,0902,0.1,0.2,0.3,0.4,3,0\n"  # same box: one box with labels 1 and 3
        "m,0902,0.5,0.2,0.7,0.4,9,1\n"  # class 9 only, not in the label map: no box
        "m,0901,0.1,0.2,0.3,0.4,1,0\n"  # outside the annotated seconds 902..1798
    )
    (keyframe,) = read_keyframes(gt, class_ids={1, 2, 3})
    assert (keyframe.video_id, keyframe.second) == ("m", 902)
    assert keyframe.boxes == [[0.1, 0.2, 0.3, 0.4]] and keyframe.labels == [[1, 3]]
    proposals = tmp_path / "p.csv"
    proposals.write_text(
        "m,0902,0.1,0.2,0.3,0.4,,0.95\nm,0902,0.5,0.2,0.7,0.4,,0.85\nm,0903,0.1,0.2,0.3,0.4,,0.9\n"
    )
    kept = read_keyframes(proposals, score_threshold=0.9)
    assert [(k.second, len(k.boxes)) for k in kept] == [(902, 1), (903, 1)]  # score >= threshold
    frame_list = tmp_path / "list.csv"
    frame_list.write_text(
        'original_vido_id video_id frame_id path labels\nm 0 0 m/m_000001.jpg ""\nm 0 1 m/m_000002.jpg ""\n'
    )
    assert read_frame_list(frame_list, tmp_path) == {
        "m": [tmp_path / "m/m_000001.jpg", tmp_path / "m/m_000002.jpg"]
    }
    frame_list.write_text("header\nm 0 0 m/m_000001.jpg\n")
    with pytest.raises(AvaFormatError, match=r"list\.csv:2: expected 5 columns"):
        read_frame_list(frame_list, tmp_path)


def test_synthetic_set_is_in_the_pyslowfast_layout(ava_dir: Path) -> None:
    data = load_ava(ava_dir, "2.2", detection_thresh=0.9)
    assert [c.name for c in data.categories] == ["walk", "jump", "cued"] and data.num_classes == 3
    assert set(data.train.movies) == {"train_000", "train_001"}
    assert len(data.train.movies["train_000"]) == TINY_AVA.seconds * 30
    seconds = {k.second for k in data.train.keyframes}
    assert seconds <= set(TINY_AVA.keyframe_seconds)
    # Movie 0 opened with the cue: every ground-truth box of it has the long-range class 3.
    assert all(3 in labels for k in data.train.keyframes if k.video_id == "train_000" for labels in k.labels)
    assert not any(
        3 in labels for k in data.train.keyframes if k.video_id == "train_001" for labels in k.labels
    )
    # Ground-truth boxes at the ground-truth frame are proposals (IoU >= 0.5): detections equal to
    # the ground truth score mAP 1 with the official rules (the excluded last keyframe is dropped).
    layout = data.layout
    lines = [row.rsplit(",", 1)[0] + ",1.0" for row in layout.groundtruth("val").read_text().splitlines()]
    perfect = ava_dir / "perfect.csv"
    perfect.write_text("\n".join(lines) + "\n")
    result, _ = evaluate_files(layout.labelmap, layout.groundtruth("val"), perfect, layout.exclusions("val"))
    assert result.mean_ap == 1.0
    with pytest.raises(AvaFormatError, match="ava_action_list_v2.1"):
        load_ava(ava_dir, "2.1")


def test_boxes_follow_the_frames_when_flipped(ava_dir: Path) -> None:
    data = load_ava(ava_dir, "2.2")
    spec = ClipSpec(num_clips=2, clip_len=4, stride=4, size=32)
    evaluated = AvaKeyframeDataset(data.train.keyframes, data.train.movies, 3, spec, train=False)
    flips = 0
    for epoch in range(6):
        trained = AvaKeyframeDataset(
            data.train.keyframes, data.train.movies, 3, spec, train=True, box_jitter=0.0
        )
        trained.set_epoch(epoch)
        plain, augmented = evaluated[0], trained[0]
        assert augmented["video"].shape == (2, 3, 4, 32, 32)
        if torch.equal(augmented["video"][0], plain["video"][0]):
            assert torch.allclose(augmented["boxes"], plain["boxes"])
        else:
            assert torch.equal(augmented["video"][0], plain["video"][0].flip(-1))
            mirrored = torch.stack(
                [1 - plain["boxes"][:, 2], plain["boxes"][:, 1], 1 - plain["boxes"][:, 0]], 1
            )
            assert torch.allclose(augmented["boxes"][:, :3], mirrored)
            flips += 1
        assert torch.equal(augmented["original_boxes"], plain["original_boxes"])
    assert 0 < flips < 6


def test_two_pass_keyframe_logits_equal_the_joint_forward() -> None:
    torch.manual_seed(0)
    detector = AvaDetector(
        build_model(ModelSpec(backbone="tiny", num_classes=1, dropout=0.0)), 5, dropout=0.0
    )
    for memory in detector.video_model.memories.values():  # a non-identity memory
        torch.nn.init.normal_(memory.out.weight, std=0.5)
    detector.eval()
    video = torch.randn(2, 3, 3, 4, 32, 32)
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.2, 0.9, 0.9], [0.0, 0.0, 1.0, 1.0]])
    box_index = torch.tensor([0, 0, 1])
    with torch.no_grad():
        joint = detector(video, boxes, box_index)
        banks = detector.video_model.memory_bank(video)
        two_pass = detector.forward_keyframe(video, boxes, box_index, banks)
        alone = detector(video[:, :1], boxes, box_index)
    assert joint.shape == (3, 5)
    assert torch.allclose(joint, two_pass, atol=1e-5)
    assert not torch.allclose(joint, alone, atol=1e-3)  # the memory clips change the keyframe's scores


def test_two_pathway_features_pool_per_pathway() -> None:
    # SlowFast-style [slow, fast] maps of B=2 items x N=3 clips: clip 0 of each, mean over time,
    # pathways concatenated along channels (their widths add up to backbone.out_channels).
    slow = torch.arange(6.0)[:, None, None, None, None].expand(6, 4, 2, 3, 3)
    fast = torch.arange(6.0)[:, None, None, None, None].expand(6, 1, 8, 3, 3) * 10
    pooled = temporal_pool(keyframe_clip([slow, fast], 2, 3))
    assert pooled.shape == (2, 5, 3, 3)
    assert pooled[:, 0, 0, 0].tolist() == [0.0, 3.0] and pooled[:, 4, 0, 0].tolist() == [0.0, 30.0]


def test_slowfast_detector_two_pass_equals_joint_and_trains_both_pathways() -> None:
    # The real two-pathway backbone (features are [slow, fast] maps of different T and width) under
    # the RoI head: the comem two-pass keyframe logits equal the joint forward's, and a comem step
    # sends gradients into the RoI head and both pathways.
    torch.manual_seed(0)
    spec = ModelSpec(backbone="slowfast_r50", num_classes=1, memory_stages=("last",), dropout=0.0)
    detector = AvaDetector(build_model(spec), 3, dropout=0.0)
    for memory in detector.video_model.memories.values():  # away from the identity init
        for pathway in memory.pathways:
            torch.nn.init.normal_(pathway.out.weight, std=0.5)
    video = torch.randn(1, 2, 3, 8, 32, 32)
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.3, 0.2, 0.9, 0.9]])
    box_index = torch.tensor([0, 0])
    detector.eval()
    with torch.no_grad():
        joint = detector(video, boxes, box_index)
        two_pass = detector.forward_keyframe(video, boxes, box_index, detector.video_model.memory_bank(video))
    assert joint.shape == (2, 3)
    torch.testing.assert_close(joint, two_pass, rtol=1e-4, atol=1e-5)

    detector.train()
    batch = {"video": torch.rand(2, 2, 3, 8, 32, 32), "boxes": boxes, "box_index": torch.tensor([0, 1])}
    batch["targets"] = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    config = TrainConfig(mode="comem", backbone="slowfast_r50", device="cpu")
    result = detection_step(
        detector, batch, StepEngine(config, detector, detector, torch.device("cpu")).context()
    )
    assert result.loss > 0 and result.items == 2
    stages = detector.video_model.backbone.stages
    assert all(p.grad.abs().sum() > 0 for p in detector.roi_head.parameters())
    for pathway in stages["stem"].pathways:  # reached through both pathways' whole depth
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pathway.parameters())


@pytest.mark.parametrize("mode", ["single", "joint", "comem"])
def test_train_task_ava_end_to_end(
    ava_dir: Path, tmp_path: Path, mode: str, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / mode
    assert main(["train", "--data", str(ava_dir), "--out", str(out), "--mode", mode, *TINY_FLAGS]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "ava" and metrics["mode"] == mode
    assert metrics["clips"] == (1 if mode == "single" else 3)
    assert 0.0 <= metrics["val_frame_mAP"] <= 100.0
    assert metrics["history"][0]["train_loss"] > 0
    detections = out / "detections_val.csv"
    rows = detections.read_text().splitlines()
    assert len(rows[0].split(",")) == 8 and rows[0].split(",")[1] == "0904"
    layout = load_ava(ava_dir).layout
    argv = ["eval-ava", "--gt", str(layout.groundtruth("val")), "--detections", str(detections)]
    argv += ["--labelmap", str(layout.labelmap), "--exclusions", str(layout.exclusions("val"))]
    capsys.readouterr()
    assert main(argv) == 0
    printed = float(capsys.readouterr().out.splitlines()[0].split(": ")[1])
    assert printed * 100 == pytest.approx(metrics["val_frame_mAP"], abs=1e-9)
    if mode == "comem":  # comem eval on the checkpoint writes the same detections and the same mAP
        shutil.copy(detections, tmp_path / "first.csv")
        assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu"]) == 0
        evaluated = json.loads((out / "eval_val.json").read_text())
        assert evaluated["val_frame_mAP"] == pytest.approx(metrics["val_frame_mAP"], abs=1e-9)
        assert detections.read_text() == (tmp_path / "first.csv").read_text()


def test_missing_ava_files_are_one_line_errors(
    ava_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(ava_dir / "annotations", broken / "annotations")
    assert main(["train", "--data", str(broken), "--out", str(tmp_path / "o"), *TINY_FLAGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("comem train: error: ") and "train.csv: frame list not found" in err
    assert len(err.splitlines()) == 1
    assert main(["train", "--data", str(ava_dir), *TINY_FLAGS, "--ava-version", "3"]) == 2
    assert "--ava-version must be one of 2.1, 2.2" in capsys.readouterr().err


def test_non_strict_pretrained_load_warns_about_missing_tensors(
    ava_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    defaults = TrainConfig()
    spec = ModelSpec(backbone="tiny", num_classes=1, memory=defaults.memory, gate_hidden=defaults.gate_hidden)
    state = build_model(spec).state_dict()
    del state["backbone.stages.layer4.conv1.weight"]
    torch.save(state, tmp_path / "weights.pt")
    config = TrainConfig(
        task="ava", data=str(ava_dir), out=str(tmp_path / "o"), device="cpu", workers=0,
        pretrained=str(tmp_path / "weights.pt"), pretrained_strict=False,
    )  # fmt: skip
    AvaTask(config).build_model()
    out = caplog.text
    assert "weights.pt: 1 tensors of the model are not in the file" in out
    assert "backbone.stages.layer4.conv1.weight" in out


def test_an_ava_dir_trained_without_task_ava_is_a_one_line_error(
    ava_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Its frame lists read as Charades frame lists whose labels are all empty: nothing to learn.
    flags = [flag for flag in TINY_FLAGS if flag not in ("--task", "ava")]
    assert main(["train", "--data", str(ava_dir), "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"comem train: error: {ava_dir}/: no training video has a label " + (
        "(an AVA directory: train it with --task ava)"
    )


def _write_gray_movie(path: Path, num_frames: int, fps: int) -> Path:
    """Frame i is flat gray level videos.gray_level(i); a keyframe every 8 frames, so reads seek."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.options = {"crf": "10", "preset": "ultrafast", "g": "8"}
        for i in range(num_frames):
            image = np.full((32, 32, 3), gray_level(i), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def test_movie_frames_are_read_on_the_30fps_grid(tmp_path: Path) -> None:
    movie = _write_gray_movie(tmp_path / "m.mp4", 60, 24)  # 2.5 s at 24 fps
    frames = MovieFrames(movie, start_second=0.0)
    assert len(frames) == 75
    # Grid frame i shows time i/30: the movie frame floor(i * 24 / 30). 0 and 74 are 2.5 s apart (a seek).
    read = frames.read([74, 0, 15, 30, 45, 31])
    expected = {0: 0, 15: 12, 30: 24, 31: 24, 45: 36, 74: 59}
    assert {i: frame_index_of(image.permute(1, 2, 0).numpy()) for i, image in read.items()} == expected
    shifted = MovieFrames(movie, start_second=1.0)  # grid frame 0 is second 1 of the movie
    read = shifted.read([0, 30])
    assert [frame_index_of(read[i].permute(1, 2, 0).numpy()) for i in (0, 30)] == [24, 48]
    with pytest.raises(FrameReadError, match="shorter than"):
        MovieFrames(movie, start_second=900.0)


def test_raw_movie_layout_gives_the_same_clips_as_extracted_frames(tmp_path: Path) -> None:
    spec = dataclasses.replace(TINY_AVA, train_movies=1, val_movies=1, movies=True)
    root = write_synthetic_ava(tmp_path / "ava", spec)
    from_frames = load_ava(root)
    shutil.rmtree(root / "frame_lists")
    from_movies = load_ava(root)
    assert isinstance(from_movies.train.movies["train_000"], MovieFrames)
    clips = ClipSpec(num_clips=2, clip_len=4, stride=4, size=32)
    items = [
        AvaKeyframeDataset(data.train.keyframes, data.train.movies, 3, clips, train=False)[1]
        for data in (from_frames, from_movies)
    ]
    assert items[0]["video"].shape == items[1]["video"].shape == (2, 3, 4, 32, 32)
    difference = (items[0]["video"].float() - items[1]["video"].float()).abs().mean()
    # JPEG vs H.264 noise is 2.5 levels on average here; reading one frame off gives 3.4, three off 4.7.
    assert difference < 3.0
    assert torch.equal(items[0]["boxes"], items[1]["boxes"])


def test_resume_mid_epoch_matches_a_straight_run(
    ava_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = [*TINY_FLAGS, "--epochs", "2", "--mode", "comem", "--data", str(ava_dir), "--dropout", "0.5"]
    assert main(["train", "--out", str(tmp_path / "straight"), *flags]) == 0
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())

    real_step, calls = detection_step, []

    def interrupted(*args, **kwargs):  # Ctrl-C at the start of the second step of epoch 1
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the step still finishes; the run stops after it
        return real_step(*args, **kwargs)

    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        patch.setattr("comem.tasks.ava.task.detection_step", interrupted)
        assert main(["train", "--out", str(out), *flags]) == 130
    saved = torch.load(out / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["step_in_epoch"]) == (0, 2)
    assert main(["train", "--out", str(out), *flags, "--resume"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["history"] == straight["history"]  # same losses, lr and val mAP, epoch by epoch
    assert (out / "tb").is_dir()


def test_ava_trains_and_evaluates_the_ema_of_its_weights(ava_dir: Path, tmp_path: Path) -> None:
    """With --ema-decay the validation scores both weights; comem eval scores the average unless
    --weights raw, and each gives the detections the run's validation wrote for it."""
    out = tmp_path / "run"
    argv = ["train", "--data", str(ava_dir), "--out", str(out), "--mode", "comem", *TINY_FLAGS]
    assert main([*argv, "--ema-decay", "0.5"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"val_frame_mAP", "val_ema_frame_mAP", "best_val_ema_frame_mAP"} <= set(metrics)
    trained = {"raw": out / "detections_val.csv", "ema": out / "ema" / "detections_val.csv"}
    assert trained["raw"].read_text() != trained["ema"].read_text()
    for weights, flags in (("ema", []), ("raw", ["--weights", "raw"])):
        evaluated = tmp_path / f"eval_{weights}"
        eval_argv = ["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu", "--out", str(evaluated)]
        assert main([*eval_argv, *flags]) == 0
        assert json.loads((evaluated / "eval_val.json").read_text())["weights"] == weights
        assert (evaluated / "detections_val.csv").read_text() == trained[weights].read_text()
