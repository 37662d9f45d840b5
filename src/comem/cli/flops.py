"""``comem flops``: the compute of a backbone and of its memory modules, per clip."""

from __future__ import annotations

import argparse
import json

from comem.config import stage_list

NAME = "flops"


def add_parser(commands: argparse._SubParsersAction) -> None:
    flops = commands.add_parser(
        NAME,
        help="count a backbone's and its memories' GFLOPs (multiply-accumulates, torchvision's convention)",
    )
    flops.add_argument("--backbone", required=True, help="a name from `comem models`")
    flops.add_argument(
        "--memory-stages",
        type=stage_list,
        help="comma-separated stages followed by a memory (default: train's, all)",
    )
    flops.add_argument("--frames", type=int, help="frames per clip (default: the backbone's usual clip)")
    flops.add_argument("--size", type=int, help="crop side in pixels (default: the backbone's usual crop)")
    flops.add_argument("--clips", type=int, default=3, help="clips per video sharing a memory [3]")
    flops.add_argument("--num-classes", type=int, default=400, help="classifier width [400]")
    flops.add_argument("--json", action="store_true", help="print one JSON object instead of lines")


def run(args: argparse.Namespace) -> int:
    from comem.config import ConfigError, TrainConfig
    from comem.models.backbones import BACKBONES, UnknownBackboneError
    from comem.models.build import ModelSpec
    from comem.models.flops import count_flops

    if args.backbone not in BACKBONES:
        raise UnknownBackboneError(
            f"unknown backbone {args.backbone!r}; choose one of {', '.join(BACKBONES)}"
        )
    for flag in ("frames", "size", "clips", "num_classes"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1; got {getattr(args, flag)}")
    entry = BACKBONES[args.backbone]
    stages = tuple(args.memory_stages or TrainConfig().memory_stages)
    spec = ModelSpec(backbone=args.backbone, num_classes=args.num_classes, memory_stages=stages)
    report = count_flops(spec, args.frames or entry.frames, args.size or entry.size, num_clips=args.clips)
    if args.json:
        print(json.dumps(report.as_dict()))
        return 0
    print(f"input shape: {report.input_shape} (videos, clips, C, T, H, W); figures are per clip")
    print(f"memory stages: {', '.join(report.memory_stages) or 'none'}")
    print(f"backbone GFLOPs: {report.backbone_gflops:.3f}")
    print(f"memory GFLOPs: {report.memory_gflops:.4g}")
    print(f"memory/backbone: {report.memory_percent:.3g}%")
    print(f"params: {report.params_m:.2f} M backbone + head, {report.memory_params_m:.3f} M memory")
    return 0
