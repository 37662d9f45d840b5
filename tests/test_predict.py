"""``comem predict`` on videos of any size and length: scores, JSON, timeline PNG, bad files."""

import csv
import json
import os
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from tinydata import CLASS_NAMES
from videos import frame_index_of, write_test_video

from comem.checkpoint_state import is_multi_label
from comem.cli import main
from comem.engine.checkpoint import load_checkpoint, save_checkpoint
from comem.inference.evaluate import evaluate_checkpoint
from comem.inference.predict import number_of_clips, predict_video
from comem.inference.timeline import thumbnail_clips
from comem.inference.trained import load_trained


@pytest.fixture(scope="module")
def odd_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Videos unlike the training data: shorter than a clip, landscape and large, portrait, and
    other containers and codecs (VP9 WebM, MPEG-4 Part 2 AVI)."""
    root = tmp_path_factory.mktemp("odd_videos")
    return {
        "short": write_test_video(root / "short.mp4", 5, 32, 32),  # 5 frames < the clip span of 7
        "large": write_test_video(root / "large.mp4", 60, 180, 320),  # 2.5 s at 24 fps
        "portrait": write_test_video(root / "portrait.mp4", 30, 72, 40, pattern="gradient"),
        "webm": write_test_video(root / "vp9.webm", 20, 40, 56, codec="libvpx-vp9"),
        "avi": write_test_video(root / "mpeg4.avi", 20, 40, 56, codec="mpeg4", pattern="gradient"),
    }


def data_dir_of(videos: list[Path], root: Path) -> Path:
    """A data dir listing ``videos`` (absolute paths) under class 0 as train and val."""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (root / f"{split}.csv").write_text("".join(f"{video} 0\n" for video in videos))
    (root / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return root


def assert_predict_equals_eval(checkpoint: Path, videos: list[Path], tmp_path: Path, clips: int) -> None:
    """Predict runs views one at a time reading the memory bank and cuts crops frame by frame while
    decoding; eval runs all views in one graph on crops of whole clips: the scores must agree."""
    data = data_dir_of(videos, tmp_path / "data")  # its CSVs name the videos where they are
    state = load_checkpoint(checkpoint)
    state["config"]["allow_outside_data"] = True
    checkpoint = tmp_path / f"outside_{checkpoint.name}"
    save_checkpoint(state, checkpoint)
    _, out = evaluate_checkpoint(
        checkpoint, data=data, views=clips, crops=3, workers=0, device="cpu", out=tmp_path / "eval"
    )
    with (out / "predictions.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [row["video"] for row in rows] == [str(video) for video in videos]
    trained = load_trained(checkpoint, torch.device("cpu"))
    for row in rows:
        prediction = predict_video(trained, row["video"], clips=clips, crops=3)
        assert prediction.clip_probabilities.shape == (clips, 2)
        for k in (1, 2):
            index = CLASS_NAMES.index(row[f"pred{k}"])
            assert prediction.scores[index] == pytest.approx(float(row[f"score{k}"]), abs=5e-6), row["video"]


@pytest.mark.parametrize("mode", ["comem", "single", "target_fps"])
def test_predict_scores_equal_eval_scores(
    mode: str, tiny_checkpoint: Path, odd_videos: dict, tmp_path: Path
) -> None:
    """180x320 and 72x40 frames are scaled to the eval scale (32) before 3 crops along the long
    side; a ``single`` checkpoint scores each view alone, in eval and in predict; a model trained
    with ``--target-fps`` samples its clips on that frame grid in both."""
    checkpoint = tiny_checkpoint
    if mode != "comem":
        state = load_checkpoint(tiny_checkpoint)
        if mode == "target_fps":  # the videos are 24 fps: clips on a 10-fps grid
            state["config"]["target_fps"] = 10.0
        else:
            state["config"]["mode"] = mode
        checkpoint = tmp_path / f"{mode}.pt"
        save_checkpoint(state, checkpoint)
    videos = [odd_videos["large"], odd_videos["portrait"]]
    assert_predict_equals_eval(checkpoint, videos, tmp_path, clips=3)


def test_prediction_timeline_places_clips_and_thumbnails(tiny_checkpoint: Path, odd_videos: dict) -> None:
    trained = load_trained(tiny_checkpoint, torch.device("cpu"))
    prediction = predict_video(trained, odd_videos["large"], clips=4)
    # clip_len 4, stride 2: span 7; start range [0, 53] in 4 segments of 13.5 -> starts 6, 20, 33, 47
    assert prediction.clip_frames.tolist() == [[6, 12], [20, 26], [33, 39], [47, 53]]
    np.testing.assert_allclose(prediction.clip_times_s, np.array([9.5, 23.5, 36.5, 50.5]) / 24)
    assert prediction.duration_s == pytest.approx(2.5)
    # thumbnails: each clip's middle frame (the third of 4, start + 4), kept at 160 px short side
    assert [frame_index_of(t) for t in prediction.thumbnails] == [10, 24, 37, 51]
    assert prediction.thumbnails[0].shape == (160, 284, 3)
    np.testing.assert_allclose(prediction.clip_probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(prediction.scores, prediction.clip_probabilities.mean(axis=0), atol=1e-6)


def test_predict_cli_json_and_timeline_png_on_any_size_and_length(
    tiny_checkpoint: Path, odd_videos: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    videos = [str(odd_videos[name]) for name in ("short", "large", "portrait", "webm", "avi")]
    plot = tmp_path / "timeline.png"
    argv = ["predict", *videos, "--checkpoint", str(tiny_checkpoint), "--device", "cpu"]
    assert main([*argv, "--json", "--clips-per-second", "4", "--plot", str(plot)]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [result["video"] for result in results] == videos
    # the checkpoint's 2 views, or 4 per second: 2.5 s -> 10 clips, 30 frames at 24 fps -> 5 clips
    assert [result["clips"] for result in results] == [2, 10, 5, 4, 4]
    assert [result["size"] for result in results] == [[32, 32], [320, 180], [40, 72], [56, 40], [56, 40]]
    for result in results:
        top = result["top"]
        assert {item["class"] for item in top} == set(CLASS_NAMES)
        assert top[0]["score"] >= top[1]["score"] and top[0]["score"] + top[1]["score"] == pytest.approx(1.0)
        for item in top:  # the video score is the mean of the clip scores
            assert np.mean(result["clip_scores"][item["class"]]) == pytest.approx(item["score"], abs=1e-5)
        times = result["clip_times_s"]
        assert times == sorted(times) and 0 < times[0] and times[-1] < result["duration_s"] + 1e-9
        image = matplotlib.image.imread(result["plot"])
        assert Path(result["plot"]).name == f"timeline-{Path(result['video']).stem}.png"
        assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 1000


def test_predict_cli_eval_memory_sets_which_clips_share_a_memory(
    tiny_checkpoint: Path, odd_videos: dict, capsys: pytest.CaptureFixture
) -> None:
    argv = ["predict", str(odd_videos["large"]), "--checkpoint", str(tiny_checkpoint), "--device", "cpu"]
    reads = {}
    for memory in ("groups", "all"):
        assert main([*argv, "--json", "--views", "4", "--eval-memory", memory]) == 0
        (result,) = json.loads(capsys.readouterr().out)
        reads[memory] = {stage: np.array(weights) for stage, weights in result["attention"].items()}
    for weights in reads["groups"].values():  # trained on 2 clips: {0, 2} and {1, 3}
        assert weights[0, 1] == weights[0, 3] == weights[1, 0] == weights[1, 2] == 0.0
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    # one memory of all 4: clip 0 reads clips 1 and 3 too (at some stage more than rounding)
    assert max(weights[0, 1] + weights[0, 3] for weights in reads["all"].values()) > 1e-3


def test_predict_cli_text_output_and_single_plot(
    tiny_checkpoint: Path, odd_videos: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    plot = tmp_path / "one.png"
    argv = ["predict", str(odd_videos["portrait"]), "--checkpoint", str(tiny_checkpoint), "--device", "cpu"]
    assert main([*argv, "--top", "1", "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{odd_videos['portrait']}  (1.2 s, 40x72, 2 clips)")
    assert len(lines) == 3 and lines[1].split()[1] in CLASS_NAMES and lines[2] == f"  timeline: {plot}"
    assert plot.is_file()


def test_predict_bad_files_are_one_line_each_and_good_ones_still_predicted(
    tiny_checkpoint: Path, odd_videos: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video\n")
    missing = tmp_path / "missing.webm"
    argv = ["predict", str(not_video), str(odd_videos["short"]), str(missing)]
    assert main([*argv, "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--json"]) == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in captured.err
    assert errors[0].startswith(f"comem predict: error: {not_video}: ")
    assert errors[1] == f"comem predict: error: {missing}: file not found"
    assert [result["video"] for result in json.loads(captured.out)] == [str(odd_videos["short"])]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--top", "0"], "--top must be >= 1"),
        (["--checkpoint", "nowhere.pt"], "nowhere.pt: checkpoint not found"),
    ],
)
def test_predict_bad_options_are_one_line_errors(
    flags: list[str], expected: str, tiny_checkpoint: Path, odd_videos: dict, capsys: pytest.CaptureFixture
) -> None:
    argv = ["predict", str(odd_videos["short"]), "--checkpoint", str(tiny_checkpoint), *flags]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]


def test_predict_on_an_ava_checkpoint_says_what_it_is(
    tmp_path: Path, odd_videos: dict, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "ava.pt"  # the keys `comem train --task ava` writes besides the weights
    save_checkpoint({"model": {}, "model_spec": {}, "config": {"task": "ava"}, "num_classes": 3}, path)
    assert main(["predict", str(odd_videos["short"]), "--checkpoint", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "ava.pt: an AVA detection checkpoint" in lines[0] and "comem eval" in lines[0]


def test_number_of_clips_and_thumbnail_choice() -> None:
    assert number_of_clips(300, 25.0, clips=3, clips_per_second=None, max_clips=64) == 3
    assert number_of_clips(300, 25.0, clips=3, clips_per_second=1.0, max_clips=64) == 12
    assert number_of_clips(30, 30.0, clips=3, clips_per_second=1.0, max_clips=64) == 3  # at least --clips
    assert number_of_clips(90_000, 30.0, clips=3, clips_per_second=1.0, max_clips=64) == 64
    assert number_of_clips(300, 0.0, clips=5, clips_per_second=2.0, max_clips=64) == 5  # unknown fps
    assert thumbnail_clips(5) == [0, 1, 2, 3, 4]
    assert thumbnail_clips(26) == [0, 4, 7, 11, 14, 18, 21, 25]


REAL_VIDEOS = os.environ.get("COMEM_REAL_VIDEOS")


@pytest.mark.skipif(not REAL_VIDEOS, reason="set COMEM_REAL_VIDEOS to a folder of real-world videos")
def test_predict_real_world_videos(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Files no one here wrote (e.g. torchcodec's test resources): any codec, size and length."""
    folder = Path(REAL_VIDEOS)
    videos = sorted(str(p) for p in folder.iterdir() if p.suffix in {".mp4", ".mkv", ".webm", ".avi", ".mov"})
    assert videos, f"no videos in {folder}"
    argv = ["predict", *videos, "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--json"]
    assert main([*argv, "--clips-per-second", "2", "--plot", str(tmp_path / "real.png")]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == len(videos)
    for result in results:
        assert result["clips"] >= 2 and result["top"][0]["class"] in CLASS_NAMES
        assert matplotlib.image.imread(result["plot"]).shape[1] > 1000
    assert_predict_equals_eval(tiny_checkpoint, [Path(video) for video in videos], tmp_path, clips=4)


def test_multi_label_checkpoint_scores_clips_with_sigmoids(tiny_checkpoint: Path, odd_videos: dict) -> None:
    trained = load_trained(tiny_checkpoint, torch.device("cpu"))
    single = predict_video(trained, odd_videos["large"], clips=3)
    trained.multi_label = True  # as a checkpoint of a run on multi-hot labels records
    multi = predict_video(trained, odd_videos["large"], clips=3)
    assert not np.allclose(multi.clip_probabilities.sum(axis=1), 1.0)
    # two classes: softmax p0 = sigmoid(l0 - l1), and each sigmoid s_k gives back l_k = logit(s_k)
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    differences = logit(multi.clip_probabilities[:, 0]) - logit(multi.clip_probabilities[:, 1])
    np.testing.assert_allclose(logit(single.clip_probabilities[:, 0]), differences, atol=1e-4)
    np.testing.assert_allclose(multi.scores, multi.clip_probabilities.mean(axis=0), atol=1e-6)


def test_checkpoint_says_whether_labels_were_multi_hot() -> None:
    assert is_multi_label({"multi_label": True, "history": []})
    assert not is_multi_label({"multi_label": False, "history": [{"val_mAP": 10.0}]})
    assert is_multi_label({"history": [{"epoch": 1}, {"epoch": 2, "val_mAP": 10.0}]})  # older checkpoints
    assert not is_multi_label({"history": [{"epoch": 1, "val_top1": 50.0}]})
