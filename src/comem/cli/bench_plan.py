"""``comem bench plan``: estimated peak memory and FLOP-bound speed of single, joint and comem at
each chunk size, for a backbone, input and N (nothing is run: meta-device estimates)."""

from __future__ import annotations

import argparse

from comem.config import stage_list

HELP = "estimated peak memory and FLOP-bound speed of single, joint and comem at each chunk size"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="r2plus1d_18", help="any backbone name [r2plus1d_18]")
    parser.add_argument("--clips", type=int, default=4, help="clips per video N [4]")
    parser.add_argument("--batch-size", type=int, default=16, help="videos per step B [16]")
    parser.add_argument("--clip-len", type=int, default=16, help="frames per clip [16]")
    parser.add_argument("--crop-size", type=int, default=112, help="crop side in pixels [112]")
    parser.add_argument(
        "--memory-stages",
        type=lambda text: tuple(stage_list(text)),
        default=("last-2", "last-1", "last"),
        help="stages followed by a memory [last-2,last-1,last]",
    )
    parser.add_argument(
        "--precision", choices=("bf16", "fp32"), default="bf16", help="activation precision [bf16]"
    )


def run(args: argparse.Namespace) -> int:
    from comem.diagnostics.bench import BenchSpec
    from comem.diagnostics.plan import format_plan, plan_rows

    spec = BenchSpec(
        backbone=args.backbone,
        clips=(args.clips,),
        batch_size=args.batch_size,
        clip_len=args.clip_len,
        crop_size=args.crop_size,
        memory_stages=args.memory_stages,
    ).validate()
    rows = plan_rows(spec, args.clips, half_precision=args.precision == "bf16")
    print(
        f"{spec.backbone}, {spec.clip_len}×{spec.crop_size}², B={spec.batch_size}, N={args.clips}, "
        f"{args.precision} activations; memory stages {','.join(spec.memory_stages)}; peak: the planner's "
        "meta-device estimate (weights, gradients, AdamW state, the uint8 batch, activations)"
    )
    print()
    print(format_plan(rows))
    return 0
