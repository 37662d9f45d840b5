"""Shared fixtures: small real videos encoded once per test session."""

from pathlib import Path

import pytest
import torch
from tinydata import write_dataset
from videos import write_test_video, write_textured_video

NUM_FRAMES = 36
HEIGHT, WIDTH = 48, 64

# The tests' tensors are tiny: intra-op threads only add contention (5x slower on a busy 2-core box).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def index_video(video_dir: Path) -> Path:
    """36 frames of 48x64 H.264 whose gray level encodes the frame index (see videos.gray_level)."""
    return write_test_video(video_dir / "index.mp4", NUM_FRAMES, HEIGHT, WIDTH)


@pytest.fixture(scope="session")
def faststart_video(video_dir: Path) -> Path:
    """Like ``index_video`` but with the moov atom first, so a truncated copy still opens."""
    return write_test_video(video_dir / "faststart.mp4", NUM_FRAMES, HEIGHT, WIDTH, faststart=True)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PySlowFast-format dir of 4 train + 4 val 24-frame 32x32 videos, 2 balanced classes.

    Shared by the whole session: tests must not write into it (copy it first).
    """
    return write_dataset(tmp_path_factory.mktemp("tiny_dataset"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of one real ``comem train`` epoch on ``tiny_dataset`` whose memory weights are
    then randomised, so every view's score depends on the other views (after one step the memory
    is still nearly the identity). Shared by the session: tests must not write beside it."""
    from tinydata import TINY_TRAIN_FLAGS

    from comem.cli import main
    from comem.engine.checkpoint import load_checkpoint, save_checkpoint

    out = tmp_path_factory.mktemp("tiny_checkpoint")
    assert (
        main(["train", "--data", str(tiny_dataset), "--out", str(out), "--epochs", "1", *TINY_TRAIN_FLAGS])
        == 0
    )
    state = load_checkpoint(out / "last.pt")
    generator = torch.Generator().manual_seed(0)
    for key, value in state["model"].items():
        if key.startswith("memories.") and value.is_floating_point():
            state["model"][key] = torch.randn(value.shape, generator=generator)
    path = out / "random_memory.pt"
    save_checkpoint(state, path)
    return path


@pytest.fixture(scope="session")
def portrait_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir of two portrait (48x32) 24-frame textured videos, one per class (train = val):
    three test crops per clip run top, centre, bottom and all differ."""
    from tinydata import CLASS_NAMES

    root = tmp_path_factory.mktemp("portrait")
    rows = [f"{write_textured_video(root / f'v{i}.mp4', 24, 48, 32, seed=i).name} {i}" for i in (0, 1)]
    for split in ("train", "val"):
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return root
