"""Input normalisation follows the weights: a torchvision network loaded through comem sees the same
input as torchvision's own weights-and-transforms pipeline, and checkpoints carry the normalisation
to eval and predict."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tinydata import TINY_TRAIN_FLAGS, randomise_norms
from torchvision.models import video as tv_video

from comem.checkpoint_state import spec_from_state
from comem.cli import main
from comem.config import TrainConfig
from comem.data.datasets import MultiClipVideoDataset, VideoRecord, collate_clips
from comem.data.frame_folder import FrameFolderReader
from comem.data.transforms import normalize
from comem.engine.checkpoint import load_checkpoint, save_checkpoint
from comem.engine.step_engine import StepEngine
from comem.inference.predict import predict_video
from comem.inference.trained import load_trained
from comem.models.build import ModelSpec, build_model, load_pretrained
from comem.models.normalization import PYSLOWFAST, TORCHVISION_KINETICS

R2PLUS1D_FILE = "r2plus1d_18-91a641e6.pth"  # the name torchvision's R2Plus1D_18_Weights download under


def seed_torch_hub(torch_home: Path, seed: int = 1) -> torch.nn.Module:
    """A torchvision r2plus1d_18 with non-default weights and BatchNorm statistics, saved where
    ``torchvision`` would have downloaded it under ``torch_home``; returns the network (eval mode)."""
    torch.manual_seed(seed)
    reference = tv_video.r2plus1d_18(weights=None)
    randomise_norms(reference)
    reference.eval()
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(reference.state_dict(), folder / R2PLUS1D_FILE)
    return reference


def write_frames(folder: Path, frames: int, height: int, width: int) -> Path:
    """PNG frames (lossless, any size) of smooth colour texture that moves over time."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (frames, 6, 8, 3)).astype(np.uint8)
    for index in range(frames):
        image = Image.fromarray(coarse[index]).resize((width, height), Image.BILINEAR)
        image.save(folder / f"{index + 1:05d}.png")
    return folder


def test_torchvision_weights_through_comem_match_torchvision_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    reference = seed_torch_hub(tmp_path / "torch")
    # 128x171 is the size torchvision's transforms resize to, so only its centre crop and
    # normalisation act; comem's eval crop must pick the same pixels and normalise the same way.
    frames_dir = write_frames(tmp_path / "video", 4, 128, 171)

    with FrameFolderReader(frames_dir) as reader:
        decoded = torch.from_numpy(reader.read(np.arange(4)[None])[0]).permute(0, 3, 1, 2)  # (T, C, H, W)
    weights = tv_video.R2Plus1D_18_Weights.KINETICS400_V1
    with torch.no_grad():
        expected = reference(weights.transforms()(decoded)[None])[0]  # (400,)

    # memories after 3 stages; built with other values, which loading torchvision's weights replaces
    spec = ModelSpec(backbone="r2plus1d_18", num_classes=400).with_normalization(PYSLOWFAST)
    model = build_model(spec)
    assert model.normalization == PYSLOWFAST
    assert load_pretrained(model, "torchvision") == []
    assert model.normalization == (tuple(weights.transforms().mean), tuple(weights.transforms().std))
    model.eval()
    dataset = MultiClipVideoDataset(
        [VideoRecord(frames_dir, 0)], num_clips=1, clip_len=4, stride=1, crop_size=112, train=False,
        eval_scale=128,
    )  # fmt: skip
    batch = collate_clips([dataset[0]])
    with torch.no_grad():
        logits = model(normalize(batch["video"], *model.normalization))[0, 0]
        shifted = model(normalize(batch["video"], *PYSLOWFAST))[0, 0]
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert (shifted - expected).abs().max() > 100 * (logits - expected).abs().max()

    # the engine's input conversion (training and evaluation steps) normalises with the model's own values
    step = StepEngine(TrainConfig(device="cpu"), model, model, torch.device("cpu")).context()
    with torch.no_grad():
        scores = model(step.to_input(batch["video"]))[0, 0].softmax(-1)
    torch.testing.assert_close(scores, expected.softmax(-1), rtol=1e-4, atol=1e-6)


def test_missing_torchvision_file_is_one_line_naming_file_and_url(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    flags = [
        "train",
        "--data",
        str(tiny_dataset),
        "--out",
        str(tmp_path / "run"),
        "--pretrained",
        "torchvision",
    ]
    assert main([*flags, "--backbone", "r2plus1d_18", "--epochs", "1", "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert str(tmp_path / "empty" / "hub" / "checkpoints" / R2PLUS1D_FILE) in error
    assert f"https://download.pytorch.org/models/{R2PLUS1D_FILE}" in error

    assert main([*flags, "--backbone", "tiny", "--epochs", "1", "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "no weights for backbone tiny" in error


def test_checkpoint_stores_torchvision_normalization_and_predict_uses_it(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    seed_torch_hub(tmp_path / "torch")
    out = tmp_path / "run"
    flags = [flag if flag != "tiny" else "r2plus1d_18" for flag in TINY_TRAIN_FLAGS]
    args = [
        "train",
        "--data",
        str(tiny_dataset),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--pretrained",
        "torchvision",
    ]
    assert main([*args, *flags, "--memory-stages", "last"]) == 0
    state = load_checkpoint(out / "last.pt")
    assert state["model_spec"]["mean"] == TORCHVISION_KINETICS.mean
    assert state["model_spec"]["std"] == TORCHVISION_KINETICS.std

    # a classifier of small weights, so that the class probabilities compared below are not saturated
    state["model"]["head.fc.weight"] = torch.randn(state["model"]["head.fc.weight"].shape) * 1e-3
    save_checkpoint(state, out / "small_head.pt")
    trained = load_trained(out / "small_head.pt", torch.device("cpu"))
    assert trained.model.normalization == TORCHVISION_KINETICS
    video = tiny_dataset / "videos" / "val_1.mp4"
    prediction = predict_video(trained, video, clips=2, crops=1)
    dataset = MultiClipVideoDataset(
        [VideoRecord(video, 1)], num_clips=2, clip_len=4, stride=2, crop_size=32, train=False
    )
    clips = dataset[0]["video"][None]
    with torch.no_grad():
        expected = trained.model(normalize(clips, *TORCHVISION_KINETICS)).softmax(-1).mean(1)[0]
        shifted = trained.model(normalize(clips, *PYSLOWFAST)).softmax(-1).mean(1)[0]
    error = np.abs(prediction.scores - expected.numpy()).max()
    assert error < 1e-5
    assert np.abs(prediction.scores - shifted.numpy()).max() > 100 * max(error, 1e-6)

    # explicit --mean/--std win over the weights' values and are stored the same way
    custom = ["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--out", str(tmp_path / "custom")]
    assert main([*args, *flags, "--memory-stages", "last", *custom]) == 0
    spec = spec_from_state(load_checkpoint(tmp_path / "custom" / "last.pt"))
    assert (spec.mean, spec.std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_old_checkpoints_without_normalization_read_as_pyslowfast(tiny_checkpoint: Path) -> None:
    state = load_checkpoint(tiny_checkpoint)
    state["model_spec"].pop("mean", None)
    state["model_spec"].pop("std", None)
    spec = spec_from_state(state)
    assert (spec.mean, spec.std) == PYSLOWFAST
