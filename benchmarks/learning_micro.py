"""A feature-level model of the built-in long-range tasks, for fast ablations of the memory.

Each "clip" is one noisy 32-d vector carrying the colour of one part of a video (4 colours, a fixed
random embedding each, plus Gaussian noise); the label is that of ``comem make-synthetic``:
``distinct`` (number of distinct colours among N parts, 3 classes) or ``parity`` (red/blue parts,
odd number of red). A "backbone" of 1x1x1 convolutions + BatchNorm + ReLU stands in for the video
network, so a run takes seconds and isolates what the memory and the training mode can learn.
Every step draws fresh videos (no overfitting); val is 600 fresh videos; clip scores are averaged.

    python benchmarks/learning_micro.py --mode comem --memory sigmoid --gate-hidden 64 --task parity

prints one line ``RESULT {...}`` with the settings and val top-1 (%). docs/learning.md lists the
runs behind its tables.
"""

import argparse
import contextlib
import json
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from comem.config import MODES
from comem.engine import modes
from comem.models.build import VideoModel
from comem.models.stages import VideoBackbone


def videos(count: int, num_clips: int, task: str, rng: np.random.Generator, noise: float):
    """(count, N, 32, 1, 1, 1) clip vectors and (count,) labels (distinct: classes balanced)."""
    embedding = np.random.default_rng(123).normal(size=(4, 32))
    clips, labels = [], []
    for index in range(count):
        while True:
            if task == "parity":  # each parity class is equally likely already
                colours = rng.integers(0, 2, num_clips)
                label = int(colours.sum()) % 2
                break
            colours = rng.integers(0, 4, num_clips)
            label = len(set(colours.tolist())) - 1
            if label == index % 3:
                break
        clips.append(embedding[colours] + noise * rng.normal(size=(num_clips, 32)))
        labels.append(label)
    return torch.tensor(np.array(clips), dtype=torch.float32)[..., None, None, None], torch.tensor(labels)


def backbone(width: int, depth: int) -> VideoBackbone:
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    channels, inputs = {}, 32
    for index in range(depth):
        stages[f"layer{index}"] = nn.Sequential(nn.Conv3d(inputs, width, 1), nn.BatchNorm3d(width), nn.ReLU())
        channels[f"layer{index}"], inputs = width, width
    return VideoBackbone(stages, channels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", default="comem", choices=MODES)
    parser.add_argument("--task", default="distinct", choices=("distinct", "parity"))
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--stages", default="last")
    parser.add_argument("--memory", default="attention")
    parser.add_argument("--fusion", default="gate")
    parser.add_argument("--gate-hidden", type=int, default=None)
    parser.add_argument("--key-dim", type=int, default=None, help="d' of queries and keys (default C // 4)")
    parser.add_argument("--gate-init-std", type=float, default=0.0, help="W_g ~ N(0, std) (0: identity)")
    parser.add_argument("--cross-clip", type=int, default=0)
    parser.add_argument("--memory-pass-bn", default="batch", choices=("batch", "eval"))
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--memory-lr-scale", type=float, default=1.0)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=720)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    val_clips, val_labels = videos(600, args.clips, args.task, rng, args.noise)
    model = VideoModel(
        backbone(args.width, args.depth),
        2 if args.task == "parity" else 3,
        memory_stages=args.stages.split(","),
        memory=args.memory,
        fusion=args.fusion,
        gate_hidden=args.gate_hidden,
        key_dim=args.key_dim,
        dropout=0.0,
    )
    if args.gate_init_std:
        for module in model.memories.values():
            nn.init.normal_(module.out.weight, std=args.gate_init_std)
    memory = [p for name, p in model.named_parameters() if name.startswith("memories.")]
    rest = [p for name, p in model.named_parameters() if not name.startswith("memories.")]
    lrs = [args.lr, args.lr * args.memory_lr_scale]
    optimizer = torch.optim.AdamW(
        [{"params": rest}, {"params": memory, "lr": lrs[1]}], lr=args.lr, weight_decay=args.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lrs, total_steps=args.steps, pct_start=0.08
    )
    no_autocast = contextlib.nullcontext
    for _ in range(args.steps):
        clips, labels = videos(8, args.clips, args.task, rng, args.noise)
        model.train()
        optimizer.zero_grad()
        if args.mode == "single":
            modes.single_step(model, clips[:, :1], labels, no_autocast)
        elif args.mode == "comem":
            modes.comem_step(
                model,
                clips,
                labels,
                no_autocast,
                cross_clip=bool(args.cross_clip),
                memory_pass_bn=args.memory_pass_bn,
            )
        else:
            getattr(modes, f"{args.mode}_step")(model, clips, labels, no_autocast)
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        scores = model(val_clips, share_memory=args.mode not in ("single", "tsn")).softmax(-1).mean(1)
    top1 = float((scores.argmax(-1) == val_labels).float().mean() * 100)
    print("RESULT", json.dumps({**vars(args), "val_top1": round(top1, 1)}))


if __name__ == "__main__":
    main()
