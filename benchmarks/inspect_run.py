"""Why a ``comem train`` run on the built-in videos gets what it gets wrong.

Loads a checkpoint, decodes its built-in dataset once (``benchmarks/learning_video.py``'s centred
eval clips) and prints one JSON line:

- ``val_top1`` three ways: BatchNorm's running statistics (what ``comem eval`` uses), the statistics
  of each validation batch itself, and "precise BN": running statistics recomputed over
  ``--precise-batches`` batches of 8 training videos (train sampling and augmentation; the clips of
  a batch run together, each reading the others' memory as in training), as a cumulative average;
- ``by_colours``: right / total of the validation videos per colour set of their parts (read back
  from the pixels: the palette colour most pixels of each part's middle frame are nearest to; the
  initials sorted, so ``BBR`` is two blue parts and a red one in any order), so an error that takes
  a whole colour set shows as such.

    python benchmarks/inspect_run.py --checkpoint runs/exp/last.pt [--data DIR] [--precise-batches 60]
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from learning_video import batch, decode_split
from torch import nn

import comem
from comem.data.synthetic import PALETTE


def part_colours(video: torch.Tensor, parts: int) -> str:
    """Initials of the colour of each part of ``video`` (T, H, W, 3) uint8, e.g. ``"RBB"``."""
    palette = torch.tensor(list(PALETTE.values()), dtype=torch.float32)  # (K, 3)
    initials = [name[0].upper() for name in PALETTE]
    frames = len(video)
    out = ""
    for part in range(parts):
        middle = video[(2 * part + 1) * frames // (2 * parts)].reshape(-1, 3).float()  # (H*W, 3)
        distance = torch.cdist(middle, palette)  # (H*W, K)
        near = distance.min(dim=1)
        counts = torch.bincount(near.indices[near.values < 60], minlength=len(palette))
        out += initials[int(counts.argmax())]
    return "".join(sorted(out))


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", help="the built-in data dir (default: the checkpoint's)")
    parser.add_argument("--precise-batches", type=int, default=60, help="batches of 8 training videos")
    args = parser.parse_args()
    predictor = comem.load(args.checkpoint, device="cpu")
    model, config = predictor.model, predictor.config
    stored = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    root = Path(args.data or stored["data_dir"])
    parts = json.loads((root / "synthetic.json").read_text())["num_parts"]
    clips = SimpleNamespace(clip_len=config.clip_len, stride=config.stride, crop=config.crop_size)
    val_frames, val_labels = decode_split(root, "val")
    train_frames, _ = decode_split(root, "train")

    def predictions() -> torch.Tensor:
        guesses = []
        with torch.no_grad():
            for begin in range(0, len(val_labels), 40):
                video, times = batch(val_frames[begin : begin + 40], config.clips, clips, None)
                logits = model(video, share_memory=True, times=times)
                guesses.append(logits.softmax(-1).mean(1).argmax(-1))
        return torch.cat(guesses)

    def top1(guesses: torch.Tensor) -> float:
        return round(100.0 * float((guesses == val_labels).float().mean()), 1)

    saved = {key: value.clone() for key, value in model.state_dict().items()}
    model.eval()
    running = predictions()
    model.train()
    own_batch = predictions()
    model.load_state_dict(saved)
    for norm in batchnorms(model):
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over every batch
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for begin in range(0, min(len(train_frames), 8 * args.precise_batches), 8):
            video, times = batch(train_frames[begin : begin + 8], config.clips, clips, rng)
            model(video, share_memory=True, times=times)  # every clip reads the others', as in training
    model.eval()
    precise = predictions()
    model.load_state_dict(saved)
    by_colours: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for video, guess, truth in zip(val_frames, running.tolist(), val_labels.tolist(), strict=True):
        tally = by_colours[part_colours(video, parts)]
        tally[0] += int(guess == truth)
        tally[1] += 1
    print(
        json.dumps(
            {
                "checkpoint": args.checkpoint,
                "val_top1_running_stats": top1(running),
                "val_top1_batch_stats": top1(own_batch),
                "val_top1_precise_bn": top1(precise),
                "by_colours": {key: f"{right}/{total}" for key, (right, total) in sorted(by_colours.items())},
            }
        )
    )


if __name__ == "__main__":
    main()
