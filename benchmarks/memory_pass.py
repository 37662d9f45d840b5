"""Cost of comem's no-grad memory pass: FLOPs, time and (on CUDA) peak memory.

Compares ``VideoModel.memory_bank`` (every stage once per clip, keeping each clip's raw map at the
latest memory stage) with the scheme it replaced (each clip re-run from the input once per memory
stage, kept here only as the reference), and with a plain no-grad forward of the same clips.

    PYTHONPATH=src python benchmarks/memory_pass.py --backbone r2plus1d_18 --clips 4 --batch-size 2 \
        --clip-len 8 --crop-size 56
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

from comem.memory import CollaborativeMemory
from comem.models.build import ModelSpec, VideoModel, build_model


@torch.no_grad()
def rerun_from_input(model: VideoModel, video: torch.Tensor) -> dict[str, torch.Tensor]:
    """The former memory pass: for each memory stage, every clip from the input again."""
    banks: dict[str, torch.Tensor] = {}
    for target in model.memory_stage_names:
        summaries = []
        for index in range(video.shape[1]):
            features = video[:, index]
            for name, stage in model.backbone.stages.items():
                features = stage(features)
                if name == target:
                    break
                if name in banks:
                    features = model.memories[name].forward_one(features, banks[name], index)
            summaries.append(CollaborativeMemory.summarize(features).float())
        banks[target] = torch.stack(summaries, dim=1)
    return banks


@torch.no_grad()
def plain_forward(model: VideoModel, video: torch.Tensor) -> None:
    for index in range(video.shape[1]):
        model.backbone(video[:, index])


def measure(
    run: Callable[[], object], device: torch.device, repeats: int
) -> tuple[float, float | None, float | None]:
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    if device.type == "meta":  # FLOPs only
        return counter.get_total_flops() / 1e9, None, None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return counter.get_total_flops() / 1e9, (time.perf_counter() - started) / repeats, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="r2plus1d_18")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--clip-len", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=56)
    parser.add_argument("--chunk", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", help="cuda | cpu | meta (FLOPs only, any size) [cuda if available]")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone=args.backbone, num_classes=400)).to(device).eval()
    shape = (args.batch_size, args.clips, 3, args.clip_len, args.crop_size, args.crop_size)
    video = torch.randn(shape, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    runs = {
        "no-grad forward of the N clips": lambda: plain_forward(model, video),
        f"memory_bank (one pass, chunk {args.chunk})": lambda: model.memory_bank(video, chunk=args.chunk),
        "re-run from the input per memory stage": lambda: rerun_from_input(model, video),
    }
    print(
        f"{args.backbone}, memory stages {','.join(model.memory_stage_names)}, N={args.clips}, "
        f"B={args.batch_size}, {args.clip_len}x{args.crop_size}^2, {device}"
    )
    print("| pass | GFLOP | × forward | s | peak GiB |\n|---|---|---|---|---|")
    base = None
    with autocast:
        for name, run in runs.items():
            gflop, seconds, peak = measure(run, device, args.repeats)
            base = base or gflop
            shown = ["—" if value is None else f"{value:.2f}" for value in (seconds, peak)]
            print(f"| {name} | {gflop:.1f} | {gflop / base:.2f} | {shown[0]} | {shown[1]} |")


if __name__ == "__main__":
    main()
