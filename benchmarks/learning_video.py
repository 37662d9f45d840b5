"""Video-level ablations of the memory on the built-in long-range videos, decoded once into RAM.

``comem train`` decodes every clip of every step; for a sweep of many short runs this script decodes
the built-in dataset (``comem make-synthetic``'s videos, the same files ``comem train`` uses) once,
keeps the frames in memory, and trains comem's own model with comem's own step functions, so a run
costs only the network's compute. Sampling follows ``comem train``: TSN-style random clip starts
(one per segment), short-side jitter in [crop, 8/7 crop], random crop and flip; val uses the
centred clip of each segment, one centre crop, clip scores averaged. AdamW, weight decay on weights
only, one warm-up epoch then cosine.

    python benchmarks/learning_video.py --task distinct --mode comem --seed 0

prints one line per epoch (train loss, train top-1, val top-1, val confusion matrix, rows = true
class) and a final ``RESULT {...}`` line. docs/learning.md lists the runs behind its video table.
"""

import argparse
import contextlib
import json
import math
import time
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from comem.config import MODES
from comem.data.decode import RgbFrames
from comem.data.sampling import clip_frame_indices, clip_span, clip_times, eval_clip_starts, train_clip_starts
from comem.data.synthetic import SYNTHETIC_TASKS, SyntheticSpec, ensure_synthetic
from comem.engine import step
from comem.memory import CLIP_TIME_KINDS
from comem.models.build import ModelSpec, build_model
from comem.tasks.classification import make_clip_loss


def decode_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All frames (V, T, H, W, 3) uint8 and labels (V,) of one split of the built-in dataset."""
    videos, labels = [], []
    for line in (root / f"{split}.csv").read_text().splitlines():
        if not line.strip():
            continue
        path, label = line.split()
        with av.open(str(root / path)) as container:
            rgb = RgbFrames()
            videos.append(np.stack([rgb(frame) for frame in container.decode(video=0)]))
        labels.append(int(label))
    return torch.from_numpy(np.stack(videos)), torch.tensor(labels)


def batch(
    frames: torch.Tensor, num_clips: int, args: argparse.Namespace, rng: np.random.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised clips (B, N, 3, T, H, W) of the videos ``frames`` (B, T, H, W, 3) and their times
    (B, N); ``rng`` set: random clip starts and train augmentation (scale jitter, crop, flip), else
    the centred clips and the centre crop."""
    span = clip_span(args.clip_len, args.stride)
    clips, times = [], []
    for video in frames:
        if rng is None:
            starts = eval_clip_starts(len(video), num_clips, span)
        else:
            starts = train_clip_starts(len(video), num_clips, span, rng)
        times.append(torch.from_numpy(clip_times(starts, span, len(video))))
        index = torch.from_numpy(clip_frame_indices(starts, args.clip_len, args.stride, len(video)))
        clip = video[index].permute(0, 4, 1, 2, 3).float() / 255  # N, 3, T, H, W
        size = args.crop
        if rng is not None:
            size = int(rng.integers(args.crop, args.crop * 8 // 7 + 1))
        if size != clip.shape[-1]:
            flat = F.interpolate(clip.flatten(0, 1), size=(size, size), mode="bilinear", antialias=True)
            clip = flat.view(*clip.shape[:3], size, size)
        top, left = ((size - args.crop) // 2,) * 2
        if rng is not None:
            top, left = (int(v) for v in rng.integers(0, size - args.crop + 1, size=2))
        clip = clip[..., top : top + args.crop, left : left + args.crop]
        if rng is not None and rng.random() < 0.5:
            clip = clip.flip(-1)
        clips.append(clip)
    return (torch.stack(clips) - 0.45) / 0.225, torch.stack(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="distinct", choices=SYNTHETIC_TASKS)
    parser.add_argument("--mode", default="comem", choices=MODES)
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--clip-len", type=int, default=8)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--stages", default="all")
    parser.add_argument("--memory", default="attention")
    parser.add_argument("--fusion", default="gate")
    parser.add_argument("--summary", default="meanmax", choices=("mean", "max", "meanmax"))
    parser.add_argument("--gate-hidden", type=int, default=64, help="0: a linear gate")
    parser.add_argument("--key-dim", type=int, default=0, help="query/key width (0: C // 4, min 8)")
    parser.add_argument("--entry-hidden", type=int, default=0, help="0: linear q/k/v of the summaries")
    parser.add_argument("--clip-time", default="relative", choices=CLIP_TIME_KINDS)
    parser.add_argument("--eval-clips", type=int, default=0, help="val views (0: --clips)")
    parser.add_argument("--gate-init-std", type=float, default=0.0, help="W_g ~ N(0, std) (0: identity)")
    parser.add_argument("--cross-clip", type=int, default=0)
    parser.add_argument("--memory-pass-bn", default="batch", choices=("batch", "eval"))
    parser.add_argument("--video-loss", type=int, default=0, help="1: the loss of the clips' mean logits")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "comem"))
    generator = parser.add_argument_group("the videos (SyntheticSpec; the defaults are the built-in set)")
    generator.add_argument("--data-seed", type=int, default=0)
    generator.add_argument("--train-videos", type=int, default=480)
    generator.add_argument("--val-videos", type=int, default=120)
    generator.add_argument("--size", type=int, default=64, help="frame side in pixels")
    generator.add_argument("--num-frames", type=int, default=72)
    generator.add_argument("--fps", type=int, default=24)
    generator.add_argument("--parts", type=int, default=3)
    generator.add_argument("--distractors", type=int, default=1)
    generator.add_argument("--coloured-distractors", type=int, default=0)
    generator.add_argument("--codec", default="h264", choices=("h264", "mpeg4", "vp9"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    videos = SyntheticSpec(
        num_train=args.train_videos,
        num_val=args.val_videos,
        size=args.size,
        task=args.task,
        seed=args.data_seed,
        num_frames=args.num_frames,
        fps=args.fps,
        num_parts=args.parts,
        distractors=args.distractors,
        coloured_distractors=args.coloured_distractors,
        codec=args.codec,
        clip_len=args.clip_len,  # order: events laid out for the clips this run samples
        stride=args.stride,
    )
    root = ensure_synthetic(args.cache, videos)
    train_frames, train_labels = decode_split(root, "train")
    val_frames, val_labels = decode_split(root, "val")
    num_classes = int(train_labels.max()) + 1
    spec = ModelSpec(
        backbone="tiny",
        num_classes=num_classes,
        memory_stages=tuple(args.stages.split(",")),
        memory=args.memory,
        fusion=args.fusion,
        gate_hidden=args.gate_hidden or None,
        key_dim=args.key_dim or None,
        summary=args.summary,
        entry_hidden=args.entry_hidden or None,
        clip_time=args.clip_time,
        dropout=args.dropout,
    )
    model = build_model(spec)
    if args.gate_init_std:
        for module in model.memories.values():
            torch.nn.init.normal_(module.out.weight, std=args.gate_init_std)
    weights = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": weights, "weight_decay": args.weight_decay}, {"params": others, "weight_decay": 0.0}],
        lr=args.lr,
    )
    steps_per_epoch = len(train_labels) // args.batch_size
    total, warmup = steps_per_epoch * args.epochs, steps_per_epoch

    def warmup_cosine(s: int) -> float:
        progress = (s - warmup) / max(1, total - warmup)
        return (s + 1) / warmup if s < warmup else 0.5 + 0.5 * math.cos(math.pi * progress)

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
    num_clips = 1 if args.mode == "single" else args.clips
    loss = make_clip_loss(multi_label=False, label_smoothing=args.label_smoothing)
    history, start = [], time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(train_labels)))
        loss_sum, correct = 0.0, 0
        for index in range(steps_per_epoch):
            rows = order[index * args.batch_size : (index + 1) * args.batch_size]
            (video, times), labels = batch(train_frames[rows], num_clips, args, rng), train_labels[rows]
            optimizer.zero_grad(set_to_none=True)
            out = step.train_step(
                model,
                video,
                labels,
                mode=args.mode,
                autocast=contextlib.nullcontext,
                cross_clip=bool(args.cross_clip),
                memory_pass_bn=args.memory_pass_bn,
                video_loss=bool(args.video_loss),
                loss_fn=loss,
                times=times,
            )
            optimizer.step()
            schedule.step()
            loss_sum += float(out.loss)
            correct += int((out.logits.softmax(-1).mean(1).argmax(-1) == labels).sum())
        model.eval()
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        with torch.no_grad():
            for begin in range(0, len(val_labels), 40):
                rows = torch.arange(begin, min(begin + 40, len(val_labels)))
                shared = args.mode not in ("single", "tsn")
                video, times = batch(val_frames[rows], args.eval_clips or args.clips, args, None)
                logits = model(video, share_memory=shared, times=times)
                predicted = logits.softmax(-1).mean(1).argmax(-1)
                for truth, guess in zip(val_labels[rows].tolist(), predicted.tolist(), strict=True):
                    confusion[truth, guess] += 1
        val_top1 = 100.0 * float(confusion.diag().sum()) / len(val_labels)
        row = {
            "epoch": epoch + 1,
            "train_loss": round(loss_sum / steps_per_epoch, 4),
            "train_top1": round(100.0 * correct / (steps_per_epoch * args.batch_size), 1),
            "val_top1": round(val_top1, 1),
            "seconds": round(time.time() - start),
        }
        history.append(row)
        print(json.dumps({**row, "confusion": confusion.tolist()}), flush=True)
    print("RESULT", json.dumps({**vars(args), "val_top1": history[-1]["val_top1"], "history": history}))


if __name__ == "__main__":
    main()
