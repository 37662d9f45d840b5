"""``comem.load(...).predict``: files, decoded frames and clip tensors give the scores the model
gives, and each memory stage's clips x clips read weights are the ones the memory applied."""

import json
import math
from pathlib import Path

import av
import matplotlib.image
import numpy as np
import pytest
import torch
from tinydata import CLASS_NAMES
from torch import nn
from torchvision.models import video as tv_video
from videos import write_test_video

import comem
from comem.cli import main
from comem.config import ConfigError
from comem.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from comem.inference.predict import FramesError, predict_video
from comem.inference.timeline import plot_timeline
from comem.inference.trained import load_trained
from comem.memory import CollaborativeMemory, even_times, relative_time_features


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_video(tmp_path_factory.mktemp("predictor") / "long.mp4", 60, 40, 72)


def decoded(path: Path) -> np.ndarray:
    """Every frame (T, H, W, 3) uint8, decoded with PyAV directly."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def reference_read_weights(model: nn.Module, clips: torch.Tensor) -> dict[str, torch.Tensor]:
    """Read weights of the clip summaries each memory sees in a one-graph forward, computed here
    (summaries pooled as the memory's ``summary`` names):
    softmax(q k^T / sqrt(d') + b) for the softmax read, sigmoid(q k^T / sqrt(d') + b) / N for the
    sigmoid one, where b is the relative-time bias of clips spread evenly (none without one)."""
    seen: dict[str, torch.Tensor] = {}

    def capture(memory: CollaborativeMemory, args: tuple, stage: str) -> None:
        features, num_clips = args[:2]
        flat = features.flatten(2)  # (N, C, T·H·W)
        means, peaks = flat.mean(dim=2), flat.max(dim=2).values
        summaries = {"mean": means, "max": peaks, "meanmax": means + peaks}[memory.summary]
        bank = summaries.view(1, num_clips, -1)
        scores = (bank @ memory.query.weight.T) @ (bank @ memory.key.weight.T).transpose(1, 2)
        scores = scores / math.sqrt(memory.key_dim)
        if memory.time_bias is not None:
            times = even_times(1, num_clips)
            weights = memory.time_bias + bank @ memory.query.weight.T @ memory.time_query.T
            scores = scores + (relative_time_features(times, times) @ weights[..., None])[..., 0]
        if memory.memory == "sigmoid":
            seen[stage] = scores.sigmoid()[0] / num_clips
        else:
            assert memory.memory == "attention"
            seen[stage] = scores.softmax(dim=-1)[0]

    handles = [
        memory.register_forward_pre_hook(lambda m, args, stage=stage: capture(m, args, stage))
        for stage, memory in zip(model.memory_stage_names, model.memories.values(), strict=True)
    ]
    with torch.no_grad():
        model(clips[None])
    for handle in handles:
        handle.remove()
    return seen


def test_predictions_from_a_file_its_frames_and_its_clips_agree(
    tiny_checkpoint: Path, long_video: Path
) -> None:
    predictor = comem.load(tiny_checkpoint, device="cpu")
    assert predictor.class_names == list(CLASS_NAMES)
    from_file = predictor.predict(long_video, clips=4, crops=3)
    reference = predict_video(
        load_trained(tiny_checkpoint, torch.device("cpu")), long_video, clips=4, crops=3
    )
    np.testing.assert_array_equal(from_file.scores, reference.scores)
    from_frames = predictor.predict(torch.from_numpy(decoded(long_video)), clips=4, crops=3)
    np.testing.assert_allclose(from_frames.clip_scores, from_file.clip_scores, atol=1e-6)
    assert from_frames.clip_frames.tolist() == from_file.clip_frames.tolist()
    stages = predictor.model.memory_stage_names
    assert list(from_file.attention) == stages == predictor.model.backbone.stage_names  # default: all
    kinds = {memory.memory for memory in predictor.model.memories.values()}
    for weights in from_file.attention.values():  # 3 crops pooled into clips
        assert weights.shape == (4, 4)
        if kinds == {"attention"}:  # softmax rows still sum to 1
            np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
        else:  # sigmoid weights / N: each row's sum in (0, 1]
            assert kinds == {"sigmoid"}
            assert (weights >= 0).all() and (weights.sum(axis=1) <= 1 + 1e-5).all()
    for stage in stages:
        np.testing.assert_allclose(from_frames.attention[stage], from_file.attention[stage], atol=1e-5)


def test_clip_tensor_scores_and_read_weights_are_the_models(tiny_checkpoint: Path) -> None:
    predictor = comem.load(tiny_checkpoint, device="cpu", eval_memory="all")  # one memory of all 5
    clips = torch.randn(5, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    prediction = predictor.predict(clips)
    with torch.no_grad():
        expected = predictor.model(clips[None])[0].softmax(dim=-1)
    # float32 rounding of the per-clip and the one-graph forward, compounded over five memory stages
    np.testing.assert_allclose(prediction.clip_scores, expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(prediction.scores, expected.mean(dim=0).numpy(), atol=1e-4)
    assert prediction.clip_frames.shape == (0, 2) and prediction.thumbnails == []
    reference = reference_read_weights(predictor.model, clips)
    for stage, weights in reference.items():
        np.testing.assert_allclose(prediction.attention[stage], weights.numpy(), atol=1e-4)
        assert not np.allclose(weights.numpy(), 0.2, atol=1e-3)  # random memories: not uniform
    # by default memories as in training: the checkpoint trained on 2 clips, so clips {0, 3}, {1, 4}
    # and {2} (each spread over the video) build one memory each, at their evenly spread times
    grouped = comem.load(tiny_checkpoint, device="cpu").predict(clips)
    times = (torch.arange(5.0) + 0.5)[None] / 5
    expected = torch.zeros(5, grouped.clip_scores.shape[1])
    with torch.no_grad():
        for group in ([0, 3], [1, 4], [2]):
            expected[group] = predictor.model(clips[None, group], times=times[:, group])[0].softmax(dim=-1)
    np.testing.assert_allclose(grouped.clip_scores, expected.numpy(), atol=1e-4)
    assert np.abs(grouped.clip_scores - prediction.clip_scores).max() > 1e-3
    for weights in grouped.attention.values():  # a clip reads its own group only
        assert weights[0, 1] == weights[0, 2] == weights[0, 4] == weights[2, 0] == weights[4, 3] == 0.0
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)


def test_single_model_reads_only_its_own_clip(tiny_checkpoint: Path, tmp_path: Path) -> None:
    state = load_checkpoint(tiny_checkpoint)
    state["config"]["mode"] = "single"
    save_checkpoint(state, tmp_path / "single.pt")
    prediction = comem.load(tmp_path / "single.pt", device="cpu").predict(torch.randn(3, 3, 4, 32, 32))
    for weights in prediction.attention.values():
        np.testing.assert_array_equal(weights, np.eye(3))


def test_load_a_wrapped_network_from_its_weights_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = comem.wrap(tv_video.r3d_18(num_classes=3), ["layer4"], memory="average")
    torch.save(network.state_dict(), tmp_path / "weights.pt")
    fresh = comem.wrap(tv_video.r3d_18(num_classes=3), ["layer4"], memory="average")
    predictor = comem.load(tmp_path / "weights.pt", model=fresh, device="cpu", clip_len=4, crop_size=32)
    assert predictor.class_names == ["0", "1", "2"] and predictor.config.clip_len == 4
    frames = torch.randint(0, 256, (20, 40, 48, 3), dtype=torch.uint8)
    prediction = predictor.predict(frames, clips=3)
    network.eval()
    direct = comem.load(network, device="cpu", clip_len=4, crop_size=32).predict(frames, clips=3)
    np.testing.assert_allclose(prediction.scores, direct.scores, atol=1e-6)
    np.testing.assert_allclose(prediction.attention["layer4"], np.full((3, 3), 1 / 3), atol=1e-6)
    other = comem.wrap(tv_video.mc3_18(num_classes=3), ["layer4"])
    with pytest.raises(CheckpointError, match=r"weights.pt: does not fit the model"):
        comem.load(tmp_path / "weights.pt", model=other)
    with pytest.raises(ConfigError, match="unknown setting.*clip_length"):
        comem.load(network, clip_length=4)
    with pytest.raises(FramesError, match=r"\(T, H, W, 3\) uint8 video, got int64"):
        predictor.predict(torch.zeros(4, 8, 8, 3, dtype=torch.int64))


def test_predict_cli_prints_and_plots_the_read_weights(
    tiny_checkpoint: Path, long_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    plot = tmp_path / "timeline.png"
    argv = [
        "predict",
        str(long_video),
        "--checkpoint",
        str(tiny_checkpoint),
        "--device",
        "cpu",
        "--clips",
        "5",
    ]
    assert main([*argv, "--json", "--plot", str(plot)]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    predictor = comem.load(tiny_checkpoint, device="cpu")
    expected = predictor.predict(long_video, clips=5).attention
    assert list(result["attention"]) == list(expected)
    for stage, weights in expected.items():
        np.testing.assert_allclose(np.array(result["attention"][stage]), weights, atol=1e-6)
    prediction = predictor.predict(long_video, clips=5)
    prediction.attention = {}
    plot_timeline(tmp_path / "plain.png", prediction, predictor.class_names)
    with_maps, plain = matplotlib.image.imread(plot), matplotlib.image.imread(tmp_path / "plain.png")
    assert with_maps.shape[1] == plain.shape[1] and with_maps.shape[0] > plain.shape[0] + 200
