"""Tiny PySlowFast-format data directories of real H.264 videos (and small model helpers) for tests.

Class 0 videos are flat gray frames whose level rises over time, class 1 videos a horizontal ramp,
so a model can tell the classes apart from a single clip and overfit them in a few steps.
"""

import dataclasses
from pathlib import Path

import torch
from videos import write_test_video

FRAMES = 24
SIZE = 32
CLASS_NAMES = ("gray", "ramp")
PATTERNS = ("index", "gradient")

# The tiny-model options every CLI training test uses (about a second per epoch on one CPU core).
TINY_TRAIN_FLAGS = [
    "--backbone", "tiny", "--crop-size", "32", "--clip-len", "4", "--stride", "2",
    "--clips", "2", "--batch-size", "4", "--workers", "0", "--device", "cpu",
]  # fmt: skip


def write_video(path: Path, label: int, num_frames: int = FRAMES, size: int = SIZE) -> Path:
    """One real mp4 of class ``label``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_test_video(path, num_frames, size, size, pattern=PATTERNS[label])


def write_dataset(root: Path, *, num_train: int = 4, num_val: int = 4) -> Path:
    """``root/{train,val}.csv`` + ``classes.txt`` + ``videos/*.mp4``; labels alternate 0, 1, 0, ..."""
    root.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("val", num_val)):
        rows = []
        for index in range(count):
            label = index % len(CLASS_NAMES)
            relative = f"videos/{split}_{index}.mp4"
            write_video(root / relative, label)
            rows.append(f"{relative} {label}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return root


def randomise_norms(model: torch.nn.Module) -> None:
    """Non-default BatchNorm parameters and statistics, so a load that skipped them would show."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)


def tiny_train_config(data: Path, out: Path, **changes):
    """A ``TrainConfig`` for a seconds-long CPU run on ``write_dataset``'s videos (tiny network, 2
    clips of 4 frames at 32², batch 2, 2 epochs, no workers, epoch-end checkpoints only)."""
    from comem.config import TrainConfig

    config = TrainConfig(
        data=str(data),
        out=str(out),
        backbone="tiny",
        clips=2,
        clip_len=4,
        stride=2,
        crop_size=32,
        batch_size=2,
        epochs=2,
        workers=0,
        device="cpu",
        save_every=0,
    )
    return dataclasses.replace(config, **changes)
